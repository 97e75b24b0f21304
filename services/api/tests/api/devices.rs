use reqwest::{StatusCode, header};
use serde_json::{Value, json};

use crate::helpers::{error_code, spawn_app, unique_device};

#[tokio::test(flavor = "multi_thread")]
async fn device_lifecycle_credentials_etag_head_and_isolation() {
    let app = spawn_app().await;
    let (admin, _) = app.admin().await;
    let (alice, _) = app.user(&admin).await;
    let (bob, _) = app.user(&admin).await;
    let id = unique_device();

    let response = alice
        .post(app.url("/api/v1/devices"))
        .json(&json!({"device_id": id, "name": "Greenhouse", "attributes": {"room": "south"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let location = response.headers().get(header::LOCATION).unwrap().to_str().unwrap().to_string();
    assert_eq!(location, format!("/api/v1/devices/{id}"));
    let created: Value = response.json().await.unwrap();
    assert_eq!(created["device_id"], id.as_str());
    assert_eq!(created["attributes"]["room"], "south");
    let mqtt = &created["mqtt"];
    assert_eq!(mqtt["host"], "mqtt.example.test");
    assert_eq!(mqtt["port"], 8883);
    assert_eq!(mqtt["username"], id.as_str());
    assert_eq!(mqtt["topic"], format!("devices/{id}/telemetry"));
    let password = mqtt["password"].as_str().unwrap().to_string();
    assert!(password.len() >= 20, "{password}");

    // The password is shown only at creation.
    let fetched: Value = alice.get(app.url(&location)).send().await.unwrap().json().await.unwrap();
    assert!(fetched.get("mqtt").is_none());
    assert!(!fetched.to_string().contains(&password));

    // Duplicate id -> 409, invalid id -> 422, empty name -> 422.
    let response = alice.post(app.url("/api/v1/devices")).json(&json!({"device_id": id, "name": "again"})).send().await.unwrap();
    assert_eq!(error_code(response, StatusCode::CONFLICT).await, "conflict");
    let response = alice.post(app.url("/api/v1/devices")).json(&json!({"device_id": "bad id!", "name": "x"})).send().await.unwrap();
    assert_eq!(error_code(response, StatusCode::UNPROCESSABLE_ENTITY).await, "unprocessable");
    let response = alice.post(app.url("/api/v1/devices")).json(&json!({"device_id": unique_device(), "name": ""})).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);

    // GET with ETag, then 304.
    let response = alice.get(app.url(&location)).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let etag = response.headers().get(header::ETAG).unwrap().to_str().unwrap().to_string();
    let length = response.bytes().await.unwrap().len();
    let response = alice.get(app.url(&location)).header(header::IF_NONE_MATCH, &etag).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::NOT_MODIFIED);
    assert!(response.bytes().await.unwrap().is_empty());

    // HEAD: GET's headers, no body.
    let response = alice.head(app.url(&location)).header(header::ACCEPT_ENCODING, "identity").send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers().get(header::ETAG).unwrap().to_str().unwrap(), etag);
    assert_eq!(
        response.headers().get(header::CONTENT_LENGTH).map(|v| v.to_str().unwrap().parse::<usize>().unwrap()),
        Some(length)
    );
    assert!(response.bytes().await.unwrap().is_empty());

    // PUT replaces, PATCH changes what it names; the ETag moves.
    let response = alice.put(app.url(&location)).json(&json!({"name": "Greenhouse 2"})).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let replaced: Value = response.json().await.unwrap();
    assert_eq!(replaced["name"], "Greenhouse 2");
    assert_eq!(replaced["attributes"], json!({}), "PUT without attributes clears them");
    let response = alice
        .patch(app.url(&location))
        .header(header::CONTENT_TYPE, "application/merge-patch+json")
        .body(json!({"attributes": {"floor": 1}}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let patched: Value = response.json().await.unwrap();
    assert_eq!(patched["name"], "Greenhouse 2");
    assert_eq!(patched["attributes"]["floor"], 1);
    let response = alice.get(app.url(&location)).header(header::IF_NONE_MATCH, &etag).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK, "a changed device must not be 304");

    // Lists: alice sees hers, bob sees none, the admin sees all.
    let list: Value = alice.get(app.url("/api/v1/devices")).send().await.unwrap().json().await.unwrap();
    assert_eq!(list["devices"].as_array().unwrap().len(), 1);
    let list: Value = bob.get(app.url("/api/v1/devices")).send().await.unwrap().json().await.unwrap();
    assert_eq!(list["devices"].as_array().unwrap().len(), 0);
    let bobs = app.create_device(&bob, &unique_device()).await;
    let list: Value = admin.get(app.url("/api/v1/devices?page_size=1")).send().await.unwrap().json().await.unwrap();
    assert_eq!(list["devices"].as_array().unwrap().len(), 1);
    let token = list["next_page_token"].as_str().expect("a second page").to_string();
    let list: Value =
        admin.get(app.url(&format!("/api/v1/devices?page_size=1&page_token={token}"))).send().await.unwrap().json().await.unwrap();
    assert_eq!(list["devices"].as_array().unwrap().len(), 1);

    // Another user's device is 404 for every method, and stays unchanged.
    for response in [
        bob.get(app.url(&location)).send().await.unwrap(),
        bob.put(app.url(&location)).json(&json!({"name": "mine now"})).send().await.unwrap(),
        bob.patch(app.url(&location)).json(&json!({"name": "mine now"})).send().await.unwrap(),
        bob.delete(app.url(&location)).send().await.unwrap(),
        bob.post(app.url(&format!("{location}/credentials"))).send().await.unwrap(),
        bob.get(app.url(&format!("{location}/readings"))).send().await.unwrap(),
        bob.get(app.url(&format!("{location}/readings/latest"))).send().await.unwrap(),
        bob.delete(app.url(&format!("{location}/readings"))).send().await.unwrap(),
        bob.get(app.url(&format!("{location}/stream"))).send().await.unwrap(),
    ] {
        assert_eq!(error_code(response, StatusCode::NOT_FOUND).await, "not_found");
    }
    let unchanged: Value = alice.get(app.url(&location)).send().await.unwrap().json().await.unwrap();
    assert_eq!(unchanged["name"], "Greenhouse 2");
    // The admin may see bob's device.
    let response = admin.get(app.url(&format!("/api/v1/devices/{}", bobs["device_id"].as_str().unwrap()))).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    // Rotating credentials gives a new password.
    let response = alice.post(app.url(&format!("{location}/credentials"))).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let rotated: Value = response.json().await.unwrap();
    assert_eq!(rotated["mqtt"]["username"], id.as_str());
    assert_ne!(rotated["mqtt"]["password"].as_str().unwrap(), password);

    // Delete -> 204, then 404.
    let response = alice.delete(app.url(&location)).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let response = alice.get(app.url(&location)).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
}
