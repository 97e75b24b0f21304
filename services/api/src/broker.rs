//! Per-device MQTT credentials.
//!
//! NOT ENFORCED YET: broker-side provisioning (Mosquitto dynamic security: create the client
//! with this password and a role that may publish only to its own telemetry topic) is issue 6.
//! Until then these functions generate and hand out credentials but the broker does not know
//! them, and every API response says so with `"broker_enforced": false`. Issue 6 replaces the
//! bodies of these two functions; their callers already treat an error as a failed request.

use crate::error::ApiResult;

/// What happened at the broker for a device's credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerProvisioning {
    /// The broker now accepts exactly this password for the device (issue 6).
    Enforced,
    /// No broker provisioning is configured: the credentials are not checked by the broker.
    NotEnforced,
}

impl BrokerProvisioning {
    pub fn enforced(self) -> bool {
        self == Self::Enforced
    }
}

/// Makes the broker accept `password` for `device_id` (replacing an earlier one), allowed to
/// publish only to `devices/{device_id}/telemetry`.
pub async fn provision_device_credentials(device_id: &str, _password: &str) -> ApiResult<BrokerProvisioning> {
    tracing::warn!(device_id, "broker credentials are not provisioned (issue 6): the broker does not enforce them");
    Ok(BrokerProvisioning::NotEnforced)
}

/// Removes the device's broker account, so that its credentials stop working.
pub async fn revoke_device_credentials(device_id: &str) -> ApiResult<BrokerProvisioning> {
    tracing::debug!(device_id, "no broker credentials to revoke (issue 6)");
    Ok(BrokerProvisioning::NotEnforced)
}
