//! Free loopback ports for test servers. A port is free when the kernel hands it out for
//! `127.0.0.1:0`, but the kernel may hand the same one out again before anyone listens on
//! it; so every port given out here is remembered and never given out twice in one test
//! process (tests of one binary run on parallel threads and start servers side by side).

use std::collections::HashSet;
use std::net::{TcpListener, UdpSocket};
use std::sync::Mutex;

static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// Records `port` as given out; false when it already was.
fn claim(port: u16) -> bool {
    let mut given = GIVEN
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    given.get_or_insert_with(HashSet::new).insert(port)
}

/// A TCP port free on 127.0.0.1 a moment ago and not given out before by this process.
pub fn free_port() -> u16 {
    for _ in 0..200 {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("bind 127.0.0.1:0");
        if claim(port) {
            return port;
        }
    }
    panic!("no fresh TCP port on 127.0.0.1 after 200 tries");
}

/// A port free on 127.0.0.1 for both TCP and UDP a moment ago (DNS servers and the tunnel
/// listen on both), not given out before by this process.
pub fn free_tcp_udp_port() -> u16 {
    for _ in 0..200 {
        let udp = UdpSocket::bind("127.0.0.1:0").expect("bind udp 127.0.0.1:0");
        let port = udp.local_addr().expect("udp local address").port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() && claim(port) {
            return port;
        }
    }
    panic!("no port free on both TCP and UDP of 127.0.0.1 after 200 tries");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_gives_the_same_port_twice() {
        let mut seen = HashSet::new();
        for _ in 0..300 {
            assert!(seen.insert(free_port()));
            assert!(seen.insert(free_tcp_udp_port()));
        }
    }
}
