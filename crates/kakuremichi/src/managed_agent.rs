//! A managed agent: follows control for its name and gateways (address and pin each), runs
//! one connection per gateway, and reports which gateways it reaches.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kakuremichi_agent::{
    Agent, AgentSettings, AgentStats, AgentToken, AllowList, GatewayVerification, SpkiPin,
    TransportMode,
};
use kakuremichi_control::client::{FollowOptions, connect_and_follow};
use kakuremichi_control::protocol::{GatewayEntry, Snapshot, StatusReport};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub struct ManagedAgent {
    pub url: String,
    pub token: String,
    pub allow: AllowList,
    pub transport: TransportMode,
}

/// The connections running for the current snapshot.
struct Running {
    name: String,
    gateways: Vec<GatewayEntry>,
    stop: CancellationToken,
    stats: Vec<(String, AgentStats)>,
}

impl ManagedAgent {
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let (status_tx, status_rx) = watch::channel(StatusReport::default());
        let running: Arc<Mutex<Option<Running>>> = Arc::new(Mutex::new(None));
        // Report which gateways have a live tunnel.
        {
            let running = running.clone();
            let shutdown = shutdown.clone();
            let status_tx = status_tx.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(2));
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tick.tick() => {}
                    }
                    let connected: Vec<String> = running
                        .lock()
                        .ok()
                        .and_then(|r| {
                            r.as_ref().map(|r| {
                                r.stats
                                    .iter()
                                    .filter(|(_, s)| s.snapshot().gateways_connected > 0)
                                    .map(|(name, _)| name.clone())
                                    .collect()
                            })
                        })
                        .unwrap_or_default();
                    status_tx.send_if_modified(|s| {
                        let next = Some(connected.clone());
                        if s.connected_gateways != next {
                            s.connected_gateways = next;
                            true
                        } else {
                            false
                        }
                    });
                }
            });
        }
        let options = FollowOptions::new(
            self.url.clone(),
            kakuremichi_config::Secret::new(self.token.clone()),
        )
        .with_status(status_rx);
        let this = Arc::new(self);
        let stop_all = shutdown.clone();
        let follow_running = running.clone();
        connect_and_follow(options, shutdown, move |snapshot: Snapshot| {
            this.apply(&snapshot, &follow_running, &stop_all, &status_tx);
        })
        .await?;
        if let Ok(mut r) = running.lock()
            && let Some(r) = r.take()
        {
            r.stop.cancel();
        }
        Ok(())
    }

    fn apply(
        &self,
        snapshot: &Snapshot,
        running: &Mutex<Option<Running>>,
        shutdown: &CancellationToken,
        status: &watch::Sender<StatusReport>,
    ) {
        let Ok(mut slot) = running.lock() else { return };
        if let Some(current) = slot.as_ref()
            && current.name == snapshot.name
            && current.gateways == snapshot.gateways
        {
            return;
        }
        if let Some(previous) = slot.take() {
            previous.stop.cancel();
        }
        let stop = shutdown.child_token();
        let mut stats = Vec::new();
        let mut by_address = BTreeMap::new();
        for gateway in &snapshot.gateways {
            let Some(pin) = gateway.pin.as_deref() else {
                tracing::info!(gateway = %gateway.name, "waiting for the gateway to report its tunnel pin to control");
                continue;
            };
            let pin = match SpkiPin::from_str(pin) {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(gateway = %gateway.name, error = %e, "control sent an invalid pin; skipping this gateway");
                    continue;
                }
            };
            by_address.insert(gateway.address.clone(), ());
            let mut settings = AgentSettings::new(
                snapshot.name.clone(),
                AgentToken::new(self.token.clone()),
                vec![gateway.address.clone()],
                GatewayVerification::Pin(pin),
            );
            settings.allow = self.allow.clone();
            settings.transport = self.transport;
            match Agent::new(settings) {
                Ok(agent) => {
                    stats.push((gateway.name.clone(), agent.stats()));
                    let stop = stop.clone();
                    let name = gateway.name.clone();
                    tokio::spawn(async move {
                        if let Err(e) = agent.run(stop).await {
                            tracing::error!(gateway = %name, "agent connection stopped: {e}");
                        }
                    });
                }
                Err(e) => {
                    tracing::error!(gateway = %gateway.name, "cannot start the connection: {e}")
                }
            }
        }
        tracing::info!(
            name = %snapshot.name,
            gateways = by_address.len(),
            version = snapshot.version,
            "following control: connecting to every gateway"
        );
        status.send_modify(|s| s.config_version = Some(snapshot.version));
        *slot = Some(Running {
            name: snapshot.name.clone(),
            gateways: snapshot.gateways.clone(),
            stop,
            stats,
        });
    }
}
