//! One access-log line per request, written when the response body is finished (or the
//! client went away), together with the request metrics.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use http::{HeaderValue, Method};
use kakuremichi_telemetry::ACCESS_TARGET;

use crate::metrics::RouteMetrics;

/// What is known about a request by the time its response starts.
pub struct AccessRecord {
    pub start: Instant,
    pub request_id: HeaderValue,
    pub client_ip: IpAddr,
    pub method: Method,
    pub host: String,
    pub path: String,
    pub route: Option<Arc<str>>,
    pub upstream: Option<Arc<str>>,
    pub status: u16,
    pub error: Option<&'static str>,
    pub bytes_in: Arc<AtomicU64>,
    pub metrics: Arc<RouteMetrics>,
    /// Seconds from the request head to the response head.
    pub head_seconds: f64,
    /// Name of the caller's API key (never the key).
    pub api_key: Option<String>,
    /// `sub` of the caller's token.
    pub subject: Option<String>,
}

impl AccessRecord {
    /// Writes the line and records the metrics. `bytes_out` is what reached the client by
    /// `now`.
    pub fn finish(self, bytes_out: u64, completed: bool, now: Instant) {
        let route = self.route.as_deref().unwrap_or("-");
        let bytes_in = self.bytes_in.load(Ordering::Relaxed);
        let elapsed = now.saturating_duration_since(self.start);
        let written = kakuremichi_telemetry::access_line(|line| {
            line.str("request_id", self.request_id.to_str().unwrap_or("-"))
                .ip("client_ip", self.client_ip)
                .str("method", self.method.as_str())
                .str("host", &self.host)
                .str("path", &self.path)
                .str("route", route)
                .str("upstream", self.upstream.as_deref().unwrap_or("-"))
                .u64("status", self.status.into())
                .u64("bytes_in", bytes_in)
                .u64("bytes_out", bytes_out)
                .millis(
                    "duration_ms",
                    u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
                )
                .str("error", self.error.unwrap_or(""))
                .str("api_key", self.api_key.as_deref().unwrap_or(""))
                .str("subject", self.subject.as_deref().unwrap_or(""))
                .bool("completed", completed);
        });
        if !written {
            self.log_through_tracing(route, bytes_in, bytes_out, elapsed, completed);
        }
        self.metrics
            .record(self.status, self.head_seconds, bytes_in, bytes_out);
    }

    /// The same line as an ordinary `tracing` event (text logs, tests' own subscribers).
    fn log_through_tracing(
        &self,
        route: &str,
        bytes_in: u64,
        bytes_out: u64,
        elapsed: std::time::Duration,
        completed: bool,
    ) {
        let duration_ms = elapsed.as_secs_f64() * 1000.0;
        tracing::info!(
            target: ACCESS_TARGET,
            request_id = self.request_id.to_str().unwrap_or("-"),
            client_ip = %self.client_ip,
            method = self.method.as_str(),
            host = self.host.as_str(),
            path = self.path.as_str(),
            route,
            upstream = self.upstream.as_deref().unwrap_or("-"),
            status = self.status,
            bytes_in,
            bytes_out,
            duration_ms = (duration_ms * 1000.0).round() / 1000.0,
            error = self.error.unwrap_or(""),
            api_key = self.api_key.as_deref().unwrap_or(""),
            subject = self.subject.as_deref().unwrap_or(""),
            completed,
        );
    }
}
