//! Command-line syntax: one subcommand per role, plus `check` and `demo`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "kakuremichi",
    version,
    about = "Expose services in private networks through public gateways",
    long_about = "kakuremichi: public gateways that terminate TLS, route by host and path, apply per-route policies and forward to upstream URLs or through tunnels that agents dial out to. One binary, three roles: gateway, agent and control."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a gateway: listeners, routing, policies and forwarding.
    Gateway(RoleArgs),
    /// Run an agent that dials out to gateways and reaches private upstreams.
    Agent(AgentArgs),
    /// Run the control plane: API, web UI and push to gateways and agents.
    Control(RoleArgs),
    /// Validate a gateway, agent or control file; prints file:line:column: message and
    /// exits 2 on the first problem.
    Check(CheckArgs),
    /// Start a demo on localhost: a gateway in front of a built-in sample app.
    Demo(DemoArgs),
}

#[derive(Args, Debug)]
pub struct RoleArgs {
    /// The configuration file (TOML).
    #[arg(short, long, value_name = "FILE")]
    pub config: PathBuf,
    #[command(flatten)]
    pub log: LogArgs,
}

#[derive(Args, Debug)]
pub struct AgentArgs {
    /// The agent file (TOML). Without it, the flags below describe the agent.
    #[arg(short, long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// A gateway's tunnel address, host:port (repeat for several gateways).
    #[arg(long = "gateway", value_name = "HOST:PORT")]
    pub gateways: Vec<String>,
    /// The agent's token (prefer --token-file: a flag is visible to other local users).
    #[arg(long)]
    pub token: Option<String>,
    /// A file holding the agent's token.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// The agent's name: routes reach it with `via = NAME`.
    #[arg(long)]
    pub name: Option<String>,
    /// The gateway's tunnel pin, `sha256:...` (printed by the gateway at start).
    #[arg(long)]
    pub pin: Option<String>,
    /// A PEM file of the CA that signed the gateways' tunnel certificates.
    #[arg(long, value_name = "FILE")]
    pub gateway_ca: Option<PathBuf>,
    /// Upstreams the agent may dial: host:port, an IP or a CIDR (repeat); none: any.
    #[arg(long = "allow", value_name = "TARGET")]
    pub allow: Vec<String>,
    /// Tunnel transport.
    #[arg(long, value_enum)]
    pub transport: Option<TransportArg>,
    #[command(flatten)]
    pub log: LogArgs,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum TransportArg {
    Auto,
    Quic,
    Tcp,
}

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// The file to validate.
    #[arg(short, long, value_name = "FILE")]
    pub config: PathBuf,
}

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Port of the demo gateway on 127.0.0.1 (0 picks a free one).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    #[command(flatten)]
    pub log: LogArgs,
}

#[derive(Args, Debug)]
pub struct LogArgs {
    /// Log format: JSON lines (production) or text.
    #[arg(long, value_enum, default_value_t = LogFormatArg::Json)]
    pub log_format: LogFormatArg,
    /// Log level when RUST_LOG is not set (error, warn, info, debug, trace).
    #[arg(long, default_value = "info")]
    pub log_level: String,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum LogFormatArg {
    Json,
    Text,
}

impl LogArgs {
    pub fn init(&self) -> kakuremichi_telemetry::LogGuard {
        let format = match self.log_format {
            LogFormatArg::Json => kakuremichi_telemetry::LogFormat::Json,
            LogFormatArg::Text => kakuremichi_telemetry::LogFormat::Text,
        };
        kakuremichi_telemetry::init(format, &self.log_level)
    }
}
