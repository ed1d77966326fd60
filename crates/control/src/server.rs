//! The listener: HTTP/1.1 connections (with upgrades for the push socket) served until the
//! shutdown token fires, then drained.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::App;
use crate::push::Hub;
use crate::{ControlError, ControlSettings, store, tokens};

/// How often the stored version is polled for changes made by other instances.
const VERSION_POLL: Duration = Duration::from_secs(1);
/// How long open connections may take to finish after shutdown.
const DRAIN: Duration = Duration::from_secs(5);
/// A request head must arrive within this time.
const HEADER_TIMEOUT: Duration = Duration::from_secs(15);

/// A bound control plane, ready to [`run`](Control::run).
pub struct Control {
    listener: TcpListener,
    local_addr: SocketAddr,
    app: Arc<App>,
    admin_token_file: PathBuf,
    admin_token_created: bool,
}

impl Control {
    pub(crate) async fn bind(settings: ControlSettings) -> Result<Self, ControlError> {
        let store = store::open(&settings.database).await?;
        let (admin, created) = tokens::load_or_create_admin(&settings.admin_token_file)?;
        let hub = Hub::new(store.clone()).await?;
        let listener =
            TcpListener::bind(settings.listen)
                .await
                .map_err(|source| ControlError::Bind {
                    addr: settings.listen,
                    source,
                })?;
        let local_addr = listener.local_addr().map_err(|source| ControlError::Bind {
            addr: settings.listen,
            source,
        })?;
        tracing::info!(
            listen = %local_addr,
            database = %store::redact_url(&settings.database),
            "control: listening"
        );
        Ok(Control {
            listener,
            local_addr,
            app: Arc::new(App {
                store,
                hub,
                admin,
                public_url: settings.public_url,
                route_writes: tokio::sync::Mutex::new(()),
                shutdown: CancellationToken::new(),
                tasks: TaskTracker::new(),
            }),
            admin_token_file: settings.admin_token_file,
            admin_token_created: created,
        })
    }

    /// The address the API listens on (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The file that holds the admin token.
    pub fn admin_token_file(&self) -> &std::path::Path {
        &self.admin_token_file
    }

    /// Whether this start created the admin token (and printed it).
    pub fn admin_token_created(&self) -> bool {
        self.admin_token_created
    }

    /// Serves until `shutdown` is cancelled, then closes push sockets (peers reconnect to
    /// another instance or later) and lets requests finish for a few seconds.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), ControlError> {
        let app = self.app;
        let tasks = app.tasks.clone();
        tasks.spawn(app.hub.clone().poll(VERSION_POLL, app.shutdown.clone()));
        let result = loop {
            let (stream, _peer) = tokio::select! {
                _ = shutdown.cancelled() => break Ok(()),
                accepted = self.listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) if is_transient(&e) => {
                        tracing::warn!(error = %e, "control: accept failed; retrying");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                    Err(e) => break Err(ControlError::Accept(e)),
                },
            };
            let _ = stream.set_nodelay(true);
            let app = app.clone();
            let stop = app.shutdown.clone();
            tasks.spawn(async move {
                let service = service_fn(move |req| {
                    let app = app.clone();
                    async move { Ok::<_, std::convert::Infallible>(crate::api::handle(app, req).await) }
                });
                let conn = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades();
                tokio::pin!(conn);
                tokio::select! {
                    r = conn.as_mut() => {
                        if let Err(e) = r {
                            tracing::debug!(error = %e, "control: connection ended with an error");
                        }
                    }
                    _ = stop.cancelled() => {
                        conn.as_mut().graceful_shutdown();
                        let _ = conn.await;
                    }
                }
            });
        };
        drop(self.listener);
        app.shutdown.cancel();
        tasks.close();
        if tokio::time::timeout(DRAIN, tasks.wait()).await.is_err() {
            tracing::warn!("control: some connections did not finish within the drain time");
        }
        tracing::info!("control: stopped");
        result
    }
}

fn is_transient(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | Interrupted | WouldBlock
    ) || e.raw_os_error().is_some_and(|c| c == 24 || c == 23)
}
