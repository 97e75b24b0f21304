//! Cookie sessions (validated by the session service) and CSRF rules.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use actix_web::{
    FromRequest, HttpRequest,
    cookie::{Cookie, SameSite, time::Duration as CookieDuration},
    dev::Payload,
    web,
};
use iot_proto::session::v1::{Session, ValidateSessionRequest};

use crate::{
    config::CookieSecure,
    error::{ApiError, ApiResult},
    state::AppState,
};

pub const SESSION_COOKIE: &str = "sid";

/// The caller, authenticated by the `sid` cookie.
#[derive(Debug, Clone)]
pub struct CurrentSession {
    pub token: String,
    /// Shared with the session cache (`crate::session_cache`).
    pub session: Arc<Session>,
}

impl CurrentSession {
    pub fn user_id(&self) -> u64 {
        self.session.user_id
    }

    pub fn is_admin(&self) -> bool {
        self.session.is_admin
    }

    /// `owner_id` filter for listing devices: admins see every owner's (0).
    pub fn owner_filter(&self) -> u64 {
        if self.is_admin() { 0 } else { self.user_id() }
    }

    /// Whether this user may see a device owned by `owner_id`.
    pub fn may_access(&self, owner_id: u64) -> bool {
        self.is_admin() || owner_id == self.user_id()
    }
}

/// Validates the cookie if there is one: `Ok(None)` for no cookie or an invalid/expired one,
/// `Err` when the session service cannot answer (that must not look like "logged out").
pub async fn optional_session(req: &HttpRequest, state: &AppState) -> ApiResult<Option<CurrentSession>> {
    let Some(token) = req.cookie(SESSION_COOKIE).map(|c| c.value().to_string()) else {
        return Ok(None);
    };
    if token.is_empty() {
        return Ok(None);
    }
    if let Some(session) = state.sessions.get(&token) {
        return Ok(Some(CurrentSession { token, session }));
    }
    let epoch = state.sessions.epoch();
    let mut client = state.session.clone();
    match client.validate_session(ValidateSessionRequest { token: token.clone() }).await {
        Ok(response) => {
            let session = Arc::new(response.into_inner());
            state.sessions.insert(&token, session.clone(), epoch);
            Ok(Some(CurrentSession { token, session }))
        }
        Err(status) if status.code() == tonic::Code::Unauthenticated => Ok(None),
        // A malformed token is just an invalid one.
        Err(status) if status.code() == tonic::Code::InvalidArgument => Ok(None),
        Err(status) => Err(status.into()),
    }
}

impl FromRequest for CurrentSession {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, Self::Error>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let req = req.clone();
        Box::pin(async move {
            let state = req
                .app_data::<web::Data<AppState>>()
                .ok_or_else(|| ApiError::Unexpected(anyhow::anyhow!("application state missing")))?;
            optional_session(&req, state).await?.ok_or(ApiError::Unauthenticated)
        })
    }
}

fn cookie_secure(req: &HttpRequest, mode: CookieSecure) -> bool {
    match mode {
        CookieSecure::Always => true,
        CookieSecure::Never => false,
        // connection_info() honours Forwarded / X-Forwarded-Proto from a TLS-terminating proxy.
        CookieSecure::Auto => req.connection_info().scheme() == "https",
    }
}

pub fn session_cookie(req: &HttpRequest, state: &AppState, token: String, session: &Session) -> Cookie<'static> {
    let now_us = chrono::Utc::now().timestamp_micros();
    let lifetime_s = ((session.absolute_expires_at_us - now_us) / 1_000_000).max(0);
    let mut cookie = Cookie::build(SESSION_COOKIE, token)
        .http_only(true)
        .same_site(SameSite::Lax)
        .path("/")
        .secure(cookie_secure(req, state.config.cookie_secure))
        .finish();
    if lifetime_s > 0 {
        cookie.set_max_age(CookieDuration::seconds(lifetime_s));
    }
    cookie
}

pub fn removal_cookie(req: &HttpRequest, state: &AppState) -> Cookie<'static> {
    let mut cookie = Cookie::build(SESSION_COOKIE, "")
        .http_only(true)
        .same_site(SameSite::Lax)
        .path("/")
        .secure(cookie_secure(req, state.config.cookie_secure))
        .finish();
    cookie.make_removal();
    cookie
}

/// Why a state-changing request must be refused as cross-site, if it must.
///
/// Only requests carrying the session cookie are checked: without it there is no ambient
/// authority to abuse. Clients that send neither `Origin` nor `Sec-Fetch-Site` (curl,
/// scripts) pass; browsers send at least one of them on every cross-site POST/PUT/PATCH/DELETE.
pub fn cross_site_reason(req: &actix_web::dev::ServiceRequest) -> Option<String> {
    use actix_web::http::{Method, header};
    if matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE) {
        return None;
    }
    req.cookie(SESSION_COOKIE)?;
    let headers = req.headers();
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        // `same-site` is a sibling subdomain: another origin, possibly someone else's app.
        if !matches!(site, "same-origin" | "none") {
            return Some(format!("Sec-Fetch-Site: {site}"));
        }
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("null");
        let authority = origin.split_once("://").map(|(_, rest)| rest).unwrap_or("");
        // The host the browser addressed; behind a proxy, the one it forwarded.
        let info = req.connection_info();
        if origin == "null" || !authority.eq_ignore_ascii_case(info.host()) {
            return Some(format!("Origin {origin} is not this site ({})", info.host()));
        }
    }
    None
}

/// Cryptographically random, URL-safe.
pub fn random_secret(bytes: usize) -> String {
    crate::random_token(bytes)
}
