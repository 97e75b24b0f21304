//! Broker accounts for the benchmark on the secured broker (dynamic-security plugin), created
//! over `$CONTROL/dynamic-security/v1` with the administrator account:
//!
//! - per device the same commands as the api's provisioning (services/api/src/broker.rs):
//!   role `device-{id}` allowed to publish `devices/{id}/telemetry` and to subscribe
//!   `devices/{id}/commands`, then a client with username = client id = the device id, its
//!   password and that role. The password is [`device_password`] of a per-run secret, so the
//!   load generator can compute it without a credentials file;
//! - one account for the measuring subscribers (the counting subscriber and the reference
//!   baseline's ingest): role `bench-subscriber`, subscribe `devices/+/telemetry` (also as the
//!   shared group `$share/bench-count/`), and `$SYS/broker/publish/messages/dropped`.
//!
//! Many commands go into one control message (the plugin takes a `commands` array and answers
//! them in order in one response message); every answer is checked.

use std::time::Duration;

use anyhow::{Context, bail, ensure};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use serde_json::{Value, json};

const CONTROL_TOPIC: &str = "$CONTROL/dynamic-security/v1";
const RESPONSE_TOPIC: &str = "$CONTROL/dynamic-security/v1/response";
/// The role of the measuring subscribers' account.
pub const SUBSCRIBER_ROLE: &str = "bench-subscriber";

/// A device's broker password: derived from the run's secret, so that `publish` computes the
/// same one.
pub fn device_password(secret: &str, device_id: &str) -> String {
    format!("{secret}-{device_id}")
}

/// The role that holds a device's ACLs (the api's naming).
fn device_role(device_id: &str) -> String {
    format!("device-{device_id}")
}

#[derive(Debug, clap::Args)]
pub struct BrokerArgs {
    /// Provision the devices on the broker's dynamic-security plugin (secured broker).
    #[arg(long)]
    pub provision: bool,
    #[arg(long, default_value = "127.0.0.1")]
    pub mqtt_host: String,
    #[arg(long, default_value_t = 1883)]
    pub mqtt_port: u16,
    /// Account allowed on `$CONTROL/dynamic-security/#` (the plugin's administrator).
    #[arg(long, env = "BENCH_MQTT_ADMIN_USERNAME", default_value = "admin")]
    pub admin_username: String,
    #[arg(long, env = "BENCH_MQTT_ADMIN_PASSWORD", hide_env_values = true)]
    pub admin_password: Option<String>,
    /// Secret the device passwords are derived from (`{secret}-{device id}`).
    #[arg(long, env = "BENCH_DEVICE_PASSWORD_SECRET", hide_env_values = true)]
    pub password_secret: Option<String>,
    /// Account for the measuring subscribers (count-sub, the baseline's ingest); none if unset.
    #[arg(long, env = "BENCH_SUBSCRIBER_USERNAME")]
    pub subscriber_username: Option<String>,
    #[arg(long, env = "BENCH_SUBSCRIBER_PASSWORD", hide_env_values = true)]
    pub subscriber_password: Option<String>,
    /// Devices per control message (5 commands each).
    #[arg(long, default_value_t = 50)]
    pub provision_batch: usize,
    /// Seconds to wait for the answer to one control message.
    #[arg(long, default_value_t = 60.0)]
    pub provision_timeout: f64,
}

/// One command and the errors its answer may carry without failing (what may already exist).
struct Command {
    body: Value,
    tolerated: &'static [&'static str],
}

/// The api's provisioning of one device, command for command.
fn device_commands(device_id: &str, password: &str) -> Vec<Command> {
    let role = device_role(device_id);
    vec![
        Command {
            body: json!({"command": "createRole", "rolename": role, "textname": format!("ACLs of device {device_id}")}),
            tolerated: &["Role already exists"],
        },
        Command {
            body: json!({"command": "addRoleACL", "rolename": role, "acltype": "publishClientSend",
                         "topic": format!("devices/{device_id}/telemetry"), "allow": true}),
            tolerated: &["ACL with this topic already exists"],
        },
        Command {
            body: json!({"command": "addRoleACL", "rolename": role, "acltype": "subscribePattern",
                         "topic": format!("devices/{device_id}/commands"), "allow": true}),
            tolerated: &["ACL with this topic already exists"],
        },
        Command { body: json!({"command": "deleteClient", "username": device_id}), tolerated: &["Client not found"] },
        Command {
            body: json!({"command": "createClient", "username": device_id, "password": password, "clientid": device_id,
                         "textname": format!("device {device_id}"), "roles": [{"rolename": role}]}),
            tolerated: &[],
        },
    ]
}

fn subscriber_commands(username: &str, password: &str) -> Vec<Command> {
    let acl = |acltype: &str, topic: &str| {
        json!({"command": "addRoleACL", "rolename": SUBSCRIBER_ROLE, "acltype": acltype,
               "topic": topic, "allow": true})
    };
    vec![
        Command {
            body: json!({"command": "createRole", "rolename": SUBSCRIBER_ROLE,
                         "textname": "scripts/bench: counting subscriber and the reference baseline's ingest"}),
            tolerated: &["Role already exists"],
        },
        Command { body: acl("subscribePattern", "devices/+/telemetry"), tolerated: &["ACL with this topic already exists"] },
        // count-sub --connections K: the subscribe check sees the whole $share/... filter.
        Command {
            body: acl("subscribePattern", "$share/bench-count/devices/+/telemetry"),
            tolerated: &["ACL with this topic already exists"],
        },
        Command { body: acl("publishClientReceive", "devices/+/telemetry"), tolerated: &["ACL with this topic already exists"] },
        // iot-bench broker-dropped: the broker's own count of what it dropped.
        Command { body: acl("subscribeLiteral", crate::broker_dropped::TOPIC), tolerated: &["ACL with this topic already exists"] },
        Command {
            body: acl("publishClientReceive", crate::broker_dropped::TOPIC),
            tolerated: &["ACL with this topic already exists"],
        },
        Command { body: json!({"command": "deleteClient", "username": username}), tolerated: &["Client not found"] },
        Command {
            body: json!({"command": "createClient", "username": username, "password": password,
                         "textname": "scripts/bench measuring subscriber", "roles": [{"rolename": SUBSCRIBER_ROLE}]}),
            tolerated: &[],
        },
    ]
}

/// `Ok` when every answer succeeded or failed with a tolerated error; checks that the answers
/// are this batch's (correlation data) and complete.
fn check_responses(batch: &[Command], correlation: &str, message: &Value) -> anyhow::Result<()> {
    let responses = message["responses"].as_array().context("control response without a responses array")?;
    ensure!(
        responses.len() == batch.len(),
        "{} answers to {} commands ({correlation})",
        responses.len(),
        batch.len()
    );
    for (command, response) in batch.iter().zip(responses) {
        let name = command.body["command"].as_str().unwrap_or("?");
        ensure!(
            response["command"].as_str() == Some(name),
            "answer {:?} in the place of command {name} ({correlation})",
            response["command"]
        );
        ensure!(response["correlationData"].as_str() == Some(correlation), "answer of another request");
        if let Some(error) = response["error"].as_str()
            && !command.tolerated.contains(&error)
        {
            let who = command.body["username"].as_str().or(command.body["rolename"].as_str()).unwrap_or("?");
            bail!("the broker refused {name} for {who}: {error}");
        }
    }
    Ok(())
}

/// The administrator's control connection.
struct Control {
    client: AsyncClient,
    eventloop: EventLoop,
    timeout: Duration,
}

impl Control {
    /// Connects and subscribes to the response topic (an error if the login or the
    /// subscription is refused).
    async fn connect(args: &BrokerArgs) -> anyhow::Result<Self> {
        let password = args.admin_password.clone().context("--admin-password (BENCH_MQTT_ADMIN_PASSWORD) is needed")?;
        let client_id = format!("bench-provisioner-{:08x}", rand::random::<u32>());
        let mut options = MqttOptions::new(client_id, args.mqtt_host.clone(), args.mqtt_port);
        // Answers to a batch of commands are larger than rumqttc's 10 KiB default.
        options.set_keep_alive(Duration::from_secs(60)).set_clean_session(true).set_max_packet_size(1 << 20, 1 << 20);
        options.set_credentials(args.admin_username.clone(), password);
        let (client, eventloop) = AsyncClient::new(options, 16);
        let mut control = Self { client, eventloop, timeout: Duration::from_secs_f64(args.provision_timeout.max(1.0)) };
        control.client.subscribe(RESPONSE_TOPIC, QoS::AtLeastOnce).await?;
        let deadline = tokio::time::Instant::now() + control.timeout;
        loop {
            let event = tokio::time::timeout_at(deadline, control.eventloop.poll())
                .await
                .context("no answer from the broker to the provisioning login")?
                .with_context(|| format!("provisioning login as {} at {}:{}", args.admin_username, args.mqtt_host, args.mqtt_port))?;
            if let Event::Incoming(Packet::SubAck(ack)) = event {
                ensure!(
                    crate::subscribe::all_granted(&ack),
                    "the broker refused {} the subscription to {RESPONSE_TOPIC}",
                    args.admin_username
                );
                return Ok(control);
            }
        }
    }

    /// Sends the commands in one control message and checks every answer.
    async fn run(&mut self, mut batch: Vec<Command>, correlation: &str) -> anyhow::Result<()> {
        for command in &mut batch {
            command.body["correlationData"] = Value::String(correlation.to_string());
        }
        let bodies: Vec<&Value> = batch.iter().map(|c| &c.body).collect();
        let payload = json!({ "commands": bodies }).to_string();
        self.client.publish(CONTROL_TOPIC, QoS::AtLeastOnce, false, payload).await?;
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            let event = tokio::time::timeout_at(deadline, self.eventloop.poll())
                .await
                .with_context(|| format!("no answer from the broker within {:?} ({correlation})", self.timeout))?
                .context("the provisioning connection failed")?;
            if let Event::Incoming(Packet::Publish(publish)) = event
                && publish.topic == RESPONSE_TOPIC
            {
                let message: Value = serde_json::from_slice(&publish.payload).context("unreadable control response")?;
                // Answers to other requests (none in a private broker) are not this batch's.
                if message["responses"][0]["correlationData"].as_str() != Some(correlation) {
                    continue;
                }
                return check_responses(&batch, correlation, &message);
            }
        }
    }

    async fn close(mut self) {
        let _ = self.client.disconnect().await;
        // Let the DISCONNECT go out.
        let _ = tokio::time::timeout(Duration::from_secs(1), self.eventloop.poll()).await;
    }
}

/// Provisions devices "1".."N" and the subscribers' account; returns what was done (no
/// passwords).
pub async fn provision(args: &BrokerArgs, devices: usize) -> anyhow::Result<Value> {
    let secret = args.password_secret.clone().context("--password-secret (BENCH_DEVICE_PASSWORD_SECRET) is needed")?;
    ensure!(!secret.is_empty(), "--password-secret is empty");
    let started = std::time::Instant::now();
    let mut control = Control::connect(args).await?;
    let run_tag = format!("{:08x}", rand::random::<u32>());
    let per_message = args.provision_batch.max(1);
    let mut messages = 0_u64;
    for (b, first) in (1..=devices).step_by(per_message).enumerate() {
        let last = (first + per_message - 1).min(devices);
        let batch: Vec<Command> = (first..=last)
            .flat_map(|i| {
                let id = i.to_string();
                device_commands(&id, &device_password(&secret, &id))
            })
            .collect();
        control.run(batch, &format!("bench-{run_tag}-{b}")).await.with_context(|| format!("devices {first}..{last}"))?;
        messages += 1;
    }
    let subscriber = match (&args.subscriber_username, &args.subscriber_password) {
        (Some(user), Some(password)) if !user.is_empty() => {
            control.run(subscriber_commands(user, password), &format!("bench-{run_tag}-subscriber")).await?;
            messages += 1;
            Some(user.clone())
        }
        (Some(_), None) => bail!("--subscriber-username without --subscriber-password"),
        _ => None,
    };
    control.close().await;
    Ok(json!({
        "devices": devices,
        "control_messages": messages,
        "devices_per_message": per_message,
        "subscriber_account": subscriber,
        "seconds": crate::stats::round2(started.elapsed().as_secs_f64()),
    }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn device_commands_match_the_api_provisioning() {
        let commands = device_commands("42", "s-42");
        let names: Vec<&str> = commands.iter().map(|c| c.body["command"].as_str().unwrap()).collect();
        assert_eq!(names, ["createRole", "addRoleACL", "addRoleACL", "deleteClient", "createClient"]);
        assert_eq!(commands[1].body["topic"], "devices/42/telemetry");
        assert_eq!(commands[1].body["acltype"], "publishClientSend");
        assert_eq!(commands[2].body["topic"], "devices/42/commands");
        assert_eq!(commands[4].body["clientid"], "42");
        assert_eq!(commands[4].body["roles"][0]["rolename"], "device-42");
        assert_eq!(device_password("s", "42"), "s-42");
    }

    #[test]
    fn untolerated_errors_and_short_answers_fail() {
        let batch = device_commands("7", "p");
        let answer = |errors: [Option<&str>; 5]| {
            let names = ["createRole", "addRoleACL", "addRoleACL", "deleteClient", "createClient"];
            let responses: Vec<Value> = names
                .iter()
                .zip(errors)
                .map(|(n, e)| match e {
                    Some(e) => json!({"command": n, "error": e, "correlationData": "c"}),
                    None => json!({"command": n, "correlationData": "c"}),
                })
                .collect();
            json!({ "responses": responses })
        };
        assert!(check_responses(&batch, "c", &answer([None, None, None, Some("Client not found"), None])).is_ok());
        assert!(check_responses(&batch, "c", &answer([Some("Role already exists"); 5])).is_err());
        let mut short = answer([None; 5]);
        short["responses"].as_array_mut().unwrap().pop();
        assert!(check_responses(&batch, "c", &short).is_err());
        assert!(check_responses(&batch, "other", &answer([None; 5])).is_err());
    }
}
