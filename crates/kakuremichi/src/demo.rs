//! `kakuremichi demo`: a gateway on localhost in front of the built-in sample app, with the
//! URLs to open printed at start.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use kakuremichi_gateway::Gateway;
use tokio_util::sync::CancellationToken;

use crate::cli::DemoArgs;
use crate::{sample_app, signals};

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
    let text = format!(
        r#"# Written by `kakuremichi demo`.
[gateway]
http = "127.0.0.1:{port}"
admin = "127.0.0.1:0"

[[routes]]
name = "sample-app"
path = "/"
upstream = "http://{app}"

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
    println!();
    println!("kakuremichi demo is running (Ctrl-C to stop)");
    println!("  gateway:        http://{http}/           -> sample app at http://{app}/");
    println!("  under a prefix: http://{http}/app/api/hello  (prefix stripped)");
    if let Some(admin) = addrs.admin {
        println!("  metrics:        http://{admin}/metrics");
    }
    println!("  config:         {}", file.display());
    println!();
    let shutdown = CancellationToken::new();
    let _reloads = signals::install(shutdown.clone())?;
    gateway.run(shutdown).await?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
