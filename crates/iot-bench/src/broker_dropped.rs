//! Mosquitto's own count of the messages it dropped because a client's queue was full
//! (`max_queued_messages` / `max_queued_bytes`): the part of a phase's losses that happened in
//! the broker, before any consumer could see the message. Read from the retained `$SYS` topic.
//! The broker republishes it only when it changed and at most every `sys_interval` + 1
//! seconds (2 s with `sys_interval 1`, which scripts/bench sets), so a reader that must see
//! every drop up to now keeps listening for a while after the retained value.

use std::time::Duration;

use anyhow::{Context, ensure};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::time::Instant;

pub const TOPIC: &str = "$SYS/broker/publish/messages/dropped";
/// Longer than the broker's republishing period with `sys_interval 1`.
pub const SETTLE: Duration = Duration::from_millis(2500);
const FIRST_VALUE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct Broker {
    pub host: String,
    pub port: u16,
    pub login: Option<(String, String)>,
}

/// The count: the retained value, replaced by any newer one published within `settle` of it.
pub async fn read(broker: Broker, settle: Duration) -> anyhow::Result<u64> {
    let mut options = MqttOptions::new(format!("bench-sys-{:08x}", rand::random::<u32>()), broker.host.clone(), broker.port);
    options.set_keep_alive(Duration::from_secs(30)).set_clean_session(true);
    if let Some((username, password)) = broker.login.clone() {
        options.set_credentials(username, password);
    }
    let (client, mut eventloop) = AsyncClient::new(options, 10);
    client.subscribe(TOPIC, QoS::AtMostOnce).await?;
    let mut deadline = Instant::now() + FIRST_VALUE_TIMEOUT;
    let mut dropped: Option<u64> = None;
    loop {
        let event = match tokio::time::timeout_at(deadline, eventloop.poll()).await {
            Err(_) => break,
            Ok(event) => event.with_context(|| format!("reading {TOPIC} from {}:{}", broker.host, broker.port))?,
        };
        match event {
            Event::Incoming(Packet::SubAck(ack)) => ensure!(
                crate::subscribe::all_granted(&ack),
                "the broker refused the subscription to {TOPIC}"
            ),
            Event::Incoming(Packet::Publish(publish)) => {
                let text = String::from_utf8_lossy(&publish.payload);
                let count = text.trim().parse().with_context(|| format!("{TOPIC}: {text:?} is not a count"))?;
                if dropped.is_none() {
                    deadline = Instant::now() + settle;
                }
                dropped = Some(count);
            }
            _ => {}
        }
    }
    let _ = client.disconnect().await;
    dropped.with_context(|| format!("the broker published no {TOPIC} within {FIRST_VALUE_TIMEOUT:?}"))
}
