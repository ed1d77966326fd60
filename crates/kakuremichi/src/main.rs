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

/// mimalloc: per-thread free lists and no fastbin consolidation make the many short-lived
/// allocations of the request path (headers, bodies' frames, futures) cheaper than glibc's
/// malloc, and keep each serving thread's memory on its own pages.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
