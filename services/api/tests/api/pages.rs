use reqwest::{StatusCode, header};

use crate::helpers::{PASSWORD, client, spawn_app, unique_device};

#[tokio::test(flavor = "multi_thread")]
async fn login_device_list_and_device_page() {
    let app = spawn_app().await;
    let (admin, username) = app.admin().await;
    let id = unique_device();
    app.create_device(&admin, &id).await;

    let browser = client();
    let response = browser.get(app.url("/")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(response.headers()[header::LOCATION], "/login");
    let response = browser.get(app.url("/devices")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::SEE_OTHER, "pages redirect to the login form");

    let response = browser.get(app.url("/login")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let page = response.text().await.unwrap();
    assert!(page.contains("<label for=\"username\">") && page.contains("<label for=\"password\">"), "{page}");
    assert!(!page.contains("http://") && !page.contains("https://"), "no external assets: {page}");

    let response = browser.post(app.url("/login")).form(&[("username", username.as_str()), ("password", "nope nope")]).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert!(response.text().await.unwrap().contains("Wrong username or password"));
    let response =
        browser.post(app.url("/login")).form(&[("username", username.as_str()), ("password", PASSWORD)]).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(response.headers()[header::LOCATION], "/devices");

    let response = browser.get(app.url("/devices")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let page = response.text().await.unwrap();
    assert!(page.contains(&format!("href=\"/devices/{id}\"")), "{page}");
    assert!(page.contains("name=\"csrf_token\""), "{page}");

    app.write_readings(&id, &[("temperature", chrono::Utc::now().timestamp_micros() - 1_000_000, 19.25)]).await;
    let response = browser.get(app.url(&format!("/devices/{id}"))).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let page = response.text().await.unwrap();
    assert!(page.contains("19.25"), "latest value shown: {page}");
    assert!(page.contains("<img id=\"chart\""), "{page}");
    assert!(page.contains("new EventSource("), "{page}");

    // The admin registers a user through the page's form; the new user can log in.
    let csrf = page.split("name=\"csrf_token\" value=\"").nth(1).unwrap().split('"').next().unwrap().to_string();
    let list = browser.get(app.url("/devices")).send().await.unwrap().text().await.unwrap();
    assert!(list.contains("action=\"/users\""), "admins get a registration form: {list}");
    let response = browser
        .post(app.url("/users"))
        .form(&[("csrf_token", csrf.as_str()), ("username", "form-user"), ("password", PASSWORD)])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let newcomer = client();
    let response =
        newcomer.post(app.url("/login")).form(&[("username", "form-user"), ("password", PASSWORD)]).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    let list = newcomer.get(app.url("/devices")).send().await.unwrap().text().await.unwrap();
    assert!(!list.contains(&id), "another user's device is not listed: {list}");
    assert!(!list.contains("action=\"/users\""), "non-admins get no registration form");
    let response = newcomer.get(app.url(&format!("/devices/{id}"))).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);

    // Logging out through the form ends the session.
    let response = browser.post(app.url("/logout")).form(&[("csrf_token", csrf.as_str())]).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    let response = browser.get(app.url("/api/v1/sessions/current")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}
