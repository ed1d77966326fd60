//! The `kakuremichi` binary: parses the command line and hands over to a role.
#![forbid(unsafe_code)]

mod agent;
mod check;
mod cli;
mod control;
mod demo;
mod gateway;
mod managed_agent;
mod runtime;
mod sample_app;
mod signals;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match cli.command {
        cli::Command::Check(args) => check::run(&args),
        cli::Command::Gateway(args) => gateway::run(&args),
        cli::Command::Demo(args) => demo::run(&args),
        cli::Command::Agent(args) => agent::run(&args),
        cli::Command::Control(args) => control::run(&args),
    }
}
