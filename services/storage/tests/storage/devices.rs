use iot_proto::storage::v1 as pb;
use tonic::Code;

use crate::helpers::{code, reading, spawn_app};

#[tokio::test]
async fn create_get_update_delete_device() {
    let mut app = spawn_app().await;
    let owner = app.user("owner").await;
    let created = app
        .client
        .create_device(pb::CreateDeviceRequest {
            device_id: "sensor-1".into(),
            owner_id: owner.id,
            name: "Greenhouse sensor".into(),
            attributes_json: r#"{"location":"greenhouse","model":"X1"}"#.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.device_id, "sensor-1");
    assert_eq!(created.owner_id, owner.id);
    assert_eq!(created.name, "Greenhouse sensor");
    assert_eq!(
        created.attributes_json,
        r#"{"location":"greenhouse","model":"X1"}"#
    );
    assert!(created.created_at_us > 0);
    assert_eq!(created.created_at_us, created.updated_at_us);

    let got = app
        .client
        .get_device(pb::GetDeviceRequest {
            device_id: "sensor-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got, created);

    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let renamed = app
        .client
        .update_device(pb::UpdateDeviceRequest {
            device_id: "sensor-1".into(),
            name: Some("Renamed".into()),
            attributes_json: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(renamed.name, "Renamed");
    assert_eq!(
        renamed.attributes_json, created.attributes_json,
        "unset fields are kept"
    );
    assert!(renamed.updated_at_us > created.updated_at_us);
    assert_eq!(renamed.created_at_us, created.created_at_us);
    let cleared = app
        .client
        .update_device(pb::UpdateDeviceRequest {
            device_id: "sensor-1".into(),
            name: None,
            attributes_json: Some(String::new()),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cleared.name, "Renamed");
    assert_eq!(cleared.attributes_json, "");

    app.client
        .delete_device(pb::DeleteDeviceRequest {
            device_id: "sensor-1".into(),
        })
        .await
        .unwrap();
    assert_eq!(
        code(
            app.client
                .get_device(pb::GetDeviceRequest {
                    device_id: "sensor-1".into()
                })
                .await
        ),
        Code::NotFound
    );
    assert_eq!(
        code(
            app.client
                .delete_device(pb::DeleteDeviceRequest {
                    device_id: "sensor-1".into()
                })
                .await
        ),
        Code::NotFound
    );
    assert_eq!(
        code(
            app.client
                .update_device(pb::UpdateDeviceRequest {
                    device_id: "sensor-1".into(),
                    name: Some("x".into()),
                    attributes_json: None
                })
                .await
        ),
        Code::NotFound
    );
}

#[tokio::test]
async fn device_ids_are_unique_and_case_sensitive() {
    let mut app = spawn_app().await;
    let a = app.user("a").await;
    let b = app.user("b").await;
    app.device(a.id, "Dev-1").await;
    let request = |owner_id, device_id: &str| pb::CreateDeviceRequest {
        device_id: device_id.into(),
        owner_id,
        name: "n".into(),
        attributes_json: String::new(),
    };
    assert_eq!(
        code(app.client.create_device(request(a.id, "Dev-1")).await),
        Code::AlreadyExists
    );
    assert_eq!(
        code(app.client.create_device(request(b.id, "Dev-1")).await),
        Code::AlreadyExists
    );
    let lower = app
        .client
        .create_device(request(b.id, "dev-1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(lower.owner_id, b.id);
    assert_eq!(
        code(app.client.create_device(request(9_999_999, "orphan")).await),
        Code::NotFound
    );
    assert_eq!(app.count("SELECT COUNT(*) FROM devices").await, 2);
}

#[tokio::test]
async fn list_devices_pages_by_owner_without_gaps_or_repeats() {
    let mut app = spawn_app().await;
    let a = app.user("a").await;
    let b = app.user("b").await;
    let mut a_ids: Vec<String> = (0..7).map(|i| format!("a-{}", 7 - i)).collect();
    for id in &a_ids {
        app.device(a.id, id).await;
    }
    for i in 0..3 {
        app.device(b.id, &format!("b-{i}")).await;
    }
    a_ids.sort();

    let list = |owner_id, page_size, page_token: String| pb::ListDevicesRequest {
        owner_id,
        page_size,
        page_token,
    };
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = app
            .client
            .list_devices(list(a.id, 3, token))
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        assert!(page.devices.len() <= 3);
        assert!(page.devices.iter().all(|d| d.owner_id == a.id));
        seen.extend(page.devices.into_iter().map(|d| d.device_id));
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
        assert!(pages < 10, "pagination does not end");
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, a_ids);

    // owner 0: every owner's devices.
    let all = app
        .client
        .list_devices(list(0, 0, String::new()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.devices.len(), 10);
    assert!(all.next_page_token.is_empty());
    // An exact last page has no token after it.
    let exact = app
        .client
        .list_devices(list(b.id, 3, String::new()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(exact.devices.len(), 3);
    assert!(exact.next_page_token.is_empty());

    assert_eq!(
        code(
            app.client
                .list_devices(list(a.id, 3, "garbage!".into()))
                .await
        ),
        Code::InvalidArgument
    );
}

#[tokio::test]
async fn deleting_a_user_deletes_its_devices_and_their_readings() {
    let mut app = spawn_app().await;
    let doomed = app.user("doomed").await;
    let kept = app.user("kept").await;
    app.device(doomed.id, "d1").await;
    app.device(doomed.id, "d2").await;
    app.device(kept.id, "k1").await;
    let written = app
        .write(vec![
            reading("d1", "t", 1, 1.0),
            reading("d2", "t", 1, 2.0),
            reading("k1", "t", 1, 3.0),
        ])
        .await;
    assert_eq!(written.inserted, 3);

    app.client
        .delete_user(pb::DeleteUserRequest { id: doomed.id })
        .await
        .unwrap();
    assert_eq!(app.count("SELECT COUNT(*) FROM devices").await, 1);
    assert_eq!(app.count("SELECT COUNT(*) FROM readings").await, 1);
    assert_eq!(
        code(
            app.client
                .get_device(pb::GetDeviceRequest {
                    device_id: "d1".into()
                })
                .await
        ),
        Code::NotFound
    );
    assert_eq!(
        app.client
            .get_device(pb::GetDeviceRequest {
                device_id: "k1".into()
            })
            .await
            .unwrap()
            .into_inner()
            .owner_id,
        kept.id
    );
}

#[tokio::test]
async fn deleting_a_device_deletes_its_readings() {
    let mut app = spawn_app().await;
    let owner = app.user("owner").await;
    app.device(owner.id, "gone").await;
    app.device(owner.id, "stays").await;
    let batch: Vec<_> = (0..20)
        .flat_map(|i| [reading("gone", "m", i, 0.5), reading("stays", "m", i, 0.5)])
        .collect();
    assert_eq!(app.write(batch).await.inserted, 40);
    app.client
        .delete_device(pb::DeleteDeviceRequest {
            device_id: "gone".into(),
        })
        .await
        .unwrap();
    assert_eq!(app.count("SELECT COUNT(*) FROM readings").await, 20);
    // A device created again under the same public id starts empty.
    app.device(owner.id, "gone").await;
    let page = app
        .client
        .query_readings(crate::helpers::query("gone", "", 0, 0, 0))
        .await
        .unwrap()
        .into_inner();
    assert!(page.readings.is_empty());
}

#[tokio::test]
async fn bad_device_requests_are_invalid_arguments() {
    let mut app = spawn_app().await;
    let owner = app.user("owner").await;
    let request =
        |device_id: &str, owner_id, name: &str, attributes: &str| pb::CreateDeviceRequest {
            device_id: device_id.into(),
            owner_id,
            name: name.into(),
            attributes_json: attributes.into(),
        };
    let long_id = "x".repeat(65);
    let long_name = "n".repeat(256);
    for bad in [
        request("", owner.id, "n", ""),
        request("a/b", owner.id, "n", ""),
        request("a+b", owner.id, "n", ""),
        request("dévice", owner.id, "n", ""),
        request(&long_id, owner.id, "n", ""),
        request("ok", 0, "n", ""),
        request("ok", owner.id, "", ""),
        request("ok", owner.id, &long_name, ""),
        request("ok", owner.id, "n", "[1,2]"),
        request("ok", owner.id, "n", "{not json"),
    ] {
        let described = format!("{bad:?}");
        assert_eq!(
            code(app.client.create_device(bad).await),
            Code::InvalidArgument,
            "{described}"
        );
    }
    assert_eq!(
        code(
            app.client
                .get_device(pb::GetDeviceRequest {
                    device_id: "a b".into()
                })
                .await
        ),
        Code::InvalidArgument
    );
    assert_eq!(
        code(
            app.client
                .delete_device(pb::DeleteDeviceRequest {
                    device_id: String::new()
                })
                .await
        ),
        Code::InvalidArgument
    );
    app.device(owner.id, "ok").await;
    assert_eq!(
        code(
            app.client
                .update_device(pb::UpdateDeviceRequest {
                    device_id: "ok".into(),
                    name: Some(String::new()),
                    attributes_json: None
                })
                .await
        ),
        Code::InvalidArgument
    );
    assert_eq!(
        code(
            app.client
                .update_device(pb::UpdateDeviceRequest {
                    device_id: "ok".into(),
                    name: None,
                    attributes_json: Some("3".into())
                })
                .await
        ),
        Code::InvalidArgument
    );
    // The maximum lengths themselves are fine.
    let max_id = "y".repeat(64);
    let max_name = "é".repeat(255);
    let created = app
        .client
        .create_device(request(&max_id, owner.id, &max_name, "{}"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.name, max_name);
}
