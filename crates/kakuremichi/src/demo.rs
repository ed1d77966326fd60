//! `kakuremichi demo`: everything on localhost. A control plane (SQLite in a temporary
//! folder) with its web UI, a managed gateway, a managed agent and the sample app; the demo
//! creates the gateway, the agent and two routes through the control API, exactly as an
//! operator would, and prints the URLs to open and the admin token.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use kakuremichi_agent::{AllowList, TransportMode};
use kakuremichi_control::ControlSettings;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::cli::DemoArgs;
use crate::managed_agent::ManagedAgent;
use crate::{gateway, runtime, sample_app, signals};

pub fn run(args: &DemoArgs) -> ExitCode {
    let _logs = args.log.init();
    runtime::block_on("demo", demo(args))
}

/// One JSON call to the control API.
async fn api(control: SocketAddr, token: &str, path: &str, body: Value) -> anyhow::Result<Value> {
    let stream = tokio::net::TcpStream::connect(control)
        .await
        .with_context(|| format!("cannot reach the demo control plane at {control}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let request = http::Request::post(format!("http://{control}{path}"))
        .header(http::header::HOST, control.to_string())
        .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_string())))?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let bytes = response.into_body().collect().await?.to_bytes();
    if !status.is_success() {
        bail!(
            "POST {path} answered {status}: {}",
            String::from_utf8_lossy(&bytes)
        );
    }
    Ok(serde_json::from_slice(&bytes)?)
}

fn field(v: &Value, name: &str) -> anyhow::Result<String> {
    v.get(name)
        .and_then(Value::as_str)
        .map(str::to_string)
        .with_context(|| format!("the control API answer has no `{name}`"))
}

/// A port that is free for both TCP and UDP on 127.0.0.1 (for the tunnel listener).
fn free_tunnel_port() -> anyhow::Result<u16> {
    for _ in 0..20 {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = tcp.local_addr()?.port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("cannot find a free port for the tunnel")
}

async fn demo(args: &DemoArgs) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let _signals = signals::install(shutdown.clone())?;
    let dir = std::env::temp_dir().join(format!("kakuremichi-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;

    let app = sample_app::start(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .context("cannot start the sample app")?;

    let control = kakuremichi_control::bind(ControlSettings {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        database: format!("sqlite://{}", dir.join("control.db").display()),
        public_url: None,
        admin_token_file: dir.join("admin.token"),
    })
    .await
    .context("cannot start the demo control plane")?;
    let control_addr = control.local_addr();
    let admin_token = std::fs::read_to_string(control.admin_token_file())
        .context("cannot read the demo admin token")?
        .trim()
        .to_string();
    {
        let stop = shutdown.clone();
        tokio::spawn(async move {
            if let Err(e) = control.run(stop).await {
                tracing::error!("demo control plane stopped: {e}");
            }
        });
    }

    let tunnel_port = free_tunnel_port()?;
    let gw = api(
        control_addr,
        &admin_token,
        "/api/v1/gateways",
        json!({"name": "demo-gateway", "address": format!("127.0.0.1:{tunnel_port}")}),
    )
    .await?;
    let agent = api(
        control_addr,
        &admin_token,
        "/api/v1/agents",
        json!({"name": "demo-agent"}),
    )
    .await?;
    api(
        control_addr,
        &admin_token,
        "/api/v1/routes",
        json!({"name": "sample-app", "path": "/", "upstream": format!("http://{app}"), "via": "demo-agent"}),
    )
    .await?;
    api(
        control_addr,
        &admin_token,
        "/api/v1/routes",
        json!({"name": "sample-app-direct", "path": "/direct", "strip_path": true, "upstream": format!("http://{app}")}),
    )
    .await?;

    let gateway_file: PathBuf = dir.join("gateway.toml");
    let gateway_text = format!(
        "# Written by `kakuremichi demo`: routes and agents come from control.\n\
         [gateway]\nhttp = \"127.0.0.1:{port}\"\ntunnel = \"127.0.0.1:{tunnel_port}\"\nadmin = \"127.0.0.1:0\"\nstate_dir = \"gateway-state\"\n\n\
         [control]\nurl = \"http://{control_addr}\"\ntoken = \"{token}\"\n",
        port = args.port,
        token = field(&gw, "token")?,
    );
    std::fs::write(&gateway_file, gateway_text)
        .with_context(|| format!("cannot write {}", gateway_file.display()))?;
    let (bound_tx, bound_rx) = tokio::sync::oneshot::channel();
    {
        let stop = shutdown.clone();
        let file = gateway_file.clone();
        tokio::spawn(async move {
            if let Err(e) = gateway::run_file(&file, stop.clone(), bound_tx).await {
                eprintln!(
                    "kakuremichi demo: the gateway stopped: {e:#}; pass --port 0 to pick a free port"
                );
                stop.cancel();
            }
        });
    }
    // With --port 0 the kernel picks the port: print the one the gateway got.
    let Some(gateway_http) = bound_rx.await.ok().and_then(|addrs| addrs.http) else {
        shutdown.cancel();
        remove_dir(&dir);
        bail!("the demo gateway did not start");
    };
    let managed = ManagedAgent {
        url: format!("http://{control_addr}"),
        token: field(&agent, "token")?,
        allow: AllowList::parse(&[app.to_string()]).map_err(|e| anyhow::anyhow!("{e}"))?,
        transport: TransportMode::Auto,
    };
    {
        let stop = shutdown.clone();
        tokio::spawn(async move {
            if let Err(e) = managed.run(stop).await {
                tracing::error!("demo agent stopped: {e:#}");
            }
        });
    }

    let gateway_url = format!("http://{gateway_http}");
    println!();
    println!("kakuremichi demo is running (Ctrl-C to stop)");
    println!("  web UI:            http://{control_addr}/   admin token: {admin_token}");
    println!("  through the agent: {gateway_url}/          -> sample app at http://{app}/");
    println!("  direct route:      {gateway_url}/direct/api/hello");
    println!("  files:             {}", dir.display());
    println!();
    shutdown.cancelled().await;
    // Let the gateway drain briefly before the folder goes.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    remove_dir(&dir);
    Ok(())
}

fn remove_dir(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
}
