//! `kakuremichi agent`: dial out to the gateways and serve their streams, from a file or from
//! quick-start flags (flags override the file).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::str::FromStr;

use anyhow::{Context, bail};
use kakuremichi_agent::{
    AgentSettings, AgentToken, AllowList, GatewayVerification, SpkiPin, TransportMode,
};
use kakuremichi_config::agent::TransportMode as FileTransport;
use tokio_util::sync::CancellationToken;

use crate::cli::{AgentArgs, TransportArg};
use crate::{runtime, signals};

fn read_token(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the token file {}", path.display()))?;
    let token = text.trim().to_string();
    if token.is_empty() {
        bail!("the token file {} is empty", path.display());
    }
    Ok(token)
}

/// How the agent learns its gateways.
enum Plan {
    /// From the file and flags.
    Standalone(Box<AgentSettings>),
    /// From control: its name and gateways (with their pins) are pushed.
    Managed(crate::managed_agent::ManagedAgent),
}

/// A managed agent: the file has `[control]`, and neither the file nor the flags name
/// gateways.
fn plan(args: &AgentArgs) -> anyhow::Result<Plan> {
    if let Some(path) = &args.config
        && args.gateways.is_empty()
    {
        let file = kakuremichi_config::load_agent(path)?;
        let has_gateways = file.agent.as_ref().is_some_and(|a| !a.gateways.is_empty());
        if let (Some(control), false) = (&file.control, has_gateways) {
            let base = path
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from("."));
            let token = match (
                &args.token,
                &args.token_file,
                &control.token,
                &control.token_file,
            ) {
                (Some(t), _, _, _) => t.clone(),
                (None, Some(f), _, _) => read_token(f)?,
                (None, None, Some(t), _) => t.expose().to_string(),
                (None, None, None, Some(f)) => read_token(&base.join(f))?,
                _ => bail!(
                    "[control] needs `token` or `token_file` (the agt_... token from POST /api/v1/agents)"
                ),
            };
            let section = file.agent.clone();
            let allow_entries = if args.allow.is_empty() {
                section
                    .as_ref()
                    .map(|s| s.allow.clone())
                    .unwrap_or_default()
            } else {
                args.allow.clone()
            };
            let allow = AllowList::parse(&allow_entries)
                .map_err(|e| anyhow::anyhow!("invalid allow list: {e}"))?;
            return Ok(Plan::Managed(crate::managed_agent::ManagedAgent {
                url: control.url.clone(),
                token,
                allow,
                transport: transport_mode(args.transport, section.as_ref().map(|s| s.transport)),
            }));
        }
    }
    settings(args).map(|s| Plan::Standalone(Box::new(s)))
}

fn transport_mode(flag: Option<TransportArg>, file: Option<FileTransport>) -> TransportMode {
    match (flag, file) {
        (Some(TransportArg::Auto), _) => TransportMode::Auto,
        (Some(TransportArg::Quic), _) => TransportMode::Quic,
        (Some(TransportArg::Tcp), _) => TransportMode::Tcp,
        (None, Some(FileTransport::Quic)) => TransportMode::Quic,
        (None, Some(FileTransport::Tcp)) => TransportMode::Tcp,
        (None, _) => TransportMode::Auto,
    }
}

/// Builds the agent's settings from the file (if any) and the flags.
fn settings(args: &AgentArgs) -> anyhow::Result<AgentSettings> {
    let file = match &args.config {
        Some(path) => Some((kakuremichi_config::load_agent(path)?, path.clone())),
        None => None,
    };
    let base: PathBuf = args
        .config
        .as_ref()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("."));
    let section = file.as_ref().and_then(|(f, _)| f.agent.clone());
    let name = args
        .name
        .clone()
        .or_else(|| section.as_ref().and_then(|s| s.name.clone()))
        .context("the agent needs a name: `name` in [agent] or --name")?;
    let token = match (&args.token, &args.token_file) {
        (Some(t), _) => t.clone(),
        (None, Some(f)) => read_token(f)?,
        (None, None) => match section.as_ref() {
            Some(s) if s.token.is_some() => s
                .token
                .as_ref()
                .map(|t| t.expose().to_string())
                .unwrap_or_default(),
            Some(s) if s.token_file.is_some() => {
                read_token(&base.join(s.token_file.as_deref().unwrap_or(Path::new(""))))?
            }
            _ => bail!(
                "the agent needs its token: `token` or `token_file` in [agent], or --token / --token-file"
            ),
        },
    };
    let gateways = if args.gateways.is_empty() {
        section
            .as_ref()
            .map(|s| s.gateways.clone())
            .unwrap_or_default()
    } else {
        args.gateways.clone()
    };
    if gateways.is_empty() {
        bail!(
            "the agent needs at least one gateway: `gateways = [\"host:7844\"]` in [agent] or --gateway HOST:PORT"
        );
    }
    let pin = args
        .pin
        .clone()
        .or_else(|| section.as_ref().and_then(|s| s.gateway_pin.clone()));
    let ca = args.gateway_ca.clone().or_else(|| {
        section
            .as_ref()
            .and_then(|s| s.gateway_ca.as_ref().map(|p| base.join(p)))
    });
    let verification = match (pin, ca) {
        (Some(pin), _) => GatewayVerification::Pin(SpkiPin::from_str(&pin).map_err(|e| {
            anyhow::anyhow!(
                "invalid gateway pin {pin:?}: {e}; it looks like sha256:<64 hex digits>"
            )
        })?),
        (None, Some(ca)) => GatewayVerification::CaFile(ca),
        (None, None) => GatewayVerification::SystemRoots,
    };
    let allow_entries = if args.allow.is_empty() {
        section
            .as_ref()
            .map(|s| s.allow.clone())
            .unwrap_or_default()
    } else {
        args.allow.clone()
    };
    let allow =
        AllowList::parse(&allow_entries).map_err(|e| anyhow::anyhow!("invalid allow list: {e}"))?;
    let transport = transport_mode(args.transport, section.as_ref().map(|s| s.transport));
    let mut settings = AgentSettings::new(name, AgentToken::new(token), gateways, verification);
    settings.allow = allow;
    settings.transport = transport;
    Ok(settings)
}

pub fn run(args: &AgentArgs) -> ExitCode {
    let _logs = args.log.init();
    let plan = match plan(args) {
        Ok(p) => p,
        Err(e) => return runtime::config_error("agent", e),
    };
    runtime::block_on("agent", async move {
        let shutdown = CancellationToken::new();
        let _reloads =
            signals::install(shutdown.clone()).context("cannot install signal handlers")?;
        match plan {
            Plan::Standalone(settings) => kakuremichi_agent::run(*settings, shutdown).await?,
            Plan::Managed(managed) => managed.run(shutdown).await?,
        }
        Ok(())
    })
}
