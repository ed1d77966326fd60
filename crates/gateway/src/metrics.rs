//! The gateway's metrics registry. One value is made at start and handed to the parts that
//! record; `/metrics` on the admin listener encodes it in the Prometheus text format.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteStatus {
    pub route: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HostLabel {
    pub host: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AgentLabel {
    pub agent: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabel {
    pub route: String,
    pub upstream: String,
}

type HistogramFamily = Family<RouteLabel, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    Histogram::new([
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    ])
}

/// Every metric the gateway records.
pub struct Metrics {
    registry: Registry,
    pub requests: Family<RouteStatus, Counter>,
    pub duration: HistogramFamily,
    pub bytes_in: Family<RouteLabel, Counter>,
    pub bytes_out: Family<RouteLabel, Counter>,
    pub open_connections: Gauge,
    pub rejected_connections: Counter,
    pub open_websockets: Gauge,
    pub upstream_healthy: Family<UpstreamLabel, Gauge>,
    pub config_reloads: Counter,
    pub config_reload_failures: Counter,
    pub certificate_expiry: Family<HostLabel, Gauge>,
    pub certificate_renewal_failures: Family<HostLabel, Gauge>,
    pub acme_orders: Gauge,
    pub tunnel_agents_connected: Family<AgentLabel, Gauge>,
    pub tunnel_streams_open: Family<AgentLabel, Gauge>,
    pub tunnel_agent_connections: Family<AgentLabel, Gauge>,
    pub tunnel_bytes_to_agents: Gauge,
    pub tunnel_bytes_from_agents: Gauge,
    pub tunnel_handshakes_refused: Gauge,
    routes: Mutex<HashMap<String, Arc<RouteMetrics>>>,
    /// Run before every encoding, to copy state kept elsewhere into gauges.
    refreshers: Mutex<Vec<Refresher>>,
}

type Refresher = Box<dyn Fn(&Metrics) + Send + Sync>;

/// The metrics of one route, resolved once so that recording a request takes no label
/// hashing beyond the status code.
pub struct RouteMetrics {
    route: String,
    requests: Family<RouteStatus, Counter>,
    by_status: RwLock<Vec<(u16, Counter)>>,
    duration: Histogram,
    bytes_in: Counter,
    bytes_out: Counter,
}

impl RouteMetrics {
    fn status_counter(&self, status: u16) -> Counter {
        if let Ok(list) = self.by_status.read()
            && let Some((_, c)) = list.iter().find(|(s, _)| *s == status)
        {
            return c.clone();
        }
        let counter = self
            .requests
            .get_or_create(&RouteStatus {
                route: self.route.clone(),
                status,
            })
            .clone();
        if let Ok(mut list) = self.by_status.write()
            && !list.iter().any(|(s, _)| *s == status)
        {
            list.push((status, counter.clone()));
        }
        counter
    }

    /// Records one finished request.
    pub fn record(&self, status: u16, head_seconds: f64, bytes_in: u64, bytes_out: u64) {
        self.status_counter(status).inc();
        self.duration.observe(head_seconds);
        if bytes_in > 0 {
            self.bytes_in.inc_by(bytes_in);
        }
        if bytes_out > 0 {
            self.bytes_out.inc_by(bytes_out);
        }
    }
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("kakuremichi");
        let requests = Family::<RouteStatus, Counter>::default();
        registry.register(
            "http_requests",
            "Requests answered, by route (\"-\" when none matched) and status",
            requests.clone(),
        );
        let duration: HistogramFamily = Family::new_with_constructor(latency_histogram);
        registry.register(
            "http_request_duration_seconds",
            "Time from the request head to the response head, by route",
            duration.clone(),
        );
        let bytes_in = Family::<RouteLabel, Counter>::default();
        registry.register(
            "http_request_bytes",
            "Request body bytes received from clients, by route",
            bytes_in.clone(),
        );
        let bytes_out = Family::<RouteLabel, Counter>::default();
        registry.register(
            "http_response_bytes",
            "Response body bytes sent to clients, by route",
            bytes_out.clone(),
        );
        let open_connections = Gauge::default();
        registry.register(
            "open_connections",
            "Client connections open now",
            open_connections.clone(),
        );
        let rejected_connections = Counter::default();
        registry.register(
            "rejected_connections",
            "Client connections closed at once because max_connections was reached",
            rejected_connections.clone(),
        );
        let open_websockets = Gauge::default();
        registry.register(
            "open_upgraded_connections",
            "WebSocket and other upgraded connections open now",
            open_websockets.clone(),
        );
        let upstream_healthy = Family::<UpstreamLabel, Gauge>::default();
        registry.register(
            "upstream_healthy",
            "1 when the upstream is taking traffic, 0 when health checks or failures took it out",
            upstream_healthy.clone(),
        );
        let config_reloads = Counter::default();
        registry.register(
            "config_reloads",
            "Configurations applied after start",
            config_reloads.clone(),
        );
        let config_reload_failures = Counter::default();
        registry.register(
            "config_reload_failures",
            "Configurations refused on reload (the previous one stayed in force)",
            config_reload_failures.clone(),
        );
        let certificate_expiry = Family::<HostLabel, Gauge>::default();
        registry.register(
            "certificate_expiry_seconds",
            "Seconds until the certificate served for the host expires (negative: expired)",
            certificate_expiry.clone(),
        );
        let certificate_renewal_failures = Family::<HostLabel, Gauge>::default();
        registry.register(
            "certificate_renewal_failures",
            "Failed ACME attempts for the host since its last success",
            certificate_renewal_failures.clone(),
        );
        let acme_orders = Gauge::default();
        registry.register(
            "acme_orders",
            "ACME orders started since the gateway started",
            acme_orders.clone(),
        );
        let tunnel_agents_connected = Family::<AgentLabel, Gauge>::default();
        registry.register(
            "tunnel_agents_connected",
            "Agent connections up now, by agent name",
            tunnel_agents_connected.clone(),
        );
        let tunnel_streams_open = Family::<AgentLabel, Gauge>::default();
        registry.register(
            "tunnel_streams_open",
            "Proxied streams open now through the tunnel, by agent name",
            tunnel_streams_open.clone(),
        );
        let tunnel_agent_connections = Family::<AgentLabel, Gauge>::default();
        registry.register(
            "tunnel_agent_connections",
            "Agent connections accepted since start, by agent name (minus those connected: reconnects)",
            tunnel_agent_connections.clone(),
        );
        let tunnel_bytes_to_agents = Gauge::default();
        registry.register(
            "tunnel_bytes_to_agents",
            "Bytes sent to agents through the tunnel since start",
            tunnel_bytes_to_agents.clone(),
        );
        let tunnel_bytes_from_agents = Gauge::default();
        registry.register(
            "tunnel_bytes_from_agents",
            "Bytes received from agents through the tunnel since start",
            tunnel_bytes_from_agents.clone(),
        );
        let tunnel_handshakes_refused = Gauge::default();
        registry.register(
            "tunnel_handshakes_refused",
            "Agents refused for their token since start",
            tunnel_handshakes_refused.clone(),
        );
        Arc::new(Metrics {
            tunnel_agents_connected,
            tunnel_streams_open,
            tunnel_agent_connections,
            tunnel_bytes_to_agents,
            tunnel_bytes_from_agents,
            tunnel_handshakes_refused,
            certificate_expiry,
            certificate_renewal_failures,
            acme_orders,
            refreshers: Mutex::new(Vec::new()),
            registry,
            requests,
            duration,
            bytes_in,
            bytes_out,
            open_connections,
            rejected_connections,
            open_websockets,
            upstream_healthy,
            config_reloads,
            config_reload_failures,
            routes: Mutex::new(HashMap::new()),
        })
    }

    /// The metrics of route `name` (`"-"` for requests that matched none); the same value
    /// for the same name across reloads.
    pub fn route(&self, name: &str) -> Arc<RouteMetrics> {
        let mut routes = match self.routes.lock() {
            Ok(r) => r,
            Err(p) => p.into_inner(),
        };
        routes
            .entry(name.to_string())
            .or_insert_with(|| {
                let label = RouteLabel {
                    route: name.to_string(),
                };
                Arc::new(RouteMetrics {
                    route: name.to_string(),
                    requests: self.requests.clone(),
                    by_status: RwLock::new(Vec::new()),
                    duration: self.duration.get_or_create(&label).clone(),
                    bytes_in: self.bytes_in.get_or_create(&label).clone(),
                    bytes_out: self.bytes_out.get_or_create(&label).clone(),
                })
            })
            .clone()
    }

    /// Adds a function run before every encoding.
    pub fn add_refresher(&self, f: impl Fn(&Metrics) + Send + Sync + 'static) {
        if let Ok(mut list) = self.refreshers.lock() {
            list.push(Box::new(f));
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        if let Ok(list) = self.refreshers.lock() {
            for f in list.iter() {
                f(self);
            }
        }
        let mut out = String::with_capacity(4096);
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
