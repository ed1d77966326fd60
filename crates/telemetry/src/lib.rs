//! Logging set-up shared by every role: JSON lines (the default, for production) or
//! human-readable text, written in batches by a background thread so that request handling
//! does not wait for stdout. Access-log lines use the target [`ACCESS_TARGET`].
#![forbid(unsafe_code)]

mod batch;
mod json_line;
pub mod rfc3339;

use std::sync::OnceLock;

use tracing_subscriber::EnvFilter;

pub use json_line::JsonLine;

/// The writer of hand-made JSON lines, set by [`init`] in JSON format only.
static JSON_LINES: OnceLock<batch::BatchWriter> = OnceLock::new();

/// `tracing` target of the one-line-per-request access log.
pub const ACCESS_TARGET: &str = "kakuremichi::access";

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

/// Keeps the background writer alive; drop it last so buffered lines are flushed.
pub struct LogGuard(#[allow(dead_code)] batch::BatchGuard);

/// Installs the global subscriber. `default_level` applies when `RUST_LOG` is not set.
pub fn init(format: LogFormat, default_level: &str) -> LogGuard {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let (writer, guard) = batch::start();
    if format == LogFormat::Json {
        let _ = JSON_LINES.set(writer.clone());
    }
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

/// Writes one access-log line (level INFO, target [`ACCESS_TARGET`]) with `fields`, in the
/// shape the JSON formatter gives every other line, when that target is enabled. Returns
/// `false` when logging is not JSON lines set up by [`init`] (text format, or a test's own
/// subscriber): the caller logs through `tracing` instead.
pub fn access_line(fields: impl FnOnce(&mut JsonLine)) -> bool {
    let Some(writer) = JSON_LINES.get() else {
        return false;
    };
    if tracing::enabled!(target: ACCESS_TARGET, tracing::Level::INFO) {
        json_line::write_info(writer, ACCESS_TARGET, fields);
    }
    true
}
