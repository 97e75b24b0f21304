//! Per-device MQTT credentials, provisioned in Mosquitto's dynamic-security plugin.
//!
//! With a provisioning account configured (`API_MQTT_ADMIN_USERNAME`/`_PASSWORD`, an account
//! whose role may use `$CONTROL/dynamic-security/#`), the api keeps one MQTT connection for
//! commands to `$CONTROL/dynamic-security/v1` and reads the answers on
//! `$CONTROL/dynamic-security/v1/response`, matched by `correlationData`. Each device gets:
//!
//! - a role `device-{id}` allowed to publish to `devices/{id}/telemetry` and to subscribe to
//!   `devices/{id}/commands`, and nothing else (dynsec's defaults deny other publishes and
//!   subscriptions). One role per device because the plugin of Mosquitto 2.0 does not expand
//!   `%u`/`%c` in ACL topics (checked with 2.0.11: such an ACL matches nothing);
//! - a client with username = client id = the device id, that role, and the password.
//!
//! Provisioning is idempotent: it (re)creates the role and its ACLs, deletes the client if it
//! exists and creates it again with the new password, all in one control message, which the
//! broker runs in order. Deleting a client (or changing its password) also disconnects a
//! device connected with it (Mosquitto 2.0.11: "disconnected by administrative action"), so
//! rotated and revoked credentials stop working at once, not at the next reconnect.
//!
//! A broker account that is not a device's (the admin, the ingest or api service accounts) is
//! never touched: a device id equal to such a name is refused with 409.
//!
//! Commands go out at QoS 0 and only while the connection is up and subscribed to the
//! response topic: a command is then either executed while the request waits, or never (a
//! QoS 1 command could be re-sent after a reconnect, long after its request had failed and
//! been rolled back). Without a provisioning account, the functions report
//! [`BrokerProvisioning::NotEnforced`] and the api says `"broker_enforced": false`.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use iot_runtime::CancellationToken;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, SubscribeReasonCode};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::oneshot;

use crate::{config::Config, error::ApiError};

pub const CONTROL_TOPIC: &str = "$CONTROL/dynamic-security/v1";
pub const RESPONSE_TOPIC: &str = "$CONTROL/dynamic-security/v1/response";

/// What happened at the broker for a device's credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerProvisioning {
    /// The broker now accepts exactly this password for the device (or, after a revocation,
    /// none).
    Enforced,
    /// No provisioning account is configured: the broker does not check the credentials.
    NotEnforced,
}

impl BrokerProvisioning {
    pub fn enforced(self) -> bool {
        self == Self::Enforced
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error(
        "the MQTT broker is not reachable for device provisioning (not connected, or the provisioning account was refused)"
    )]
    NotConnected,
    #[error("the MQTT broker did not answer a provisioning request within {0:?}")]
    Timeout(Duration),
    #[error("the connection to the MQTT broker was lost during a provisioning request")]
    ConnectionLost,
    #[error("device id {0:?} is the name of a broker account that is not a device's")]
    ReservedName(String),
    #[error("the broker refused {command}: {error}")]
    Rejected { command: String, error: String },
    #[error("unexpected answer from the broker's dynamic-security plugin: {0}")]
    BadResponse(String),
}

impl From<BrokerError> for ApiError {
    fn from(error: BrokerError) -> Self {
        match error {
            BrokerError::NotConnected | BrokerError::ConnectionLost => Self::Unavailable(error.to_string()),
            // A connected broker that does not answer: the same 504 as a storage deadline.
            BrokerError::Timeout(_) => Self::Timeout,
            BrokerError::ReservedName(_) => Self::Conflict(error.to_string()),
            BrokerError::Rejected { .. } | BrokerError::BadResponse(_) => Self::Unexpected(anyhow::Error::new(error)),
        }
    }
}

/// One answer of the plugin, in the order of the commands sent.
#[derive(Debug, Clone, Deserialize)]
pub struct CommandResponse {
    pub command: String,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default, rename = "correlationData")]
    pub correlation_data: Option<String>,
    #[serde(default)]
    pub data: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct ResponseMessage {
    responses: Vec<CommandResponse>,
}

type Waiters = Arc<Mutex<HashMap<String, oneshot::Sender<Vec<CommandResponse>>>>>;

/// The api's handle on the broker's dynamic security. Cheap to clone.
#[derive(Clone)]
pub struct BrokerAdmin {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    client: AsyncClient,
    waiters: Waiters,
    /// Connected and subscribed to the response topic: commands may be sent.
    ready: Arc<AtomicBool>,
    timeout: Duration,
}

/// The role that holds a device's ACLs.
pub fn device_role(device_id: &str) -> String {
    format!("device-{device_id}")
}

impl BrokerAdmin {
    /// No provisioning: credentials are handed out but not enforced.
    pub fn disabled() -> Self {
        Self { inner: None }
    }

    /// Connects with the provisioning account when one is configured; the connection is kept
    /// (and re-established) until `shutdown`. Returns the handle and its task, if any.
    /// Registers `api_broker_provisioning_connected` (1 while commands can be sent).
    pub fn start(
        config: &Config,
        registry: &prometheus::Registry,
        shutdown: CancellationToken,
    ) -> anyhow::Result<(Self, Option<tokio::task::JoinHandle<()>>)> {
        let connected = prometheus::IntGauge::new(
            "api_broker_provisioning_connected",
            "1 while the device-provisioning connection to the broker is up (0 when down or not configured)",
        )?;
        registry.register(Box::new(connected.clone()))?;
        let Some(username) = config.broker.mqtt_admin_username.clone().filter(|u| !u.is_empty()) else {
            tracing::warn!(
                "no broker provisioning account (API_MQTT_ADMIN_USERNAME): device credentials are not enforced by the broker"
            );
            return Ok((Self::disabled(), None));
        };
        let client_id = format!("iot-api-provisioner-{}", crate::random_token(6));
        let mut options = MqttOptions::new(client_id, config.mqtt_host.clone(), config.mqtt_port);
        options.set_keep_alive(Duration::from_secs(30));
        options.set_clean_session(true);
        options.set_credentials(username.clone(), config.broker.mqtt_admin_password.clone().unwrap_or_default());
        config.broker.tls().apply(&mut options)?;
        let (client, eventloop) = AsyncClient::new(options, 64);
        let inner = Arc::new(Inner {
            client: client.clone(),
            waiters: Arc::default(),
            ready: Arc::default(),
            timeout: config.broker.admin_timeout(),
        });
        let task = tokio::spawn(run_connection(
            client,
            eventloop,
            inner.waiters.clone(),
            inner.ready.clone(),
            connected,
            username,
            shutdown,
        ));
        Ok((Self { inner: Some(inner) }, Some(task)))
    }

    pub fn enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// Makes the broker accept `password` for `device_id` (replacing an earlier one and
    /// disconnecting a client logged in with it), allowed to publish only to
    /// `devices/{device_id}/telemetry` and to subscribe only to `devices/{device_id}/commands`.
    pub async fn provision(&self, device_id: &str, password: &str) -> Result<BrokerProvisioning, BrokerError> {
        let Some(inner) = &self.inner else {
            tracing::warn!(
                device_id,
                "no broker provisioning account: the broker does not enforce this device's credentials"
            );
            return Ok(BrokerProvisioning::NotEnforced);
        };
        inner.ensure_device_account_or_absent(device_id).await?;
        let role = device_role(device_id);
        let responses = inner
            .request(vec![
                json!({"command": "createRole", "rolename": role, "textname": format!("ACLs of device {device_id}")}),
                json!({"command": "addRoleACL", "rolename": role, "acltype": "publishClientSend",
                       "topic": format!("devices/{device_id}/telemetry"), "allow": true}),
                json!({"command": "addRoleACL", "rolename": role, "acltype": "subscribePattern",
                       "topic": format!("devices/{device_id}/commands"), "allow": true}),
                json!({"command": "deleteClient", "username": device_id}),
                json!({"command": "createClient", "username": device_id, "password": password, "clientid": device_id,
                       "textname": format!("device {device_id}"), "roles": [{"rolename": role}]}),
            ])
            .await?;
        // What may already exist is fine (provisioning is idempotent); the new client must exist.
        check(&responses, 0, &["Role already exists"])?;
        check(&responses, 1, &["ACL with this topic already exists"])?;
        check(&responses, 2, &["ACL with this topic already exists"])?;
        check(&responses, 3, &["Client not found"])?;
        check(&responses, 4, &[])?;
        tracing::info!(device_id, "broker credentials provisioned");
        Ok(BrokerProvisioning::Enforced)
    }

    /// Removes the device's broker account and role (disconnecting it if connected). Revoking
    /// what does not exist succeeds.
    pub async fn revoke(&self, device_id: &str) -> Result<BrokerProvisioning, BrokerError> {
        let Some(inner) = &self.inner else {
            tracing::debug!(device_id, "no broker provisioning account: no credentials to revoke");
            return Ok(BrokerProvisioning::NotEnforced);
        };
        match inner.ensure_device_account_or_absent(device_id).await {
            Ok(()) => {}
            Err(BrokerError::ReservedName(_)) => {
                // Created while provisioning was off; its name is a service account's, which
                // must survive the device.
                tracing::warn!(device_id, "device id names a non-device broker account; that account is left alone");
                return Ok(BrokerProvisioning::Enforced);
            }
            Err(other) => return Err(other),
        }
        let responses = inner
            .request(vec![
                json!({"command": "deleteClient", "username": device_id}),
                json!({"command": "deleteRole", "rolename": device_role(device_id)}),
            ])
            .await?;
        check(&responses, 0, &["Client not found"])?;
        check(&responses, 1, &["Role not found"])?;
        tracing::info!(device_id, "broker credentials revoked");
        Ok(BrokerProvisioning::Enforced)
    }
}

/// `Ok` when the `index`th response succeeded or failed with one of the `tolerated` errors.
fn check(responses: &[CommandResponse], index: usize, tolerated: &[&str]) -> Result<(), BrokerError> {
    let response = responses.get(index).ok_or_else(|| {
        BrokerError::BadResponse(format!("{} responses, expected at least {}", responses.len(), index + 1))
    })?;
    match &response.error {
        None => Ok(()),
        Some(error) if tolerated.contains(&error.as_str()) => Ok(()),
        Some(error) => Err(BrokerError::Rejected { command: response.command.clone(), error: error.clone() }),
    }
}

impl Inner {
    /// `Ok` when no broker account has this name, or it is this device's account (it holds the
    /// device's role); `ReservedName` for any other account.
    async fn ensure_device_account_or_absent(&self, device_id: &str) -> Result<(), BrokerError> {
        let responses = self.request(vec![json!({"command": "getClient", "username": device_id})]).await?;
        let response = responses.first().ok_or_else(|| BrokerError::BadResponse("no response to getClient".into()))?;
        match response.error.as_deref() {
            Some("Client not found") => return Ok(()),
            Some(error) => {
                return Err(BrokerError::Rejected { command: "getClient".into(), error: error.to_string() });
            }
            None => {}
        }
        let role = device_role(device_id);
        let roles = response
            .data
            .as_ref()
            .and_then(|d| d["client"]["roles"].as_array())
            .ok_or_else(|| BrokerError::BadResponse("getClient without data.client.roles".into()))?;
        if roles.iter().any(|r| r["rolename"].as_str() == Some(role.as_str())) {
            Ok(())
        } else {
            Err(BrokerError::ReservedName(device_id.to_string()))
        }
    }

    /// Sends `commands` in one control message and waits for their responses.
    async fn request(&self, mut commands: Vec<Value>) -> Result<Vec<CommandResponse>, BrokerError> {
        if !self.ready.load(Ordering::Acquire) {
            return Err(BrokerError::NotConnected);
        }
        let correlation = crate::random_token(12);
        for command in &mut commands {
            command["correlationData"] = Value::String(correlation.clone());
        }
        let (sender, receiver) = oneshot::channel();
        lock(&self.waiters).insert(correlation.clone(), sender);
        let _guard = WaiterGuard { waiters: &self.waiters, correlation: &correlation };
        let payload = json!({ "commands": commands }).to_string();
        // try_publish: a full request queue means the connection is stuck; fail now.
        self.client
            .try_publish(CONTROL_TOPIC, QoS::AtMostOnce, false, payload)
            .map_err(|_| BrokerError::NotConnected)?;
        match tokio::time::timeout(self.timeout, receiver).await {
            Ok(Ok(responses)) => Ok(responses),
            Ok(Err(_)) => Err(BrokerError::ConnectionLost),
            Err(_) => Err(BrokerError::Timeout(self.timeout)),
        }
    }
}

/// Removes a request's waiter however the request ends (answer, timeout, cancelled request).
struct WaiterGuard<'a> {
    waiters: &'a Waiters,
    correlation: &'a str,
}

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        lock(self.waiters).remove(self.correlation);
    }
}

fn lock(waiters: &Waiters) -> std::sync::MutexGuard<'_, HashMap<String, oneshot::Sender<Vec<CommandResponse>>>> {
    // The map stays consistent even if a holder panicked: each operation is one insert/remove.
    waiters.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The provisioning connection: subscribes to the response topic after every (re)connect and
/// hands each response message to the request waiting for its correlation data.
async fn run_connection(
    client: AsyncClient,
    mut eventloop: rumqttc::EventLoop,
    waiters: Waiters,
    ready: Arc<AtomicBool>,
    connected: prometheus::IntGauge,
    username: String,
    shutdown: CancellationToken,
) {
    let mut refused_logged = false;
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => break,
            event = eventloop.poll() => event,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                refused_logged = false;
                // Clean session: subscribe again on every connection; ready only after SUBACK.
                if let Err(error) = client.try_subscribe(RESPONSE_TOPIC, QoS::AtMostOnce) {
                    tracing::warn!(%error, "broker provisioning: subscribe failed");
                }
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                if ack.return_codes.iter().all(|c| matches!(c, SubscribeReasonCode::Success(_))) {
                    ready.store(true, Ordering::Release);
                    connected.set(1);
                    tracing::info!(account = %username, "broker provisioning: connected");
                } else {
                    tracing::error!(
                        account = %username,
                        "broker provisioning: the broker refused the subscription to {RESPONSE_TOPIC}; the account needs a role allowed on $CONTROL/dynamic-security/#"
                    );
                }
            }
            Ok(Event::Incoming(Packet::Publish(publish))) if publish.topic == RESPONSE_TOPIC => {
                match serde_json::from_slice::<ResponseMessage>(&publish.payload) {
                    Ok(message) => {
                        let correlation = message.responses.first().and_then(|r| r.correlation_data.clone());
                        let waiter = correlation.and_then(|c| lock(&waiters).remove(&c));
                        // Responses to other api replicas' requests arrive here too: the plugin
                        // publishes them to every subscriber of the response topic.
                        if let Some(waiter) = waiter {
                            let _ = waiter.send(message.responses);
                        }
                    }
                    Err(error) => tracing::warn!(%error, "broker provisioning: unreadable response"),
                }
            }
            Ok(_) => {}
            Err(error) => {
                ready.store(false, Ordering::Release);
                connected.set(0);
                // Requests in flight cannot be answered on a new connection: fail them now.
                lock(&waiters).clear();
                if let rumqttc::ConnectionError::ConnectionRefused(code) = &error {
                    if !refused_logged {
                        tracing::error!(account = %username, ?code, "broker provisioning: login refused (API_MQTT_ADMIN_USERNAME/PASSWORD)");
                        refused_logged = true;
                    }
                } else {
                    tracing::warn!(%error, "broker provisioning: MQTT connection error; retrying");
                }
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }
    ready.store(false, Ordering::Release);
    connected.set(0);
    let _ = client.try_disconnect();
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn responses(text: &str) -> Vec<CommandResponse> {
        serde_json::from_str::<ResponseMessage>(text).unwrap().responses
    }

    #[test]
    fn tolerated_errors_pass_others_fail() {
        // As Mosquitto 2.0.11 answers a repeated provisioning.
        let r = responses(
            r#"{"responses":[{"command":"createRole","error":"Role already exists","correlationData":"x"},
                {"command":"createClient","error":"Client already exists","correlationData":"x"}]}"#,
        );
        assert!(check(&r, 0, &["Role already exists"]).is_ok());
        assert!(matches!(check(&r, 1, &[]), Err(BrokerError::Rejected { .. })));
        assert!(matches!(check(&r, 2, &[]), Err(BrokerError::BadResponse(_))));
    }

    #[test]
    fn broker_errors_map_to_api_statuses() {
        use actix_web::ResponseError;
        assert_eq!(ApiError::from(BrokerError::NotConnected).status_code(), 503);
        assert_eq!(ApiError::from(BrokerError::ReservedName("admin".into())).status_code(), 409);
        assert_eq!(ApiError::from(BrokerError::Timeout(Duration::from_secs(1))).status_code(), 504);
    }
}
