use std::time::Duration;

use reqwest::{StatusCode, header};
use rumqttc::{AsyncClient, MqttOptions, QoS};
use serde_json::Value;

use crate::helpers::{spawn_app, unique_device};

#[tokio::test(flavor = "multi_thread")]
async fn stream_pushes_a_reading_published_over_mqtt() {
    let app = spawn_app().await;
    let (admin, _) = app.admin().await;
    let id = unique_device();
    let other = unique_device();
    app.create_device(&admin, &id).await;
    app.create_device(&admin, &other).await;

    let response = admin.get(app.url(&format!("/api/v1/devices/{id}/stream"))).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()[header::CONTENT_TYPE], "text/event-stream");
    let mut response = response;
    // The opening comment arrives at once.
    let first = tokio::time::timeout(Duration::from_secs(10), response.chunk()).await.unwrap().unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("retry:"));

    let metrics = reqwest::get(format!("{}/metrics", app.ops)).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("api_sse_clients 1"), "{metrics}");

    let mut options = MqttOptions::new(format!("test-device-{id}"), "127.0.0.1", app.broker.port);
    options.set_keep_alive(Duration::from_secs(5));
    let (client, mut eventloop) = AsyncClient::new(options, 10);
    tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });

    // The api's subscription may still be settling: publish until the reading shows up.
    // Another device's reading must not appear on this stream.
    let (id_pub, other_pub) = (id.clone(), other.clone());
    let publisher = tokio::spawn(async move {
        let (id, other) = (id_pub, other_pub);
        for _ in 0..100 {
            let _ = client
                .publish(format!("devices/{other}/telemetry"), QoS::AtLeastOnce, false, r#"{"metrics":{"temperature":-99}}"#)
                .await;
            let _ = client
                .publish(format!("devices/{id}/telemetry"), QoS::AtLeastOnce, false, r#"{"metrics":{"temperature":21.5}}"#)
                .await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let mut received = String::new();
    let event = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let chunk = response.chunk().await.unwrap().expect("stream ended");
            received.push_str(&String::from_utf8_lossy(&chunk));
            if let Some(start) = received.find("event: reading\n") {
                let rest = &received[start..];
                if let Some(end) = rest.find("\n\n") {
                    return rest[..end].to_string();
                }
            }
        }
    })
    .await
    .expect("a reading event within 20 s");
    publisher.abort();
    let data = event.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
    let reading: Value = serde_json::from_str(data).unwrap();
    assert_eq!(reading["metric"], "temperature");
    assert_eq!(reading["value"], 21.5);
    assert!(!received.contains("-99"), "another device's reading leaked: {received}");

    // A client that stays connected does not hold up shutdown: the stream ends well before
    // actix's own graceful-stop timeout (10 s) would cut it.
    let mut open_stream = admin.get(app.url(&format!("/api/v1/devices/{id}/stream"))).send().await.unwrap();
    assert_eq!(open_stream.status(), StatusCode::OK);
    drop(response);
    app.shutdown.cancel();
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        while let Ok(Some(_)) = open_stream.chunk().await {}
    })
    .await;
    assert!(ended.is_ok(), "the live stream did not end on shutdown");
}

#[tokio::test(flavor = "multi_thread")]
async fn stream_refuses_what_it_cannot_send() {
    let app = spawn_app().await;
    let (admin, _) = app.admin().await;
    let id = unique_device();
    app.create_device(&admin, &id).await;
    // Unsupported Accept on the stream -> 406.
    let response = admin
        .get(app.url(&format!("/api/v1/devices/{id}/stream")))
        .header(header::ACCEPT, "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_ACCEPTABLE);
}
