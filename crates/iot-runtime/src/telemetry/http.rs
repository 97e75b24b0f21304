//! Trace context in HTTP headers. [`extract_header_map`]/[`inject_header_map`] work on
//! `http` 1 header maps (reqwest, axum, hyper 1). actix-web 4 has its own header types
//! (`http` 0.2), so the api passes its headers as name/value pairs and keeps this crate free
//! of actix:
//!
//! ```ignore
//! let parent = iot_runtime::telemetry::http::extract_headers(
//!     req.headers().iter().map(|(name, value)| (name.as_str(), value.as_bytes())),
//! );
//! ```

use super::Context;
use opentelemetry::propagation::{Extractor, Injector};

/// The server span of one HTTP request: `otel.name` `"{method} {route}"` (or just the method
/// when no route matched, so that names stay few), kind server, `http.request.method`,
/// `url.path`, `http.route`, `user_agent.original`, and `http.response.status_code` left to
/// [`record_response`]. Its parent is the caller's `traceparent`, set while the span is built.
/// Framework-neutral: headers are (name, raw value) pairs.
pub fn server_span<'a, I>(method: &str, path: &str, route: Option<&str>, headers: I) -> tracing::Span
where
    I: IntoIterator<Item = (&'a str, &'a [u8])>,
{
    let headers: Vec<(&str, &[u8])> = headers.into_iter().collect();
    let user_agent = headers
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case("user-agent"))
        .and_then(|(_, value)| std::str::from_utf8(value).ok())
        .unwrap_or_default();
    let span = tracing::info_span!(
        "http.server",
        otel.name = %match route { Some(route) => format!("{method} {route}"), None => method.to_string() },
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        http.request.method = method,
        url.path = path,
        http.route = route,
        user_agent.original = user_agent,
        http.response.status_code = tracing::field::Empty,
        error.type = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    );
    if let Some(parent) = extract_headers(headers) {
        super::set_parent(&span, parent);
    }
    super::record_trace_id(&span);
    span
}

/// Records the response status on a span from [`server_span`]; 5xx marks it as an error
/// (4xx is the client's error, not the server's).
pub fn record_response(span: &tracing::Span, status: u16) {
    span.record("http.response.status_code", i64::from(status));
    if status >= 500 {
        span.record("otel.status_code", "error");
        span.record("error.type", status.to_string());
    }
}

/// The caller's context from request headers given as (name, raw value) pairs; `None` when
/// there is no valid `traceparent`.
pub fn extract_headers<'a, I>(headers: I) -> Option<Context>
where
    I: IntoIterator<Item = (&'a str, &'a [u8])>,
{
    super::extract_pairs(
        headers.into_iter().filter_map(|(name, value)| std::str::from_utf8(value).ok().map(|value| (name, value))),
    )
}

/// Headers (`traceparent`, maybe `tracestate`) that carry `cx` to the next hop, for clients
/// with their own header types.
pub fn inject_headers(cx: &Context) -> Vec<(String, String)> {
    super::inject_pairs(cx)
}

/// The caller's context from an `http` 1 header map; `None` when there is no valid `traceparent`.
pub fn extract_header_map(headers: &http::HeaderMap) -> Option<Context> {
    let cx = super::extract_with(&HeaderExtractor(headers));
    super::remote_span_context(&cx).is_some().then_some(cx)
}

/// Writes `cx` into an `http` 1 header map.
pub fn inject_header_map(cx: &Context, headers: &mut http::HeaderMap) {
    super::inject_with(cx, &mut HeaderInjector(headers));
}

/// Extractor over an `http` 1 header map.
pub struct HeaderExtractor<'a>(pub &'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// Injector into an `http` 1 header map; values that are not valid header values are skipped.
pub struct HeaderInjector<'a>(pub &'a mut http::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) =
            (http::HeaderName::from_bytes(key.as_bytes()), http::HeaderValue::from_str(&value))
        {
            self.0.insert(name, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_map_and_pairs_agree() {
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut headers = http::HeaderMap::new();
        headers.insert("traceparent", http::HeaderValue::from_static(parent));
        let from_map = extract_header_map(&headers).expect("valid");
        let from_pairs =
            extract_headers(headers.iter().map(|(name, value)| (name.as_str(), value.as_bytes()))).expect("valid");
        let mut out = http::HeaderMap::new();
        inject_header_map(&from_map, &mut out);
        assert_eq!(out.get("traceparent").and_then(|v| v.to_str().ok()), Some(parent));
        assert_eq!(inject_headers(&from_pairs), vec![("traceparent".to_string(), parent.to_string())]);
        assert!(extract_header_map(&http::HeaderMap::new()).is_none());
    }
}
