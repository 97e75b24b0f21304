//! Server-rendered pages: plain HTML, a little inline CSS and JS, nothing fetched from
//! elsewhere. Forms post urlencoded bodies carrying the session's CSRF token.

use actix_web::{HttpRequest, HttpResponse, http::header, web};
use iot_proto::storage::v1::{CreateUserRequest, Device, LatestReadingsRequest, ListDevicesRequest, ReadingPoint};
use serde::Deserialize;

use crate::{
    auth::{CurrentSession, optional_session, removal_cookie, session_cookie},
    error::{ApiError, ApiResult},
    routes::{
        devices::{NewDevice, create_device, owned_device},
        sessions::{log_in, revoke},
    },
    state::AppState,
    time::format_us,
};

pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:0;color:#1b1b1b;background:#fafafa}\
header{background:#123;color:#fff;padding:.6rem 1rem;display:flex;gap:1rem;align-items:center}\
header a{color:#fff}header form{margin-left:auto}main{max-width:60rem;margin:1rem auto;padding:0 1rem}\
table{border-collapse:collapse;width:100%;background:#fff}th,td{border:1px solid #ccc;padding:.3rem .5rem;text-align:left}\
label{display:block;margin:.4rem 0 .1rem}input{padding:.3rem;font-size:1rem}button{padding:.35rem .8rem;font-size:1rem;margin-top:.5rem}\
.error{color:#a00;font-weight:bold}.secret{font-family:monospace;background:#ffd;padding:.2rem}img{max-width:100%;height:auto;border:1px solid #ccc;background:#fff}\
.live{font-size:.9rem;color:#555}";

fn layout(title: &str, session: Option<&CurrentSession>, body: &str) -> String {
    let nav = match session {
        Some(s) => format!(
            "<a href=\"/devices\">Devices</a><span>Signed in as {user}</span>\
             <form method=\"post\" action=\"/logout\"><input type=\"hidden\" name=\"csrf_token\" value=\"{csrf}\">\
             <button type=\"submit\">Log out</button></form>",
            user = escape(&s.session.username),
            csrf = escape(&s.session.csrf_token)
        ),
        None => "<a href=\"/login\">Log in</a>".to_string(),
    };
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title} · IoT telemetry</title><style>{STYLE}</style></head>\
         <body><header><strong>IoT telemetry</strong>{nav}</header><main>{body}</main></body></html>",
        title = escape(title)
    )
}

fn html(status: actix_web::http::StatusCode, page: String) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-store"))
        // Inline style/script only; nothing from other origins.
        .insert_header((
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src 'self'; connect-src 'self'; frame-ancestors 'none'",
        ))
        .body(page)
}

fn ok(page: String) -> HttpResponse {
    html(actix_web::http::StatusCode::OK, page)
}

fn see_other(location: &str) -> HttpResponse {
    HttpResponse::SeeOther().insert_header((header::LOCATION, location)).finish()
}

/// Pages send people without a session to the login form instead of a JSON 401.
async fn page_session(req: &HttpRequest, state: &AppState) -> ApiResult<Result<CurrentSession, HttpResponse>> {
    Ok(match optional_session(req, state).await? {
        Some(session) => Ok(session),
        None => Err(see_other("/login")),
    })
}

fn check_csrf(session: &CurrentSession, token: &str) -> ApiResult<()> {
    // Constant-time enough for a per-session random token compared once per form post.
    if token.is_empty() || token != session.session.csrf_token {
        return Err(ApiError::Forbidden("missing or wrong CSRF token".to_string()));
    }
    Ok(())
}

pub async fn index(req: HttpRequest, state: web::Data<AppState>) -> ApiResult<HttpResponse> {
    Ok(match optional_session(&req, &state).await? {
        Some(_) => see_other("/devices"),
        None => see_other("/login"),
    })
}

fn login_page(error: Option<&str>) -> String {
    let error = error.map(|e| format!("<p class=\"error\" role=\"alert\">{}</p>", escape(e))).unwrap_or_default();
    layout(
        "Log in",
        None,
        &format!(
            "<h1>Log in</h1>{error}<form method=\"post\" action=\"/login\">\
             <label for=\"username\">Username</label><input id=\"username\" name=\"username\" autocomplete=\"username\" required>\
             <label for=\"password\">Password</label><input id=\"password\" name=\"password\" type=\"password\" autocomplete=\"current-password\" required>\
             <div><button type=\"submit\">Log in</button></div></form>"
        ),
    )
}

pub async fn login_form() -> HttpResponse {
    ok(login_page(None))
}

#[derive(Debug, Deserialize)]
pub struct LoginForm {
    pub username: String,
    pub password: String,
}

pub async fn login_submit(req: HttpRequest, state: web::Data<AppState>, form: web::Form<LoginForm>) -> ApiResult<HttpResponse> {
    let form = form.into_inner();
    match log_in(&req, &state, form.username, form.password).await? {
        Some((token, session)) => {
            let cookie = session_cookie(&req, &state, token, &session);
            let mut response = see_other("/devices");
            response.add_cookie(&cookie).map_err(|e| ApiError::Unexpected(e.into()))?;
            Ok(response)
        }
        None => Ok(html(actix_web::http::StatusCode::UNAUTHORIZED, login_page(Some("Wrong username or password.")))),
    }
}

#[derive(Debug, Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    pub csrf_token: String,
}

pub async fn logout(req: HttpRequest, state: web::Data<AppState>, form: web::Form<CsrfForm>) -> ApiResult<HttpResponse> {
    if let Some(session) = optional_session(&req, &state).await? {
        check_csrf(&session, &form.csrf_token)?;
        revoke(&state, &session).await?;
    }
    let mut response = see_other("/login");
    response.add_cookie(&removal_cookie(&req, &state)).map_err(|e| ApiError::Unexpected(e.into()))?;
    Ok(response)
}

fn device_list_page(session: &CurrentSession, devices: &[Device], notice: &str) -> String {
    let rows: String = devices
        .iter()
        .map(|d| {
            format!(
                "<tr><td><a href=\"/devices/{id}\">{id}</a></td><td>{name}</td><td>{created}</td></tr>",
                id = escape(&d.device_id),
                name = escape(&d.name),
                created = escape(&format_us(d.created_at_us))
            )
        })
        .collect();
    let table = if devices.is_empty() {
        "<p>No devices yet.</p>".to_string()
    } else {
        format!("<table><caption>Your devices</caption><thead><tr><th scope=\"col\">Device id</th><th scope=\"col\">Name</th><th scope=\"col\">Created</th></tr></thead><tbody>{rows}</tbody></table>")
    };
    let csrf = escape(&session.session.csrf_token);
    let admin = if session.is_admin() {
        format!(
            "<h2>Register a user</h2><form method=\"post\" action=\"/users\"><input type=\"hidden\" name=\"csrf_token\" value=\"{csrf}\">\
             <label for=\"new-username\">Username</label><input id=\"new-username\" name=\"username\" required pattern=\"[A-Za-z0-9_.@-]{{1,64}}\">\
             <label for=\"new-password\">Password (8 characters or more)</label><input id=\"new-password\" name=\"password\" type=\"password\" minlength=\"8\" autocomplete=\"new-password\" required>\
             <div><button type=\"submit\">Register</button></div></form>"
        )
    } else {
        String::new()
    };
    format!(
        "<h1>Devices</h1>{notice}{table}\
         <h2>Add a device</h2><form method=\"post\" action=\"/devices\"><input type=\"hidden\" name=\"csrf_token\" value=\"{csrf}\">\
         <label for=\"device_id\">Device id (letters, digits, _ and -)</label><input id=\"device_id\" name=\"device_id\" required pattern=\"[A-Za-z0-9_-]{{1,64}}\">\
         <label for=\"name\">Name</label><input id=\"name\" name=\"name\" required maxlength=\"255\">\
         <div><button type=\"submit\">Add device</button></div></form>{admin}"
    )
}

async fn my_devices(state: &AppState, session: &CurrentSession) -> ApiResult<Vec<Device>> {
    Ok(state
        .storage
        .clone()
        .list_devices(ListDevicesRequest { owner_id: session.owner_filter(), page_size: 1000, page_token: String::new() })
        .await?
        .into_inner()
        .devices)
}

pub async fn device_list(req: HttpRequest, state: web::Data<AppState>) -> ApiResult<HttpResponse> {
    let session = match page_session(&req, &state).await? {
        Ok(s) => s,
        Err(redirect) => return Ok(redirect),
    };
    let devices = my_devices(&state, &session).await?;
    Ok(ok(layout("Devices", Some(&session), &device_list_page(&session, &devices, ""))))
}

#[derive(Debug, Deserialize)]
pub struct DeviceForm {
    #[serde(default)]
    pub csrf_token: String,
    pub device_id: String,
    pub name: String,
}

pub async fn device_create(req: HttpRequest, state: web::Data<AppState>, form: web::Form<DeviceForm>) -> ApiResult<HttpResponse> {
    let session = match page_session(&req, &state).await? {
        Ok(s) => s,
        Err(redirect) => return Ok(redirect),
    };
    let form = form.into_inner();
    check_csrf(&session, &form.csrf_token)?;
    let created = create_device(&state, &session, NewDevice { device_id: form.device_id, name: form.name, attributes: None }).await;
    let (status, notice) = match created {
        Ok((device, body)) => {
            let mqtt = &body["mqtt"];
            let enforcement = if mqtt["broker_enforced"].as_bool() == Some(true) {
                ""
            } else {
                " <em>Note: this api runs without broker provisioning, so the broker does not check these credentials.</em>"
            };
            (
                actix_web::http::StatusCode::CREATED,
                format!(
                    "<section role=\"status\"><h2>Device {id} created</h2><p>Connect it to <code>{host}:{port}</code> as user \
                     <code>{id}</code> with password <span class=\"secret\">{password}</span> and publish to <code>{topic}</code>. \
                     The password is shown only now.{enforcement}</p></section>",
                    id = escape(&device.device_id),
                    host = escape(mqtt["host"].as_str().unwrap_or("")),
                    port = mqtt["port"],
                    password = escape(mqtt["password"].as_str().unwrap_or("")),
                    topic = escape(mqtt["topic"].as_str().unwrap_or("")),
                ),
            )
        }
        Err(error @ (ApiError::Unprocessable(_) | ApiError::Conflict(_))) => {
            (actix_web::http::StatusCode::UNPROCESSABLE_ENTITY, format!("<p class=\"error\" role=\"alert\">{}</p>", escape(&error.to_string())))
        }
        Err(other) => return Err(other),
    };
    let devices = my_devices(&state, &session).await?;
    Ok(html(status, layout("Devices", Some(&session), &device_list_page(&session, &devices, &notice))))
}

#[derive(Debug, Deserialize)]
pub struct UserForm {
    #[serde(default)]
    pub csrf_token: String,
    pub username: String,
    pub password: String,
}

pub async fn user_create(req: HttpRequest, state: web::Data<AppState>, form: web::Form<UserForm>) -> ApiResult<HttpResponse> {
    let session = match page_session(&req, &state).await? {
        Ok(s) => s,
        Err(redirect) => return Ok(redirect),
    };
    let form = form.into_inner();
    check_csrf(&session, &form.csrf_token)?;
    if !session.is_admin() {
        return Err(ApiError::Forbidden("only an admin can register users".to_string()));
    }
    let created = state
        .storage
        .clone()
        .create_user(CreateUserRequest { username: form.username, password: form.password, is_admin: false, only_if_first: false })
        .await;
    let (status, notice) = match created {
        Ok(user) => (
            actix_web::http::StatusCode::CREATED,
            format!("<p role=\"status\">User <strong>{}</strong> registered.</p>", escape(&user.into_inner().username)),
        ),
        Err(status) => match ApiError::from(status) {
            error @ (ApiError::Unprocessable(_) | ApiError::Conflict(_)) => (
                actix_web::http::StatusCode::UNPROCESSABLE_ENTITY,
                format!("<p class=\"error\" role=\"alert\">{}</p>", escape(&error.to_string())),
            ),
            other => return Err(other),
        },
    };
    let devices = my_devices(&state, &session).await?;
    Ok(html(status, layout("Devices", Some(&session), &device_list_page(&session, &devices, &notice))))
}

const DEVICE_SCRIPT: &str = r#"
(function () {
  var root = document.getElementById('device');
  var id = root.dataset.deviceId;
  var table = document.getElementById('latest-body');
  var status = document.getElementById('live-status');
  var chart = document.getElementById('chart');
  var lastChart = 0, pending = null;
  function refreshChart() {
    var now = Date.now();
    if (now - lastChart < 3000) { if (!pending) pending = setTimeout(function () { pending = null; refreshChart(); }, 3000); return; }
    lastChart = now;
    chart.src = chart.dataset.base + '&t=' + now;
  }
  function upsert(r) {
    var row = document.getElementById('m-' + r.metric);
    if (!row) {
      row = document.createElement('tr'); row.id = 'm-' + r.metric;
      var th = document.createElement('th'); th.scope = 'row'; th.textContent = r.metric; row.appendChild(th);
      row.appendChild(document.createElement('td')); row.appendChild(document.createElement('td'));
      table.appendChild(row);
      var empty = document.getElementById('no-latest'); if (empty) empty.remove();
    }
    row.cells[1].textContent = String(r.value);
    row.cells[2].textContent = r.ts;
    row.className = 'updated';
  }
  var source = new EventSource('/api/v1/devices/' + encodeURIComponent(id) + '/stream');
  source.onopen = function () { status.textContent = 'Live: connected'; };
  source.onerror = function () { status.textContent = 'Live: reconnecting…'; };
  source.addEventListener('reading', function (e) {
    var r = JSON.parse(e.data);
    upsert(r);
    status.textContent = 'Live: last reading ' + r.ts;
    refreshChart();
  });
})();
"#;

pub async fn device_page(req: HttpRequest, state: web::Data<AppState>, path: web::Path<String>) -> ApiResult<HttpResponse> {
    let session = match page_session(&req, &state).await? {
        Ok(s) => s,
        Err(redirect) => return Ok(redirect),
    };
    let device = owned_device(&state, &session, &path).await?;
    let latest = state
        .storage
        .clone()
        .latest_readings(LatestReadingsRequest { device_id: device.device_id.clone(), owner_id: session.owner_filter() })
        .await?
        .into_inner()
        .readings;
    let rows: String = latest
        .iter()
        .map(|r| {
            format!(
                "<tr id=\"m-{m}\"><th scope=\"row\">{m}</th><td>{v}</td><td>{ts}</td></tr>",
                m = escape(&r.metric),
                v = r.value,
                ts = escape(&format_us(r.ts_us))
            )
        })
        .collect();
    let empty = if latest.is_empty() { "<p id=\"no-latest\">No readings yet.</p>" } else { "" };
    let id = escape(&device.device_id);
    let chart_src = format!("/api/v1/devices/{id}/readings?format=png&amp;width=800&amp;height=400");
    let body = format!(
        "<div id=\"device\" data-device-id=\"{id}\"><h1>{name} <small>({id})</small></h1>\
         <p>Publishes to <code>devices/{id}/telemetry</code>. <a href=\"/api/v1/devices/{id}/readings?format=html\">All readings</a> · \
         <a href=\"/api/v1/devices/{id}/readings?format=csv\">CSV</a></p>\
         <h2>Latest values</h2><p id=\"live-status\" class=\"live\" role=\"status\" aria-live=\"polite\">Live: connecting…</p>{empty}\
         <table><thead><tr><th scope=\"col\">Metric</th><th scope=\"col\">Value</th><th scope=\"col\">Time (UTC)</th></tr></thead>\
         <tbody id=\"latest-body\">{rows}</tbody></table>\
         <h2>Chart</h2><img id=\"chart\" src=\"{chart_src}\" data-base=\"{chart_src}\" width=\"800\" height=\"400\" \
         alt=\"Line chart of the newest readings of {name}, one panel per metric\"></div>\
         <script>{DEVICE_SCRIPT}</script>",
        name = escape(&device.name),
    );
    Ok(ok(layout(&device.name, Some(&session), &body)))
}

/// `text/html` representation of a readings page (from the readings resource).
pub fn readings_page(device: &Device, readings: &[ReadingPoint], next_cursor: &str, req: &HttpRequest) -> HttpResponse {
    let rows: String = readings
        .iter()
        .map(|r| {
            format!(
                "<tr><td>{ts}</td><th scope=\"row\">{m}</th><td>{v}</td></tr>",
                ts = escape(&format_us(r.ts_us)),
                m = escape(&r.metric),
                v = r.value
            )
        })
        .collect();
    let next = if next_cursor.is_empty() {
        String::new()
    } else {
        let mut query: Vec<(String, String)> = web::Query::<Vec<(String, String)>>::from_query(req.query_string())
            .map(|q| q.into_inner())
            .unwrap_or_default();
        query.retain(|(k, _)| k != "cursor");
        query.push(("cursor".to_string(), next_cursor.to_string()));
        let qs: String = query
            .iter()
            .map(|(k, v)| format!("{}={}", url_encode(k), url_encode(v)))
            .collect::<Vec<_>>()
            .join("&amp;");
        format!("<p><a rel=\"next\" href=\"{}?{qs}\">Next page</a></p>", escape(req.path()))
    };
    let id = escape(&device.device_id);
    let body = format!(
        "<h1>Readings of <a href=\"/devices/{id}\">{name}</a></h1>\
         <table><thead><tr><th scope=\"col\">Time (UTC)</th><th scope=\"col\">Metric</th><th scope=\"col\">Value</th></tr></thead>\
         <tbody>{rows}</tbody></table>{next}",
        name = escape(&device.name)
    );
    let mut response = ok(layout(&format!("Readings of {}", device.name), None, &body));
    response.headers_mut().insert(header::CACHE_CONTROL, header::HeaderValue::from_static("private, no-cache"));
    response
}

fn url_encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            b => format!("%{b:02X}"),
        })
        .collect()
}
