//! Connects to an upstream the allow list permits, within the connect timeout. For network
//! entries the name is resolved once and only permitted addresses are dialed, so a DNS
//! answer cannot smuggle in another address between check and connect.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use kakuremichi_tunnel::{RefuseReason, Upstream};
use tokio::net::TcpStream;

use crate::allow::{AllowList, Verdict};

/// Why an upstream was not connected.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DialError {
    #[error("{0} is not in the allow list")]
    NotAllowed(Upstream),
    #[error("cannot resolve {upstream}: {source}")]
    Resolve {
        upstream: Upstream,
        #[source]
        source: io::Error,
    },
    #[error("cannot connect to {upstream}: {source}")]
    Connect {
        upstream: Upstream,
        #[source]
        source: io::Error,
    },
    #[error("connecting to {upstream} timed out after {timeout:?}")]
    Timeout {
        upstream: Upstream,
        timeout: Duration,
    },
}

impl DialError {
    pub(crate) fn reason(&self) -> RefuseReason {
        match self {
            DialError::NotAllowed(_) => RefuseReason::NotAllowed,
            DialError::Timeout { .. } => RefuseReason::DialTimeout,
            DialError::Resolve { .. } | DialError::Connect { .. } => RefuseReason::DialFailed,
        }
    }
}

pub(crate) async fn dial(
    upstream: &Upstream,
    allow: &AllowList,
    timeout: Duration,
) -> Result<TcpStream, DialError> {
    let verdict = allow.verdict(upstream);
    if verdict == Verdict::Denied {
        return Err(DialError::NotAllowed(upstream.clone()));
    }
    let attempt = async {
        let resolved: Vec<SocketAddr> = tokio::net::lookup_host((upstream.host(), upstream.port()))
            .await
            .map_err(|source| DialError::Resolve {
                upstream: upstream.clone(),
                source,
            })?
            .collect();
        let candidates: Vec<SocketAddr> = match verdict {
            Verdict::Allowed => resolved,
            _ => resolved
                .into_iter()
                .filter(|a| allow.permits_address(a.ip()))
                .collect(),
        };
        if candidates.is_empty() {
            return Err(DialError::NotAllowed(upstream.clone()));
        }
        let mut last = io::Error::new(io::ErrorKind::NotFound, "no addresses");
        for addr in candidates {
            match TcpStream::connect(addr).await {
                Ok(stream) => {
                    let _ = stream.set_nodelay(true);
                    return Ok(stream);
                }
                Err(e) => last = e,
            }
        }
        Err(DialError::Connect {
            upstream: upstream.clone(),
            source: last,
        })
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .map_err(|_| DialError::Timeout {
            upstream: upstream.clone(),
            timeout,
        })?
}
