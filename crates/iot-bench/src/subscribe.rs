//! A subscriber that does nothing but count: QoS 1, acknowledged on receipt by the client
//! library. Writes the running count to `--count-file` (replaced atomically) every 50 ms
//! until SIGTERM/SIGINT. On the secured broker it logs in with the measuring subscribers'
//! account (crate::provision); a refused login or subscription ends it with an error.
//!
//! With `--connections K` (> 1) it opens K connections in one shared subscription, the way an
//! ingest replica spreads its consumption, so that the ceiling is measured with the same
//! number of consumer connections as ingest.

use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::json;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 1883)]
    port: u16,
    #[arg(long, default_value = "devices/+/telemetry")]
    topic: String,
    #[arg(long)]
    count_file: PathBuf,
    #[arg(long, env = "BENCH_SUBSCRIBER_USERNAME")]
    username: Option<String>,
    #[arg(long, env = "BENCH_SUBSCRIBER_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    /// Consumer connections; more than one subscribe as the shared group `bench-count`.
    #[arg(long, default_value_t = 1)]
    connections: usize,
}

/// Whether the broker granted every filter of a SUBSCRIBE (a refusal is otherwise silent: the
/// client just receives nothing).
pub fn all_granted(ack: &rumqttc::SubAck) -> bool {
    ack.return_codes.iter().all(|c| matches!(c, rumqttc::SubscribeReasonCode::Success(_)))
}

async fn write_count(path: &PathBuf, count: u64) {
    let tmp = path.with_extension("tmp");
    if tokio::fs::write(&tmp, count.to_string()).await.is_ok() {
        let _ = tokio::fs::rename(&tmp, path).await;
    }
}

pub async fn run(args: Args) -> anyhow::Result<serde_json::Value> {
    anyhow::ensure!(args.connections >= 1, "--connections must be at least 1");
    let topic = if args.connections > 1 { format!("$share/bench-count/{}", args.topic) } else { args.topic.clone() };
    let count = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let run_id = rand::random::<u32>();
    let mut consumers = tokio::task::JoinSet::new();
    for c in 0..args.connections {
        let mut options = MqttOptions::new(format!("bench-count-{run_id:08x}-{c}"), args.host.clone(), args.port);
        options.set_keep_alive(Duration::from_secs(60)).set_clean_session(true).set_max_packet_size(1 << 20, 1 << 20);
        if let Some(username) = args.username.as_deref().filter(|u| !u.is_empty()) {
            options.set_credentials(username, args.password.clone().unwrap_or_default());
        }
        let (client, eventloop) = AsyncClient::new(options, 1024);
        client.subscribe(topic.clone(), QoS::AtLeastOnce).await?;
        consumers.spawn(consume(client, eventloop, topic.clone(), count.clone(), errors.clone()));
    }
    let mut flush = tokio::time::interval(Duration::from_millis(50));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    write_count(&args.count_file, 0).await;
    loop {
        tokio::select! {
            ended = consumers.join_next() => match ended {
                Some(Ok(Err(e))) => return Err(e),
                Some(Err(e)) => anyhow::bail!("a consumer task failed: {e}"),
                Some(Ok(Ok(()))) | None => anyhow::bail!("a consumer stopped"),
            },
            _ = flush.tick() => write_count(&args.count_file, count.load(Ordering::Relaxed)).await,
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    let count = count.load(Ordering::Relaxed);
    write_count(&args.count_file, count).await;
    Ok(json!({"received": count, "errors": errors.load(Ordering::Relaxed), "connections": args.connections}))
}

/// One connection's event loop: counts publishes until an unrecoverable error.
async fn consume(
    // Kept alive: dropping the client would end the event loop's request channel.
    _client: AsyncClient,
    mut eventloop: rumqttc::EventLoop,
    topic: String,
    count: Arc<AtomicU64>,
    errors: Arc<AtomicU64>,
) -> anyhow::Result<()> {
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::Publish(_))) => {
                count.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                // A denied subscription would otherwise count nothing, silently.
                anyhow::ensure!(
                    all_granted(&ack),
                    "the broker refused the subscription to {topic}"
                );
                eprintln!("count-sub: subscribed to {topic}");
            }
            Err(rumqttc::ConnectionError::ConnectionRefused(code)) => {
                anyhow::bail!("the broker refused the login: {code:?}");
            }
            Ok(_) => {}
            Err(e) => {
                errors.fetch_add(1, Ordering::Relaxed);
                eprintln!("count-sub: MQTT error: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}
