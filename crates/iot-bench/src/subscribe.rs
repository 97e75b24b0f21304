//! A subscriber that does nothing but count: QoS 1, acknowledged on receipt by the client
//! library. Writes the running count to `--count-file` (replaced atomically) every 50 ms
//! until SIGTERM/SIGINT. On the secured broker it logs in with the measuring subscribers'
//! account (crate::provision); a refused login or subscription ends it with an error.

use std::{path::PathBuf, time::Duration};

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
}

async fn write_count(path: &PathBuf, count: u64) {
    let tmp = path.with_extension("tmp");
    if tokio::fs::write(&tmp, count.to_string()).await.is_ok() {
        let _ = tokio::fs::rename(&tmp, path).await;
    }
}

pub async fn run(args: Args) -> anyhow::Result<serde_json::Value> {
    let mut options = MqttOptions::new(format!("bench-count-{:08x}", rand::random::<u32>()), args.host, args.port);
    options.set_keep_alive(Duration::from_secs(60)).set_clean_session(true).set_max_packet_size(1 << 20, 1 << 20);
    if let Some(username) = args.username.filter(|u| !u.is_empty()) {
        options.set_credentials(username, args.password.unwrap_or_default());
    }
    let (client, mut eventloop) = AsyncClient::new(options, 1024);
    client.subscribe(args.topic.clone(), QoS::AtLeastOnce).await?;
    let mut count = 0_u64;
    let mut errors = 0_u64;
    let mut flush = tokio::time::interval(Duration::from_millis(50));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    write_count(&args.count_file, 0).await;
    loop {
        tokio::select! {
            event = eventloop.poll() => match event {
                Ok(Event::Incoming(Packet::Publish(_))) => count += 1,
                Ok(Event::Incoming(Packet::SubAck(ack))) => {
                    // A denied subscription would otherwise count nothing, silently.
                    anyhow::ensure!(
                        ack.return_codes.iter().all(|c| matches!(c, rumqttc::SubscribeReasonCode::Success(_))),
                        "the broker refused the subscription to {}",
                        args.topic
                    );
                    eprintln!("count-sub: subscribed to {}", args.topic);
                }
                Err(rumqttc::ConnectionError::ConnectionRefused(code)) => {
                    anyhow::bail!("the broker refused the login: {code:?}");
                }
                Ok(_) => {}
                Err(e) => {
                    errors += 1;
                    eprintln!("count-sub: MQTT error: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            },
            _ = flush.tick() => write_count(&args.count_file, count).await,
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    write_count(&args.count_file, count).await;
    Ok(json!({"received": count, "errors": errors}))
}
