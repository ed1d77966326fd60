//! The agent's allow list: which upstreams a gateway may ask it to dial. Entries are exact
//! `host:port` (compared as written, host case-insensitive) or IP networks (`10.0.0.0/24`,
//! a single address; any port). A host name passes a network entry only through the
//! addresses it resolves to, and only those addresses are dialed.

use std::net::IpAddr;

use ipnet::IpNet;
use kakuremichi_tunnel::Upstream;

/// An `allow` entry that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid allow entry {entry:?}: expected host:port, an IP address, or a network like 10.0.0.0/24"
)]
pub struct AllowError {
    pub entry: String,
}

/// Upstreams the agent may reach. Empty: any.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList {
    exact: Vec<Upstream>,
    nets: Vec<IpNet>,
}

/// What the list says about an upstream before resolving it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Allowed, whatever it resolves to.
    Allowed,
    /// Allowed only for resolved addresses in one of the networks.
    IfAddressAllowed,
    Denied,
}

impl AllowList {
    /// Parses `allow` entries.
    pub fn parse<I, S>(entries: I) -> Result<AllowList, AllowError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut list = AllowList::default();
        for entry in entries {
            let entry = entry.as_ref().trim();
            let error = || AllowError {
                entry: entry.to_string(),
            };
            if entry.contains('/') {
                list.nets.push(entry.parse::<IpNet>().map_err(|_| error())?);
            } else if let Ok(ip) = entry.parse::<IpAddr>() {
                list.nets.push(IpNet::from(ip));
            } else {
                list.exact
                    .push(Upstream::parse(entry).map_err(|_| error())?);
            }
        }
        Ok(list)
    }

    /// No entries: every upstream is allowed.
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.nets.is_empty()
    }

    pub(crate) fn verdict(&self, upstream: &Upstream) -> Verdict {
        if self.is_empty() || self.exact.contains(upstream) {
            Verdict::Allowed
        } else if self.nets.is_empty() {
            Verdict::Denied
        } else {
            Verdict::IfAddressAllowed
        }
    }

    pub(crate) fn permits_address(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.nets.iter().any(|net| net.contains(&ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(s: &str) -> Upstream {
        Upstream::parse(s).unwrap()
    }

    #[test]
    fn exact_entries_and_networks() {
        let list = AllowList::parse(["LocalHost:8080", "10.0.0.0/24", "192.168.1.7", "[::1]:9000"])
            .unwrap();
        assert_eq!(list.verdict(&up("localhost:8080")), Verdict::Allowed);
        assert_eq!(list.verdict(&up("[::1]:9000")), Verdict::Allowed);
        assert_eq!(
            list.verdict(&up("localhost:8081")),
            Verdict::IfAddressAllowed
        );
        assert!(list.permits_address("10.0.0.200".parse().unwrap()));
        assert!(list.permits_address("::ffff:10.0.0.1".parse().unwrap()));
        assert!(list.permits_address("192.168.1.7".parse().unwrap()));
        assert!(!list.permits_address("10.0.1.1".parse().unwrap()));
        assert!(!list.permits_address("192.168.1.8".parse().unwrap()));

        let only_exact = AllowList::parse(["app:80"]).unwrap();
        assert_eq!(only_exact.verdict(&up("app:81")), Verdict::Denied);
        assert_eq!(AllowList::default().verdict(&up("any:1")), Verdict::Allowed);
    }

    #[test]
    fn bad_entries_are_errors() {
        for bad in ["10.0.0.0/33", "host", "host:*", "", "a b:80"] {
            assert!(AllowList::parse([bad]).is_err(), "{bad:?}");
        }
    }
}
