//! `kakuremichi control`: run the control plane (API, web UI, push to gateways and agents).

use std::process::ExitCode;

use anyhow::Context;
use kakuremichi_control::ControlSettings;
use tokio_util::sync::CancellationToken;

use crate::cli::RoleArgs;
use crate::signals;

pub fn run(args: &RoleArgs) -> ExitCode {
    let _logs = args.log.init();
    let file = match kakuremichi_config::load_control(&args.config) {
        Ok(f) => f,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let settings = ControlSettings::from_file(&file, &args.config);
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
    let result = runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        let _reloads =
            signals::install(shutdown.clone()).context("cannot install signal handlers")?;
        kakuremichi_control::run(settings, shutdown).await?;
        anyhow::Ok(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("kakuremichi control: {e:#}");
            ExitCode::FAILURE
        }
    }
}
