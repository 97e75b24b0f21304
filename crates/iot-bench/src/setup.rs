//! Registers the benchmark's owner user and devices "1".."N" through storage's gRPC API (the
//! way the api does it), a few requests at a time; with `--provision`, also gives each device
//! its account on the secured broker (crate::provision).

use anyhow::Context;
use futures::{StreamExt, TryStreamExt};
use iot_proto::storage::v1::{
    CreateDeviceRequest, CreateUserRequest, GetUserRequest, get_user_request::Key,
    storage_service_client::StorageServiceClient,
};
use serde_json::json;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    storage_url: String,
    #[arg(long, default_value_t = 1000)]
    devices: usize,
    #[arg(long, default_value = "bench")]
    username: String,
    /// The owner's api password (from the environment, so that it is not on a command line).
    #[arg(long, env = "BENCH_API_PASSWORD", hide_env_values = true, default_value = "bench-password")]
    password: String,
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    #[command(flatten)]
    broker: crate::provision::BrokerArgs,
}

pub async fn run(args: Args) -> anyhow::Result<serde_json::Value> {
    let mut storage = StorageServiceClient::connect(args.storage_url.clone())
        .await
        .with_context(|| format!("connecting to storage at {}", args.storage_url))?;
    let request = CreateUserRequest {
        username: args.username.clone(),
        password: args.password.clone(),
        is_admin: false,
        only_if_first: false,
    };
    let owner_id = match storage.create_user(request).await {
        Ok(user) => user.into_inner().id,
        Err(status) if status.code() == tonic::Code::AlreadyExists => {
            storage
                .get_user(GetUserRequest { key: Some(Key::Username(args.username.clone())) })
                .await
                .context("looking up the existing user")?
                .into_inner()
                .id
        }
        Err(status) => return Err(status).context("creating the user"),
    };
    let created = futures::stream::iter(1..=args.devices)
        .map(|i| {
            let mut storage = storage.clone();
            async move {
                let request = CreateDeviceRequest {
                    device_id: i.to_string(),
                    owner_id,
                    name: format!("Bench device {i}"),
                    attributes_json: "{}".to_string(),
                };
                match storage.create_device(request).await {
                    Ok(_) => Ok(1_u64),
                    Err(status) if status.code() == tonic::Code::AlreadyExists => Ok(0),
                    Err(status) => Err(anyhow::Error::from(status).context(format!("creating device {i}"))),
                }
            }
        })
        .buffer_unordered(args.concurrency.max(1))
        .try_fold(0_u64, |acc, n| async move { Ok(acc + n) })
        .await?;
    let broker = if args.broker.provision {
        crate::provision::provision(&args.broker, args.devices).await.context("provisioning the devices on the broker")?
    } else {
        serde_json::Value::Null
    };
    Ok(json!({"owner_id": owner_id, "devices_created": created, "broker": broker}))
}
