//! Logging set-up shared by every role: JSON lines (the default, for production) or
//! human-readable text, written by a background thread so that request handling never
//! blocks on stdout. Access-log lines use the target [`ACCESS_TARGET`].
#![forbid(unsafe_code)]

use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::EnvFilter;

/// `tracing` target of the one-line-per-request access log.
pub const ACCESS_TARGET: &str = "kakuremichi::access";

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

/// Keeps the background writer alive; drop it last so buffered lines are flushed.
pub struct LogGuard(#[allow(dead_code)] WorkerGuard);

/// Installs the global subscriber. `default_level` applies when `RUST_LOG` is not set.
pub fn init(format: LogFormat, default_level: &str) -> LogGuard {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .buffered_lines_limit(64 * 1024)
        .finish(std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    let result = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .try_init(),
        LogFormat::Text => builder.with_ansi(false).try_init(),
    };
    if let Err(e) = result {
        eprintln!("logging was already set up: {e}");
    }
    LogGuard(guard)
}
