//! The gateway role of kakuremichi: listeners, the request path (routing, policies,
//! forwarding with streamed bodies, upgrades), upstream pools and health, metrics and the
//! admin endpoints.
//!
//! Entry point: [`Gateway::bind`] then [`Gateway::run`]; [`ReloadHandle::reload`] swaps in a
//! new configuration while requests run.
#![forbid(unsafe_code)]

mod access_log;
mod admin;
mod body;
mod conn;
mod error;
mod forward;
mod h1;
mod handler;
mod head_fields;
mod head_reject;
mod header_edits;
mod lazy_deadline;
mod listener;
mod metrics;
mod request_id;
mod server;
mod state;
mod stop_signal;
mod tls_setup;
mod tunnel_setup;
mod upgrade;
mod upstream;
mod workers;

pub use server::{BoundAddrs, Gateway, GatewayError, ReloadHandle};
pub use state::BuildError;
