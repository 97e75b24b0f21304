//! Trace context in MQTT v5 user properties (`traceparent`, `tracestate`), as rumqttc's
//! `PublishProperties::user_properties: Vec<(String, String)>` holds them. Generic over that
//! vector so that this crate needs no MQTT client.

use super::Context;

/// Adds the current span's context to `properties` (replacing any `traceparent`/`tracestate`
/// already there). Nothing is added when tracing is off or there is no current span.
pub fn inject_user_properties(properties: &mut Vec<(String, String)>) {
    inject_context(&super::current_context(), properties);
}

/// Adds `cx` to `properties` (replacing any `traceparent`/`tracestate` already there).
pub fn inject_context(cx: &Context, properties: &mut Vec<(String, String)>) {
    let pairs = super::inject_pairs(cx);
    if pairs.is_empty() {
        return;
    }
    properties.retain(|(name, _)| !pairs.iter().any(|(key, _)| key.eq_ignore_ascii_case(name)));
    properties.extend(pairs);
}

/// The context a publisher put in the user properties; `None` when there is no valid
/// `traceparent` (then start a new trace for the message or batch).
pub fn extract_user_properties(properties: &[(String, String)]) -> Option<Context> {
    super::extract_pairs(properties.iter().map(|(name, value)| (name.as_str(), value.as_str())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_existing_trace_properties_and_keeps_others() {
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let cx = extract_user_properties(&[("traceparent".into(), parent.into())]).expect("valid");
        let mut properties = vec![
            ("traceparent".to_string(), "00-old-old-01".to_string()),
            ("unit".to_string(), "celsius".to_string()),
        ];
        inject_context(&cx, &mut properties);
        assert_eq!(
            properties,
            vec![("unit".to_string(), "celsius".to_string()), ("traceparent".to_string(), parent.to_string())]
        );
        assert!(extract_user_properties(&[("unit".into(), "celsius".into())]).is_none());
    }
}
