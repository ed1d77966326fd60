//! The gateway's decision on an agent's hello, shared by both transports: accepted under a
//! name, or refused with a reason that goes to the agent and to the gateway's log.

use std::net::SocketAddr;

use crate::auth::TokenHash;
use crate::proto::{Hello, HelloAnswer};
use crate::registry::AgentRegistry;
use crate::stats::inc;
use crate::transport::TransportKind;

pub(super) struct Verdict {
    pub(super) answer: HelloAnswer,
    pub(super) accepted: Option<(String, TokenHash)>,
}

pub(super) fn decide(
    registry: &AgentRegistry,
    hello: &Hello,
    remote: SocketAddr,
    kind: TransportKind,
) -> Verdict {
    match registry.auth().check(hello) {
        Ok((name, hash)) => Verdict {
            answer: HelloAnswer::Accepted { name: name.clone() },
            accepted: Some((name, hash)),
        },
        Err(reason) => {
            inc(&registry.stats_ref().handshakes_refused);
            tracing::warn!(
                agent = %hello.name(), agent_addr = %remote, transport = %kind,
                "refused an agent: {reason}"
            );
            Verdict {
                answer: HelloAnswer::Refused { reason },
                accepted: None,
            }
        }
    }
}
