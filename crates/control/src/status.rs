//! Health of agents and gateways from their heartbeats and last status report:
//! `healthy`, `degraded` (connected, but late or reporting a problem) or `down`.

use serde::Serialize;

use crate::protocol::{HEARTBEAT_INTERVAL, Role, SILENCE_LIMIT, StatusReport};
use crate::store::Peer;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Health {
    Healthy,
    Degraded,
    Down,
}

/// The health of a peer and, unless healthy, why.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Assessment {
    pub health: Health,
    pub reason: Option<String>,
}

fn ms(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Parses the stored report; an unreadable one counts as none.
pub(crate) fn report_of(peer: &Peer) -> StatusReport {
    peer.report
        .as_deref()
        .and_then(|r| serde_json::from_str(r).ok())
        .unwrap_or_default()
}

/// `gateways` are the names and addresses of every gateway, for agents' coverage.
pub(crate) fn assess(
    peer: &Peer,
    report: &StatusReport,
    now: i64,
    gateways: &[(String, String)],
) -> Assessment {
    let down = |reason: &str| Assessment {
        health: Health::Down,
        reason: Some(reason.to_string()),
    };
    let Some(last_seen) = peer.last_seen else {
        return down("never connected");
    };
    if peer.disconnected_at.is_some_and(|d| d >= last_seen) {
        return down("disconnected");
    }
    let age = now.saturating_sub(last_seen);
    if age > ms(SILENCE_LIMIT) {
        return down("no heartbeat");
    }
    let mut problems = Vec::new();
    if age > ms(HEARTBEAT_INTERVAL) * 2 {
        problems.push(format!("last heartbeat {}s ago", age / 1000));
    }
    match peer.role {
        Role::Agent => {
            if let Some(connected) = &report.connected_gateways {
                let reached = gateways
                    .iter()
                    .filter(|(name, address)| connected.iter().any(|c| c == name || c == address))
                    .count();
                if reached < gateways.len() {
                    problems.push(format!(
                        "connected to {reached} of {} gateways",
                        gateways.len()
                    ));
                }
            }
        }
        Role::Gateway => {
            for c in &report.certificates {
                if matches!(c.state.as_str(), "error" | "expired") {
                    problems.push(format!(
                        "certificate for {} is {}{}",
                        c.hosts.join(", "),
                        c.state,
                        c.error
                            .as_deref()
                            .map(|e| format!(": {e}"))
                            .unwrap_or_default()
                    ));
                }
            }
        }
    }
    problems.extend(report.errors.iter().cloned());
    if problems.is_empty() {
        Assessment {
            health: Health::Healthy,
            reason: None,
        }
    } else {
        Assessment {
            health: Health::Degraded,
            reason: Some(problems.join("; ")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::CertificateStatus;

    fn peer(role: Role, last_seen: Option<i64>, disconnected_at: Option<i64>) -> Peer {
        Peer {
            id: "1".into(),
            role,
            name: "p".into(),
            address: None,
            token_sha256: String::new(),
            pin: None,
            created_at: 0,
            last_seen,
            disconnected_at,
            report: None,
        }
    }

    #[test]
    fn heartbeats_decide_down_degraded_healthy() {
        let gws = vec![
            ("gw1".to_string(), "a:1".to_string()),
            ("gw2".into(), "b:1".into()),
        ];
        let none = StatusReport::default();
        let now = 100_000;
        assert_eq!(
            assess(&peer(Role::Agent, None, None), &none, now, &gws).health,
            Health::Down
        );
        assert_eq!(
            assess(
                &peer(Role::Agent, Some(now - 1000), Some(now)),
                &none,
                now,
                &gws
            )
            .health,
            Health::Down
        );
        assert_eq!(
            assess(
                &peer(Role::Agent, Some(now - 60_000), None),
                &none,
                now,
                &gws
            )
            .health,
            Health::Down
        );
        assert_eq!(
            assess(
                &peer(Role::Agent, Some(now - 12_000), None),
                &none,
                now,
                &gws
            )
            .health,
            Health::Degraded
        );
        assert_eq!(
            assess(
                &peer(Role::Agent, Some(now - 1000), Some(now - 2000)),
                &none,
                now,
                &gws
            )
            .health,
            Health::Healthy
        );
        let half = StatusReport {
            connected_gateways: Some(vec!["gw1".into()]),
            ..Default::default()
        };
        let a = assess(&peer(Role::Agent, Some(now), None), &half, now, &gws);
        assert_eq!(a.health, Health::Degraded);
        assert_eq!(a.reason.as_deref(), Some("connected to 1 of 2 gateways"));
        let all = StatusReport {
            connected_gateways: Some(vec!["gw1".into(), "b:1".into()]),
            ..Default::default()
        };
        assert_eq!(
            assess(&peer(Role::Agent, Some(now), None), &all, now, &gws).health,
            Health::Healthy
        );
        let bad_cert = StatusReport {
            certificates: vec![CertificateStatus {
                hosts: vec!["a.example".into()],
                state: "error".into(),
                not_after: None,
                error: Some("rate limited".into()),
            }],
            ..Default::default()
        };
        let g = assess(&peer(Role::Gateway, Some(now), None), &bad_cert, now, &gws);
        assert_eq!(g.health, Health::Degraded);
        assert!(g.reason.as_deref().is_some_and(|r| r.contains("a.example")));
    }
}
