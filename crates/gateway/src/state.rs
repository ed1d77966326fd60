//! The gateway's state for one configuration: the route table with each route's upstreams
//! and client. A new value is built for every (re)load and swapped in atomically; requests
//! already running keep the value they started with.

use std::sync::Arc;

use kakuremichi_config::gateway::GatewaySettings;
use kakuremichi_config::{GatewayConfig, RouteConfig};
use kakuremichi_policy::{PolicyEnv, RoutePolicies};
use kakuremichi_router::{RouteTable, RouteTableBuilder};
use tokio_util::sync::CancellationToken;

use crate::header_edits::RouteHeaderEdits;
use crate::metrics::{Metrics, UpstreamLabel};
use crate::upstream::health;
use crate::upstream::pool::{ClientCache, HttpClient};
use crate::upstream::select::UpstreamSet;

/// Why a configuration cannot be served by this gateway.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Policy(#[from] kakuremichi_policy::PolicyError),
    #[error(
        "{file}: route \"{route}\" has `via` but [gateway] has no `tunnel` listener for agents to connect to; add `tunnel = \"0.0.0.0:7844\"`"
    )]
    ViaWithoutTunnel { file: String, route: String },
}

/// One route, ready to serve.
pub struct RouteRuntime {
    pub name: Arc<str>,
    pub config: RouteConfig,
    pub upstreams: Arc<UpstreamSet>,
    pub client: HttpClient,
    pub metrics: Arc<crate::metrics::RouteMetrics>,
    /// JWT, API keys, rate limit and CORS; `None` when the route has none of them.
    pub policies: Option<RoutePolicies>,
    /// `[routes.headers]`, parsed; `None` when the route has none.
    pub header_edits: Option<RouteHeaderEdits>,
}

/// Everything a request needs from the configuration.
pub struct Runtime {
    pub table: RouteTable<Arc<RouteRuntime>>,
    pub settings: GatewaySettings,
    /// Stops this configuration's health checkers when it is replaced.
    pub background: CancellationToken,
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.background.cancel();
    }
}

fn check_runtime_needs(config: &GatewayConfig) -> Result<(), BuildError> {
    let file = config.file.display().to_string();
    for r in &config.routes {
        if r.via.is_some() && config.settings.tunnel.is_none() {
            return Err(BuildError::ViaWithoutTunnel {
                file: file.clone(),
                route: r.name.clone(),
            });
        }
    }
    Ok(())
}

impl Runtime {
    /// Builds the state for `config` and starts its health checkers.
    pub fn build(
        config: &GatewayConfig,
        clients: &ClientCache,
        metrics: &Metrics,
        policy_env: &Arc<PolicyEnv>,
    ) -> Result<Arc<Runtime>, BuildError> {
        check_runtime_needs(config)?;
        let background = CancellationToken::new();
        let mut builder = RouteTableBuilder::new();
        for route in &config.routes {
            let name: Arc<str> = Arc::from(route.name.as_str());
            let upstreams = Arc::new(UpstreamSet::new(
                &route.upstreams,
                route.load_balance,
                |u| {
                    metrics
                        .upstream_healthy
                        .get_or_create(&UpstreamLabel {
                            route: route.name.clone(),
                            upstream: u.original.clone(),
                        })
                        .clone()
                },
            ));
            let client = clients.get(
                route.tls_verify,
                route.connect_timeout,
                route.via.as_deref(),
            );
            if let Some(check) = &route.health_check {
                health::spawn(
                    upstreams.clone(),
                    client.clone(),
                    check.clone(),
                    route.host_header.clone(),
                    background.clone(),
                );
            }
            if !route.tls_verify {
                tracing::warn!(route = %route.name, "tls_verify = false: certificates of this route's https upstreams are NOT checked");
            }
            let policies = RoutePolicies::build(
                &route.name,
                route.jwt.as_ref(),
                route.api_keys.as_ref(),
                route.rate_limit.as_ref(),
                route.cors.as_ref(),
                policy_env,
            )?;
            let policies = (!policies.is_empty()).then_some(policies);
            let value = Arc::new(RouteRuntime {
                name,
                config: route.clone(),
                upstreams,
                client,
                metrics: metrics.route(&route.name),
                policies,
                header_edits: route.headers.as_ref().map(RouteHeaderEdits::new),
            });
            if value.policies.is_some() {
                // Fetch JWKS ahead of the first request; a failure is retried on demand.
                let warm = value.clone();
                tokio::spawn(async move {
                    if let Some(p) = &warm.policies {
                        p.warm().await;
                    }
                });
            }
            builder.add(&route.hosts, &route.path, route.methods.as_deref(), value);
        }
        Ok(Arc::new(Runtime {
            table: builder.build(),
            settings: config.settings.clone(),
            background,
        }))
    }
}
