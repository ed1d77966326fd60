//! A managed agent: follows control for its name and gateways (address and pin each), runs
//! one connection per gateway, and reports which gateways it reaches.

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

/// One gateway's connection.
struct Link {
    /// The gateway's name in control (reported back in `connected_gateways`).
    name: String,
    address: String,
    pin: String,
    stop: CancellationToken,
    stats: AgentStats,
}

/// The connections running for the current snapshot: one per gateway, keyed by address and
/// pin, so that a change to the list of gateways starts and stops only the connections it
/// concerns and the others keep their tunnels.
struct Running {
    name: String,
    links: Vec<Link>,
}

impl Running {
    fn stop_all(&mut self) {
        for link in self.links.drain(..) {
            link.stop.cancel();
        }
    }
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
                                r.links
                                    .iter()
                                    .filter(|l| l.stats.snapshot().gateways_connected > 0)
                                    .map(|l| l.name.clone())
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
        let result = connect_and_follow(options, shutdown, move |snapshot: Snapshot| {
            this.apply(&snapshot, &follow_running, &stop_all, &status_tx);
        })
        .await;
        if let Ok(mut r) = running.lock()
            && let Some(r) = r.as_mut()
        {
            r.stop_all();
        }
        result?;
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
        // A new name is a new identity on every gateway: all connections start over.
        if let Some(current) = slot.as_mut()
            && current.name != snapshot.name
        {
            current.stop_all();
            *slot = None;
        }
        let current = slot.get_or_insert_with(|| Running {
            name: snapshot.name.clone(),
            links: Vec::new(),
        });
        let mut wanted: Vec<(&GatewayEntry, SpkiPin, &str)> = Vec::new();
        for gateway in &snapshot.gateways {
            let Some(text) = gateway.pin.as_deref() else {
                tracing::info!(gateway = %gateway.name, "waiting for the gateway to report its tunnel pin to control");
                continue;
            };
            match SpkiPin::from_str(text) {
                Ok(pin) => wanted.push((gateway, pin, text)),
                Err(e) => {
                    tracing::warn!(gateway = %gateway.name, error = %e, "control sent an invalid pin; skipping this gateway")
                }
            }
        }
        // Gateways that left the list (or changed address or pin) are disconnected.
        current.links.retain(|link| {
            let keep = wanted
                .iter()
                .any(|(g, _, pin)| g.address == link.address && *pin == link.pin);
            if !keep {
                tracing::info!(gateway = %link.name, address = %link.address, "the gateway is no longer in control's list: disconnecting");
                link.stop.cancel();
            }
            keep
        });
        let mut started = 0usize;
        for (gateway, pin, pin_text) in wanted {
            if let Some(link) = current
                .links
                .iter_mut()
                .find(|l| l.address == gateway.address && l.pin == pin_text)
            {
                link.name = gateway.name.clone();
                continue;
            }
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
                    let stop = shutdown.child_token();
                    current.links.push(Link {
                        name: gateway.name.clone(),
                        address: gateway.address.clone(),
                        pin: pin_text.to_string(),
                        stop: stop.clone(),
                        stats: agent.stats(),
                    });
                    started += 1;
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
            gateways = current.links.len(),
            started,
            version = snapshot.version,
            "following control: a connection to every gateway it lists"
        );
        status.send_modify(|s| s.config_version = Some(snapshot.version));
    }
}
