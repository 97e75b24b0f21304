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

/// The span of publishing one message (kind producer, `messaging.operation.type=send`), a child of
/// the current span or a new trace. Inject its context with [`inject_context`]`(&context_of(&span), ..)`
/// (or [`inject_user_properties`] inside it) so that the consumer continues the trace.
pub fn publish_span(topic: &str, body_size: usize) -> tracing::Span {
    let span = tracing::info_span!(
        "mqtt.send",
        otel.name = %format_args!("send {topic}"),
        otel.kind = "producer",
        otel.status_code = tracing::field::Empty,
        messaging.system = super::semconv::MESSAGING_SYSTEM_MQTT,
        messaging.operation.type = "send",
        messaging.operation.name = "publish",
        messaging.destination.name = topic,
        messaging.message.body.size = body_size,
        error.type = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    );
    super::record_trace_id(&span);
    span
}

/// The context a publisher put in the user properties; `None` when there is no valid
/// `traceparent` (then start a new trace for the message or batch).
pub fn extract_user_properties(properties: &[(String, String)]) -> Option<Context> {
    super::extract_pairs(properties.iter().map(|(name, value)| (name.as_str(), value.as_str())))
}

/// The span of processing one received message (kind consumer, `messaging.*` attributes),
/// continuing the publisher's trace when its user properties carry a `traceparent` and
/// starting a new trace otherwise.
pub fn process_span(
    topic: &str,
    subscription: &str,
    properties: &[(String, String)],
    body_size: usize,
) -> tracing::Span {
    let span = tracing::info_span!(
        "mqtt.process",
        otel.name = %format_args!("process {subscription}"),
        otel.kind = "consumer",
        otel.status_code = tracing::field::Empty,
        messaging.system = super::semconv::MESSAGING_SYSTEM_MQTT,
        messaging.operation.type = "process",
        messaging.destination.name = topic,
        messaging.destination.subscription.name = subscription,
        messaging.message.body.size = body_size,
        error.type = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    );
    if let Some(parent) = extract_user_properties(properties) {
        super::set_parent(&span, parent);
    }
    super::record_trace_id(&span);
    span
}

/// The span of writing a batch of received messages (kind consumer), when each message has a
/// [`process_span`] that lives until the message is settled: a child of `parent` (the process
/// span of the batch's first traced message, so that its trace runs on into storage) and linked
/// to the process span of every other message of the batch, whichever trace each belongs to.
/// `messages` yields every message's process span, `parent` included (it is not linked to).
pub fn batch_span_of<'a, I>(subscription: &str, parent: &tracing::Span, messages: I) -> tracing::Span
where
    I: IntoIterator<Item = &'a tracing::Span>,
{
    let span = tracing::info_span!(
        parent: parent,
        "mqtt.process_batch",
        otel.name = %format_args!("process {subscription}"),
        otel.kind = "consumer",
        otel.status_code = tracing::field::Empty,
        messaging.system = super::semconv::MESSAGING_SYSTEM_MQTT,
        messaging.operation.type = "process",
        messaging.destination.subscription.name = subscription,
        messaging.batch.message_count = tracing::field::Empty,
        error.type = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    );
    let mut count = 0_i64;
    for message in messages {
        count += 1;
        if message.id().is_some() && message.id() == parent.id() {
            continue;
        }
        if let Some(linked) = super::remote_span_context(&super::context_of(message)) {
            super::OpenTelemetrySpanExt::add_link(&span, linked);
        }
    }
    span.record("messaging.batch.message_count", count);
    super::record_trace_id(&span);
    span
}

/// Whether `properties` carry a valid `traceparent` (the message continues a publisher's trace).
pub fn has_trace_context(properties: &[(String, String)]) -> bool {
    extract_user_properties(properties).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_existing_trace_properties_and_keeps_others() {
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let cx = extract_user_properties(&[("traceparent".into(), parent.into())]).expect("valid");
        let mut properties =
            vec![("traceparent".to_string(), "00-old-old-01".to_string()), ("unit".to_string(), "celsius".to_string())];
        inject_context(&cx, &mut properties);
        assert_eq!(
            properties,
            vec![("unit".to_string(), "celsius".to_string()), ("traceparent".to_string(), parent.to_string())]
        );
        assert!(extract_user_properties(&[("unit".into(), "celsius".into())]).is_none());
    }
}
