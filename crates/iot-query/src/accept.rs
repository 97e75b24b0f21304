//! `Accept` header negotiation with q-values (RFC 9110 §12.5.1).

/// Picks the offered media type the client prefers, `None` when it accepts none of them.
/// Ties go to the earlier entry of `offered` (the server's preference), so `*/*` or no
/// header at all yields `offered[0]`.
pub fn negotiate(accept: Option<&str>, offered: &[&'static str]) -> Option<&'static str> {
    let first = offered.first()?;
    let accept = match accept.map(str::trim) {
        None | Some("") => return Some(first),
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
                .filter_map(|p| {
                    p.trim()
                        .strip_prefix("q=")
                        .or_else(|| p.trim().strip_prefix("Q="))
                })
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
    best.map(|(t, _)| t)
}
