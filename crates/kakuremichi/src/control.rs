//! `kakuremichi control`: run the control plane (API, web UI, push to gateways and agents).

use std::process::ExitCode;

use anyhow::Context;
use kakuremichi_control::ControlSettings;
use tokio_util::sync::CancellationToken;

use crate::cli::RoleArgs;
use crate::{runtime, signals};

pub fn run(args: &RoleArgs) -> ExitCode {
    let _logs = args.log.init();
    let file = match kakuremichi_config::load_control(&args.config) {
        Ok(f) => f,
        Err(e) => return runtime::config_error("control", e),
    };
    let settings = ControlSettings::from_file(&file, &args.config);
    runtime::block_on("control", async move {
        let shutdown = CancellationToken::new();
        let _reloads =
            signals::install(shutdown.clone()).context("cannot install signal handlers")?;
        kakuremichi_control::run(settings, shutdown).await?;
        Ok(())
    })
}
