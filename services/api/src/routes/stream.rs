//! `GET /api/v1/devices/{id}/stream`: Server-Sent Events fed by the process-wide MQTT
//! subscription (see `live.rs`), never by polling storage.

use std::time::Duration;

use actix_web::{HttpRequest, HttpResponse, http::header, web};
use prometheus::IntGauge;
use tokio::sync::broadcast::error::RecvError;

use crate::{
    auth::CurrentSession, error::ApiResult, negotiate::negotiate_request, routes::devices::owned_device, state::AppState,
};

/// Comment lines at this interval keep proxies and load balancers from closing an idle stream.
pub const HEARTBEAT: Duration = Duration::from_secs(15);

struct ClientGauge(IntGauge);

impl ClientGauge {
    fn new(gauge: IntGauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for ClientGauge {
    fn drop(&mut self) {
        self.0.dec();
    }
}

pub async fn stream(
    req: HttpRequest,
    state: web::Data<AppState>,
    session: CurrentSession,
    path: web::Path<String>,
) -> ApiResult<HttpResponse> {
    negotiate_request(&req, &["text/event-stream"])?;
    let device = owned_device(&state, &session, &path).await?;
    let device_id = device.device_id;
    let receiver = state.live.subscribe();
    let gauge = ClientGauge::new(state.metrics.sse_clients.clone());
    let shutdown = state.shutdown.clone();
    let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + HEARTBEAT, HEARTBEAT);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let opening = web::Bytes::from(format!("retry: 3000\n: live readings of {device_id}\n\n"));
    let events = futures::stream::unfold(
        (receiver, heartbeat, gauge, device_id, shutdown),
        |(mut receiver, mut heartbeat, gauge, device_id, shutdown)| async move {
            let chunk = loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return None,
                    _ = heartbeat.tick() => break web::Bytes::from_static(b": keepalive\n\n"),
                    message = receiver.recv() => match message {
                        Ok(reading) if reading.device_id == device_id => {
                            let data = serde_json::to_string(&*reading).unwrap_or_default();
                            break web::Bytes::from(format!("event: reading\nid: {}\ndata: {data}\n\n", reading.ts_us));
                        }
                        Ok(_) => continue,
                        Err(RecvError::Lagged(skipped)) => {
                            break web::Bytes::from(format!("event: lagged\ndata: {{\"skipped\":{skipped}}}\n\n"));
                        }
                        Err(RecvError::Closed) => return None,
                    },
                }
            };
            Some((Ok::<_, actix_web::Error>(chunk), (receiver, heartbeat, gauge, device_id, shutdown)))
        },
    );
    let body = futures::stream::once(async move { Ok(opening) }).chain(events);
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        // The compression middleware would buffer events; nginx would too without this.
        .insert_header((header::CONTENT_ENCODING, "identity"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(body))
}

use futures::StreamExt as _;
