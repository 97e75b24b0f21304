//! A real headless Chromium (Debian's `chromium` + `chromium-driver`) logs in, opens a device
//! page, sees the chart and sees a reading published over MQTT appear without a reload.
//! Driven through chromedriver's W3C WebDriver HTTP protocol with reqwest (no extra crate).

use std::{
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

use iot_testkit::{ChildGuard, eventually, free_port};
use reqwest::Client;
use rumqttc::{AsyncClient, MqttOptions, QoS};
use serde_json::{Value, json};

use crate::helpers::{PASSWORD, spawn_app, unique_device};

/// `env_var` if set (scripts/test.sh exports CHROMIUM_BIN), else the first of `names` on PATH.
fn find_program(env_var: &str, names: &[&str]) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(env_var).filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH")?;
    names.iter().find_map(|name| std::env::split_paths(&path).map(|dir| dir.join(name)).find(|p| p.is_file()))
}

struct WebDriver {
    http: Client,
    base: String,
    _driver: ChildGuard,
}

impl WebDriver {
    async fn start(chromium: &PathBuf, chromedriver: &PathBuf) -> Self {
        let port = free_port();
        let driver = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut driver = ChildGuard(Some(driver));
        driver.wait_listening(format!("127.0.0.1:{port}").parse().unwrap(), Duration::from_secs(30)).await;
        let http = Client::builder().timeout(Duration::from_secs(60)).build().unwrap();
        let mut webdriver = Self { http, base: format!("http://127.0.0.1:{port}"), _driver: driver };
        let session = webdriver
            .call(
                reqwest::Method::POST,
                "/session",
                json!({"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {
                    "binary": chromium,
                    "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                             "--disable-dev-shm-usage", "--window-size=1200,1000"]
                }}}}),
            )
            .await;
        let id = session["sessionId"].as_str().unwrap_or_else(|| panic!("no WebDriver session: {session}")).to_string();
        webdriver.base = format!("{}/session/{id}", webdriver.base);
        webdriver
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let request = self.http.request(method.clone(), format!("{}{path}", self.base));
        let request = if method == reqwest::Method::GET { request } else { request.json(&body) };
        let response = request.send().await.unwrap();
        let status = response.status();
        let value: Value = response.json().await.unwrap();
        assert!(status.is_success(), "WebDriver {path}: {status} {value}");
        value["value"].clone()
    }

    async fn goto(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", json!({"url": url})).await;
    }

    async fn script(&self, script: &str) -> Value {
        self.call(reqwest::Method::POST, "/execute/sync", json!({"script": script, "args": []})).await
    }

    async fn type_into(&self, css: &str, text: &str) {
        let element = self.call(reqwest::Method::POST, "/element", json!({"using": "css selector", "value": css})).await;
        let id = element.as_object().and_then(|o| o.values().next()).and_then(Value::as_str).unwrap().to_string();
        self.call(reqwest::Method::POST, &format!("/element/{id}/value"), json!({"text": text})).await;
    }

    async fn click(&self, css: &str) {
        let element = self.call(reqwest::Method::POST, "/element", json!({"using": "css selector", "value": css})).await;
        let id = element.as_object().and_then(|o| o.values().next()).and_then(Value::as_str).unwrap().to_string();
        self.call(reqwest::Method::POST, &format!("/element/{id}/click"), json!({})).await;
    }

    async fn quit(&self) {
        let _ = self.http.delete(&self.base).send().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn chromium_logs_in_sees_the_chart_and_a_live_reading() {
    let (Some(chromium), Some(chromedriver)) =
        (find_program("CHROMIUM_BIN", &["chromium", "chromium-browser", "google-chrome"]), find_program("CHROMEDRIVER_BIN", &["chromedriver"]))
    else {
        assert!(
            std::env::var_os("IOT_REQUIRE_BROWSER").is_none(),
            "IOT_REQUIRE_BROWSER is set but chromium/chromedriver are missing (apt-get install chromium chromium-driver)"
        );
        eprintln!("SKIPPED: chromium and chromedriver not installed (apt-get install chromium chromium-driver)");
        return;
    };
    let app = spawn_app().await;
    let (admin, username) = app.admin().await;
    let id = unique_device();
    app.create_device(&admin, &id).await;
    let now = chrono::Utc::now().timestamp_micros();
    app.write_readings(&id, &[("temperature", now - 120_000_000, 20.5), ("temperature", now - 60_000_000, 21.0)]).await;

    let browser = WebDriver::start(&chromium, &chromedriver).await;
    browser.goto(&app.url("/login")).await;
    browser.type_into("#username", &username).await;
    browser.type_into("#password", PASSWORD).await;
    browser.click("main button[type=submit]").await;
    eventually("the device list after logging in", Duration::from_secs(20), || async {
        let path = browser.script("return location.pathname").await;
        (path == "/devices").then_some(())
    })
    .await;

    browser.goto(&app.url(&format!("/devices/{id}"))).await;
    let width = eventually("the chart image loaded", Duration::from_secs(20), || async {
        let width = browser
            .script("var i = document.getElementById('chart'); return i && i.complete ? i.naturalWidth : 0")
            .await;
        width.as_u64().filter(|w| *w > 0)
    })
    .await;
    assert_eq!(width, 800);
    eventually("the live stream connected", Duration::from_secs(20), || async {
        let status = browser.script("return document.getElementById('live-status').textContent").await;
        status.as_str().is_some_and(|s| s.contains("connected")).then_some(())
    })
    .await;
    assert!(browser.script("return document.getElementById('m-pressure')").await.is_null());
    browser.script("window.__noReload = 42; return null").await;

    let mut options = MqttOptions::new(format!("browser-test-{id}"), "127.0.0.1", app.broker.port);
    options.set_keep_alive(Duration::from_secs(5));
    let (client, mut eventloop) = AsyncClient::new(options, 10);
    tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    let topic = format!("devices/{id}/telemetry");
    let shown = eventually("the published reading on the page, without a reload", Duration::from_secs(30), || {
        let client = client.clone();
        let topic = topic.clone();
        let browser = &browser;
        async move {
            let _ = client.publish(topic, QoS::AtLeastOnce, false, r#"{"metrics":{"pressure":1013.25}}"#).await;
            tokio::time::sleep(Duration::from_millis(300)).await;
            let text = browser
                .script("var r = document.getElementById('m-pressure'); return r ? r.textContent : null")
                .await;
            text.as_str().filter(|t| t.contains("1013.25")).map(str::to_string)
        }
    })
    .await;
    assert!(shown.contains("pressure"));
    // Same document: the marker set before publishing survived, so nothing reloaded.
    assert_eq!(browser.script("return window.__noReload").await, 42);
    browser.quit().await;
}
