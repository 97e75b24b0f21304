//! `Accept` header negotiation with q-values (RFC 9110 §12.5.1).

use actix_web::{HttpRequest, http::header};

use crate::error::ApiError;

/// Picks the offered media type the client prefers. Ties go to the earlier entry of
/// `offered` (the server's preference), so `*/*` or no header at all yields `offered[0]`.
pub fn negotiate(accept: Option<&str>, offered: &[&'static str]) -> Result<&'static str, ApiError> {
    let Some(first) = offered.first() else {
        return Err(ApiError::NotAcceptable(String::new()));
    };
    let accept = match accept.map(str::trim) {
        None | Some("") => return Ok(first),
        Some(a) => a,
    };
    let ranges: Vec<(String, f32)> = accept
        .split(',')
        .filter_map(|part| {
            let mut params = part.split(';');
            let range = params.next()?.trim().to_ascii_lowercase();
            if range.is_empty() {
                return None;
            }
            let q = params
                .filter_map(|p| p.trim().strip_prefix("q=").or_else(|| p.trim().strip_prefix("Q=")))
                .find_map(|q| q.trim().parse::<f32>().ok())
                .unwrap_or(1.0)
                .clamp(0.0, 1.0);
            Some((range, q))
        })
        .collect();
    let mut best: Option<(&'static str, f32)> = None;
    for candidate in offered {
        let (kind, _) = candidate.split_once('/').unwrap_or((candidate, ""));
        // The most specific matching range decides the q-value for this candidate.
        let mut matched: Option<(u8, f32)> = None;
        for (range, q) in &ranges {
            let specificity = if range == candidate {
                3
            } else if range.strip_suffix("/*") == Some(kind) {
                2
            } else if range == "*/*" {
                1
            } else {
                continue;
            };
            if matched.is_none_or(|(s, _)| specificity > s) {
                matched = Some((specificity, *q));
            }
        }
        if let Some((_, q)) = matched
            && q > 0.0
            && best.is_none_or(|(_, best_q)| q > best_q)
        {
            best = Some((candidate, q));
        }
    }
    best.map(|(t, _)| t).ok_or_else(|| ApiError::NotAcceptable(offered.join(", ")))
}

pub fn negotiate_request(req: &HttpRequest, offered: &[&'static str]) -> Result<&'static str, ApiError> {
    let accept = req.headers().get(header::ACCEPT).map(|v| v.to_str().unwrap_or("\u{0}"));
    negotiate(accept, offered)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const OFFERED: &[&str] = &["application/json", "text/csv", "image/png", "text/html"];

    #[test]
    fn picks_by_q_then_server_preference() {
        assert_eq!(negotiate(None, OFFERED).unwrap(), "application/json");
        assert_eq!(negotiate(Some("*/*"), OFFERED).unwrap(), "application/json");
        assert_eq!(negotiate(Some("text/csv"), OFFERED).unwrap(), "text/csv");
        assert_eq!(negotiate(Some("text/csv;q=0.5, image/png"), OFFERED).unwrap(), "image/png");
        assert_eq!(negotiate(Some("image/*"), OFFERED).unwrap(), "image/png");
        assert_eq!(negotiate(Some("application/json;q=0, */*;q=0.1"), OFFERED).unwrap(), "text/csv");
        let browser = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8";
        assert_eq!(negotiate(Some(browser), OFFERED).unwrap(), "text/html");
        let img = "image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8";
        assert_eq!(negotiate(Some(img), OFFERED).unwrap(), "image/png");
    }

    #[test]
    fn refuses_what_it_cannot_make() {
        assert!(negotiate(Some("application/xml"), OFFERED).is_err());
        assert!(negotiate(Some("text/csv;q=0"), &["text/csv"]).is_err());
    }
}
