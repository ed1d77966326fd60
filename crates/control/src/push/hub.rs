//! The state every push session is cut from, refreshed from the store after changes and
//! by a version poll, and the count of live sessions per peer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::protocol::{AgentEntry, GatewayEntry, Role, RouteSpec, Snapshot};
use crate::store::{StateData, Store, StoreError};

/// The state every peer's snapshot is cut from.
#[derive(Debug)]
pub(crate) struct PushState {
    pub epoch: String,
    pub version: u64,
    routes: Vec<RouteSpec>,
    agents: Vec<AgentEntry>,
    gateways: Vec<GatewayEntry>,
    /// Every peer id, so a session notices its peer was deleted.
    pub(super) peers: HashMap<String, (Role, String)>,
}

impl PushState {
    fn from_data(data: StateData) -> Self {
        let mut agents = Vec::new();
        let mut gateways = Vec::new();
        let mut peers = HashMap::new();
        for p in data.peers {
            match p.role {
                Role::Agent => agents.push(AgentEntry {
                    name: p.name.clone(),
                    token_sha256: p.token_sha256.clone(),
                }),
                Role::Gateway => gateways.push(GatewayEntry {
                    name: p.name.clone(),
                    address: p.address.clone().unwrap_or_default(),
                    pin: p.pin.clone(),
                }),
            }
            peers.insert(p.id, (p.role, p.name));
        }
        let routes = data
            .routes
            .into_iter()
            .filter_map(|r| match serde_json::from_str::<Map<String, Value>>(&r.spec) {
                Ok(fields) => Some(RouteSpec { id: r.id, fields }),
                Err(e) => {
                    tracing::error!(route = %r.name, error = %e, "stored route is not a JSON object; left out of snapshots");
                    None
                }
            })
            .collect();
        PushState {
            epoch: data.epoch,
            version: data.version,
            routes,
            agents,
            gateways,
            peers,
        }
    }

    /// The snapshot for one peer, or `None` when the peer no longer exists.
    pub(super) fn snapshot_for(&self, peer_id: &str) -> Option<Snapshot> {
        let (role, name) = self.peers.get(peer_id)?;
        let (routes, agents, gateways) = match role {
            Role::Gateway => (self.routes.clone(), self.agents.clone(), Vec::new()),
            Role::Agent => (Vec::new(), Vec::new(), self.gateways.clone()),
        };
        Some(Snapshot {
            version: self.version,
            epoch: self.epoch.clone(),
            role: *role,
            name: name.clone(),
            routes,
            agents,
            gateways,
        })
    }
}

/// Current state for every session, refreshed after changes.
pub(crate) struct Hub {
    store: Arc<dyn Store>,
    tx: watch::Sender<Arc<PushState>>,
    refresh_lock: tokio::sync::Mutex<()>,
    /// Live sessions per peer id on this instance.
    live: Mutex<HashMap<String, usize>>,
}

impl Hub {
    pub(crate) async fn new(store: Arc<dyn Store>) -> Result<Arc<Self>, StoreError> {
        let state = PushState::from_data(store.state().await?);
        let (tx, _) = watch::channel(Arc::new(state));
        Ok(Arc::new(Hub {
            store,
            tx,
            refresh_lock: tokio::sync::Mutex::new(()),
            live: Mutex::new(HashMap::new()),
        }))
    }

    /// A receiver of every new state.
    pub(super) fn subscribe(&self) -> watch::Receiver<Arc<PushState>> {
        self.tx.subscribe()
    }

    pub(crate) fn current(&self) -> Arc<PushState> {
        self.tx.borrow().clone()
    }

    /// Reloads the state from the store and wakes every session if it changed.
    pub(crate) async fn refresh(&self) -> Result<(), StoreError> {
        let _guard = self.refresh_lock.lock().await;
        let state = Arc::new(PushState::from_data(self.store.state().await?));
        self.tx.send_if_modified(|cur| {
            if cur.version != state.version || cur.epoch != state.epoch {
                *cur = state;
                true
            } else {
                false
            }
        });
        Ok(())
    }

    /// Refreshes, logging instead of failing: the change itself is already stored, and the
    /// version poll will push it once the database answers again.
    pub(crate) async fn refresh_or_log(&self) {
        if let Err(e) = self.refresh().await {
            tracing::warn!(error = %e, "push: refreshing the state failed; the poll will retry");
        }
    }

    /// Polls the stored version every `every`, to push changes other instances made.
    pub(crate) async fn poll(self: Arc<Self>, every: Duration, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            match self.store.version().await {
                Ok(v) if v != self.current().version => self.refresh_or_log().await,
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "push: reading the version failed"),
            }
        }
    }

    pub(super) fn session_started(&self, id: &str) {
        if let Ok(mut live) = self.live.lock() {
            *live.entry(id.to_string()).or_default() += 1;
        }
    }

    /// Returns whether this was the peer's last session here.
    pub(super) fn session_ended(&self, id: &str) -> bool {
        let Ok(mut live) = self.live.lock() else {
            return true;
        };
        match live.get_mut(id) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            _ => {
                live.remove(id);
                true
            }
        }
    }
}
