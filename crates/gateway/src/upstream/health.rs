//! Active health checks: a `GET` of the configured path on every member at each interval;
//! a 2xx or 3xx answer in time keeps the member in, anything else takes it out.

use std::sync::Arc;

use http::{Request, header};
use kakuremichi_config::gateway::HealthCheck;
use tokio_util::sync::CancellationToken;

use super::pool::HttpClient;
use super::select::UpstreamSet;
use crate::body::UpstreamBody;

/// Runs until `cancel` fires (the route was replaced by a reload, or the gateway stops).
pub fn spawn(
    set: Arc<UpstreamSet>,
    client: HttpClient,
    check: HealthCheck,
    host_header: Option<http::HeaderValue>,
    cancel: CancellationToken,
) {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(check.interval.0);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = ticker.tick() => {}
            }
            for (index, member) in set.members().iter().enumerate() {
                let uri = format!("{}{}{}", member.origin, member.url.base_path, check.path);
                let host = host_header
                    .clone()
                    .or_else(|| http::HeaderValue::from_str(&member.url.authority()).ok());
                let mut builder =
                    Request::get(uri).header(header::USER_AGENT, "kakuremichi-health");
                if let Some(h) = host {
                    builder = builder.header(header::HOST, h);
                }
                let Ok(request) = builder.body(UpstreamBody::empty()) else {
                    set.set_active_health(index, false);
                    continue;
                };
                let outcome = tokio::time::timeout(check.timeout.0, client.request(request)).await;
                let healthy = matches!(&outcome, Ok(Ok(r)) if r.status().is_success() || r.status().is_redirection());
                if !healthy {
                    tracing::debug!(upstream = %member.label, path = %check.path, "health check failed");
                }
                set.set_active_health(index, healthy);
            }
        }
    });
}
