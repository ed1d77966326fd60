//! `kakuremichi demo`: a gateway on localhost in front of the built-in sample app, with the
//! URLs to open printed at start.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use std::str::FromStr;

use anyhow::Context;
use kakuremichi_agent::{AgentSettings, AgentToken, GatewayVerification, SpkiPin};
use kakuremichi_gateway::Gateway;
use tokio_util::sync::CancellationToken;

use crate::cli::DemoArgs;
use crate::{sample_app, signals};

/// A fresh token for the demo agent.
fn demo_token() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut out = String::from("agt_demo_");
    for _ in 0..4 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(std::process::id() as u64);
        out.push_str(&format!("{:016x}", h.finish()));
    }
    out
}

pub fn run(args: &DemoArgs) -> ExitCode {
    let _logs = args.log.init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(demo(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kakuremichi demo: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn demo(args: &DemoArgs) -> anyhow::Result<()> {
    let app = sample_app::start(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .context("cannot start the sample app")?;
    let dir = std::env::temp_dir().join(format!("kakuremichi-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let file: PathBuf = dir.join("gateway.toml");
    let token = demo_token();
    let text = format!(
        r#"# Written by `kakuremichi demo`.
[gateway]
http = "127.0.0.1:{port}"
admin = "127.0.0.1:0"
tunnel = "127.0.0.1:0"
state_dir = "state"

[[agents]]
name = "demo-agent"
token = "{token}"

# Through the agent's tunnel, as a private service would be reached.
[[routes]]
name = "sample-app"
path = "/"
upstream = "http://{app}"
via = "demo-agent"

# Directly, under a prefix that is stripped.
[[routes]]
name = "sample-app-under-a-prefix"
path = "/app"
strip_path = true
upstream = "http://{app}"
"#,
        port = args.port,
    );
    std::fs::write(&file, &text).with_context(|| format!("cannot write {}", file.display()))?;
    let config = kakuremichi_config::parse_gateway(&file, &text)?;
    let gateway = Gateway::bind(&config).await.with_context(|| {
        format!(
            "cannot start the demo gateway on 127.0.0.1:{}; pass --port 0 to pick a free port",
            args.port
        )
    })?;
    let addrs = gateway.addrs();
    let http = addrs
        .http
        .context("the demo gateway has no http listener")?;
    let tunnel = addrs
        .tunnel
        .context("the demo gateway has no tunnel listener")?;
    let pin = std::fs::read_to_string(dir.join("state").join("tunnel.pin"))
        .context("cannot read the demo gateway's tunnel pin")?;
    let shutdown = CancellationToken::new();
    let agent = AgentSettings::new(
        "demo-agent",
        AgentToken::new(token),
        vec![tunnel.to_string()],
        GatewayVerification::Pin(
            SpkiPin::from_str(pin.trim()).map_err(|e| anyhow::anyhow!("bad demo pin: {e}"))?,
        ),
    );
    let agent_stop = shutdown.clone();
    tokio::spawn(async move {
        if let Err(e) = kakuremichi_agent::run(agent, agent_stop).await {
            tracing::error!("demo agent stopped: {e}");
        }
    });
    println!();
    println!("kakuremichi demo is running (Ctrl-C to stop)");
    println!("  through the agent tunnel: http://{http}/  -> sample app at http://{app}/");
    println!("  direct, prefix stripped:  http://{http}/app/api/hello");
    if let Some(admin) = addrs.admin {
        println!("  metrics:        http://{admin}/metrics");
    }
    println!("  config:         {}", file.display());
    println!();
    let _reloads = signals::install(shutdown.clone())?;
    gateway.run(shutdown).await?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
