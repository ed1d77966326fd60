//! `kakuremichi gateway`: run the gateway role from a file, reloading it on SIGHUP.

use std::process::ExitCode;

use anyhow::Context;
use kakuremichi_gateway::Gateway;
use tokio_util::sync::CancellationToken;

use crate::cli::RoleArgs;
use crate::signals;

pub fn run(args: &RoleArgs) -> ExitCode {
    let _logs = args.log.init();
    let config = match kakuremichi_config::load_gateway(&args.config) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
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
    match runtime.block_on(serve(args, config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("kakuremichi gateway: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: &RoleArgs, config: kakuremichi_config::GatewayConfig) -> anyhow::Result<()> {
    let gateway = Gateway::bind(&config).await?;
    let shutdown = CancellationToken::new();
    let mut reloads =
        signals::install(shutdown.clone()).context("cannot install signal handlers")?;
    let handle = gateway.reload_handle();
    let file = args.config.clone();
    tokio::spawn(async move {
        while reloads.recv().await.is_some() {
            tracing::info!(file = %file.display(), "SIGHUP: reloading the configuration");
            match kakuremichi_config::load_gateway(&file) {
                Ok(config) => match handle.reload(&config) {
                    Ok(()) => {
                        tracing::info!(routes = config.routes.len(), "configuration reloaded")
                    }
                    Err(e) => tracing::error!(
                        "reload refused, the previous configuration stays in force: {e}"
                    ),
                },
                Err(e) => {
                    handle.record_failure();
                    tracing::error!(
                        "reload refused, the previous configuration stays in force: {e}"
                    )
                }
            }
        }
    });
    gateway.run(shutdown).await?;
    Ok(())
}
