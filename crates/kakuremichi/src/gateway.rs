//! `kakuremichi gateway`: run the gateway role from a file, reloading it on SIGHUP. With
//! `[control]` in the file (managed mode), routes and agents come from control: each pushed
//! snapshot is kept in `state_dir` and applied like a reload, and the gateway goes on serving
//! its last snapshot while control is unreachable, across restarts too.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use kakuremichi_config::GatewayConfig;
use kakuremichi_control::client::{FollowOptions, connect_and_follow};
use kakuremichi_control::protocol::{CertificateStatus, Snapshot, StatusReport};
use kakuremichi_gateway::{BoundAddrs, Gateway, ReloadHandle};
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::cli::RoleArgs;
use crate::{runtime, signals};

/// Where the configuration comes from: the file, plus control's last snapshot when managed.
struct Source {
    file: PathBuf,
    snapshot: Mutex<Option<Snapshot>>,
}

const SNAPSHOT_FILE: &str = "control-snapshot.json";

impl Source {
    fn snapshot_path(config: &GatewayConfig) -> PathBuf {
        config.settings.state_dir.join(SNAPSHOT_FILE)
    }

    /// The file alone, or the file with the snapshot's agents and routes appended.
    fn load(&self) -> anyhow::Result<GatewayConfig> {
        let text = std::fs::read_to_string(&self.file).map_err(|source| {
            kakuremichi_config::ConfigError::Read {
                file: self.file.clone(),
                source,
            }
        })?;
        let local = kakuremichi_config::parse_gateway(&self.file, &text)?;
        if local.control.is_none() {
            return Ok(local);
        }
        let guard = self
            .snapshot
            .lock()
            .map_err(|_| anyhow::anyhow!("snapshot lock poisoned"))?;
        let Some(snapshot) = guard.as_ref() else {
            return Ok(local);
        };
        let combined = snapshot
            .gateway_file(&text)
            .context("cannot render the configuration pushed by control")?;
        kakuremichi_config::parse_gateway(&self.file, &combined).with_context(|| {
            format!(
                "the configuration pushed by control (version {}) does not validate with this file",
                snapshot.version
            )
        })
    }
}

fn read_snapshot(path: &Path) -> Option<Snapshot> {
    let bytes = std::fs::read(path).ok()?;
    match serde_json::from_slice(&bytes) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "ignoring an unreadable saved snapshot");
            None
        }
    }
}

fn write_snapshot(path: &Path, snapshot: &Snapshot) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("json.tmp");
    let bytes = serde_json::to_vec_pretty(snapshot).map_err(std::io::Error::other)?;
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(tmp, path)
}

/// Reads the file (and, when managed, the saved snapshot) into the first configuration.
fn load_source(
    file: &Path,
) -> Result<(Arc<Source>, GatewayConfig), kakuremichi_config::ConfigError> {
    let local = kakuremichi_config::load_gateway(file)?;
    let source = Arc::new(Source {
        file: file.to_path_buf(),
        snapshot: Mutex::new(None),
    });
    if local.control.is_some() {
        let saved = read_snapshot(&Source::snapshot_path(&local));
        if let Some(s) = &saved {
            tracing::info!(
                version = s.version,
                "starting from the last snapshot pushed by control"
            );
        }
        if let Ok(mut slot) = source.snapshot.lock() {
            *slot = saved;
        }
    }
    let config = match source.load() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("{e:#}; starting without the saved snapshot");
            if let Ok(mut slot) = source.snapshot.lock() {
                *slot = None;
            }
            local
        }
    };
    Ok((source, config))
}

pub fn run(args: &RoleArgs) -> ExitCode {
    let _logs = args.log.init();
    let (source, config) = match load_source(&args.config) {
        Ok(pair) => pair,
        Err(e) => return runtime::config_error("gateway", e),
    };
    runtime::block_on("gateway", async move {
        let shutdown = CancellationToken::new();
        let reloads =
            signals::install(shutdown.clone()).context("cannot install signal handlers")?;
        serve(source, config, shutdown, Some(reloads), None).await
    })
}

/// Runs a gateway from `file` until `shutdown` (used by `demo`, which owns the signals).
/// The addresses it listens on go to `bound` as soon as its listeners are up (so that a
/// port 0 in the file can be reported); `bound` is dropped unsent if it cannot start.
pub async fn run_file(
    file: &Path,
    shutdown: CancellationToken,
    bound: oneshot::Sender<BoundAddrs>,
) -> anyhow::Result<()> {
    let (source, config) = load_source(file)?;
    serve(source, config, shutdown, None, Some(bound)).await
}

fn apply(source: &Source, handle: &ReloadHandle, why: &str) -> bool {
    match source.load() {
        Ok(config) => match handle.reload(&config) {
            Ok(()) => {
                tracing::info!(
                    trigger = why,
                    routes = config.routes.len(),
                    "configuration reloaded"
                );
                true
            }
            Err(e) => {
                tracing::error!(
                    trigger = why,
                    "reload refused, the previous configuration stays in force: {e}"
                );
                false
            }
        },
        Err(e) => {
            handle.record_failure();
            tracing::error!(
                trigger = why,
                "reload refused, the previous configuration stays in force: {e:#}"
            );
            false
        }
    }
}

async fn serve(
    source: Arc<Source>,
    config: GatewayConfig,
    shutdown: CancellationToken,
    reloads: Option<tokio::sync::mpsc::Receiver<()>>,
    bound: Option<oneshot::Sender<BoundAddrs>>,
) -> anyhow::Result<()> {
    let gateway = Gateway::bind(&config).await?;
    if let Some(bound) = bound {
        let _ = bound.send(gateway.addrs());
    }
    let handle = gateway.reload_handle();
    if let Some(mut reloads) = reloads {
        let source = source.clone();
        let handle = handle.clone();
        tokio::spawn(async move {
            while reloads.recv().await.is_some() {
                tracing::info!(file = %source.file.display(), "SIGHUP: reloading the configuration");
                apply(&source, &handle, "SIGHUP");
            }
        });
    }
    if let Some(control) = config.control.clone() {
        follow_control(source, handle, &config, control, shutdown.clone())?;
    }
    gateway.run(shutdown).await?;
    Ok(())
}

fn control_token(
    config: &GatewayConfig,
    control: &kakuremichi_config::client::ControlClient,
) -> anyhow::Result<String> {
    match (&control.token, &control.token_file) {
        (Some(t), _) => Ok(t.expose().to_string()),
        (None, Some(path)) => {
            let base = config.file.parent().unwrap_or(Path::new("."));
            let path = base.join(path);
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read [control] token_file {}", path.display()))?;
            Ok(text.trim().to_string())
        }
        (None, None) => anyhow::bail!(
            "{}: [control] needs `token` or `token_file` (the gtw_... token from POST /api/v1/gateways)",
            config.file.display()
        ),
    }
}

/// Keeps a connection to control: snapshots are saved and applied, status goes back.
fn follow_control(
    source: Arc<Source>,
    handle: ReloadHandle,
    config: &GatewayConfig,
    control: kakuremichi_config::client::ControlClient,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let token = control_token(config, &control)?;
    let snapshot_path = Source::snapshot_path(config);
    let pin_path = config.settings.state_dir.join("tunnel.pin");
    let (status_tx, status_rx) = watch::channel(status_report(&handle, &pin_path, None));
    let mut options =
        FollowOptions::new(control.url.clone(), kakuremichi_config::Secret::new(token))
            .with_status(status_rx);
    options.ca_roots = config.settings.ca_roots.clone();
    if let Ok(slot) = source.snapshot.lock()
        && let Some(s) = slot.as_ref()
    {
        options = options.resume_from(s);
    }
    // Certificates change on their own (ACME): report them every few seconds.
    {
        let handle = handle.clone();
        let status_tx = status_tx.clone();
        let pin_path = pin_path.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let version = status_tx.borrow().config_version;
                let next = status_report(&handle, &pin_path, version);
                status_tx.send_if_modified(|current| {
                    if *current != next {
                        *current = next;
                        true
                    } else {
                        false
                    }
                });
            }
        });
    }
    tokio::spawn(async move {
        let result = connect_and_follow(options, shutdown, move |snapshot: Snapshot| {
            let version = snapshot.version;
            if let Err(e) = write_snapshot(&snapshot_path, &snapshot) {
                tracing::warn!(file = %snapshot_path.display(), error = %e, "cannot save the snapshot from control; it is applied but will not survive a restart");
            }
            let previous = source.snapshot.lock().ok().and_then(|mut slot| slot.replace(snapshot));
            if apply(&source, &handle, "snapshot from control") {
                status_tx.send_modify(|s| s.config_version = Some(version));
            } else if let Ok(mut slot) = source.snapshot.lock() {
                // Keep serving (and resuming from) the last snapshot that worked.
                *slot = previous;
            }
        })
        .await;
        if let Err(e) = result {
            tracing::error!("stopped following control: {e}; serving the last configuration");
        }
    });
    Ok(())
}

fn status_report(handle: &ReloadHandle, pin_path: &Path, version: Option<u64>) -> StatusReport {
    let certificates = handle
        .certificates()
        .into_iter()
        .map(|c| CertificateStatus {
            hosts: vec![c.host.clone()],
            state: match (c.seconds_left, &c.last_error) {
                (Some(left), _) if left < 0 => "expired".into(),
                (_, Some(_)) => "error".into(),
                (Some(_), None) => "valid".into(),
                (None, None) => "pending".into(),
            },
            not_after: c.not_after.map(rfc3339),
            error: c.last_error.clone(),
        })
        .collect();
    StatusReport {
        pin: std::fs::read_to_string(pin_path)
            .ok()
            .map(|p| p.trim().to_string()),
        certificates,
        config_version: version,
        ..StatusReport::default()
    }
}

/// `2026-11-23T14:00:00Z` from seconds since the Unix epoch.
fn rfc3339(secs: i64) -> String {
    use kakuremichi_telemetry::rfc3339::{Decimals, Rfc3339};
    Rfc3339::new(secs, 0, Decimals::None).to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_dates() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::rfc3339(1_795_000_000), "2026-11-18T11:06:40Z");
        assert_eq!(super::rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }
}
