//! The kakuremichi tunnel: how a gateway reaches upstreams in private networks through
//! agents that dialed out to it.
//!
//! - [`proto`]: the wire format (hello, stream header, open status), no I/O.
//! - [`TunnelIdentity`] and [`SpkiPin`]: the gateway's key pair and its pin;
//!   [`GatewayVerification`]: how an agent checks the gateway (pin, CA file, system roots).
//! - Gateway side: [`TunnelServer`] accepts agents (QUIC on UDP, TLS+HTTP/2 on TCP, same
//!   port) and authenticates them with [`AgentAuth`]; [`AgentRegistry::open`] gives a
//!   [`TunnelStream`] to an upstream through an agent of a group.
//! - Agent side: [`Connector`] dials a gateway and yields an [`AgentSession`] of
//!   [`IncomingStream`]s.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

mod auth;
mod connector;
mod frame_io;
mod identity;
mod limits;
mod pin;
pub mod proto;
mod registry;
mod server;
mod stats;
mod stream;
mod tls;
mod transport;
mod verify;

pub use auth::{AgentAuth, TokenHash, TokenHashError};
pub use connector::{AgentSession, ConnectError, Connector, IncomingStream, SessionEnded};
pub use frame_io::FrameError;
pub use identity::{IdentityError, TunnelIdentity};
pub use limits::Limits;
pub use pin::{PinError, SpkiPin};
pub use proto::{RefuseReason, StreamHeader, Upstream};
pub use registry::{AgentRegistry, GroupStats, OpenError};
pub use server::{BindError, ServerOptions, TunnelServer};
pub use stats::StatsSnapshot;
pub use stream::TunnelStream;
pub use transport::TransportKind;
pub use verify::{GatewayVerification, TlsSetupError};
