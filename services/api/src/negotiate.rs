//! `Accept` header negotiation; the parsing is `iot_query::negotiate` (pure, fuzzed).

use actix_web::{HttpRequest, http::header};

use crate::error::ApiError;

/// Picks the offered media type the client prefers, or 406.
pub fn negotiate(accept: Option<&str>, offered: &[&'static str]) -> Result<&'static str, ApiError> {
    iot_query::negotiate(accept, offered).ok_or_else(|| ApiError::NotAcceptable(offered.join(", ")))
}

pub fn negotiate_request(req: &HttpRequest, offered: &[&'static str]) -> Result<&'static str, ApiError> {
    // A header that is not visible ASCII matches nothing (NUL is no media range).
    let accept = req.headers().get(header::ACCEPT).map(|v| v.to_str().unwrap_or("\u{0}"));
    negotiate(accept, offered)
}
