//! Round trips and hostile input for every message of the wire format.

use std::net::SocketAddr;

use super::*;

fn header() -> StreamHeader {
    StreamHeader {
        upstream: Upstream::parse("app.internal:8080").unwrap(),
        client: "203.0.113.9:51000".parse().unwrap(),
    }
}

#[test]
fn stream_header_round_trips_v4_and_v6() {
    let h = header();
    assert_eq!(StreamHeader::decode(&h.encode()).unwrap(), h);
    let h6 = StreamHeader {
        upstream: Upstream::parse("[::1]:443").unwrap(),
        client: "[2001:db8::7]:9".parse().unwrap(),
    };
    let bytes = h6.encode();
    assert_eq!(StreamHeader::decode(&bytes).unwrap(), h6);
    assert_eq!(h6.upstream.to_string(), "[::1]:443");
    assert_eq!(h6.upstream.host(), "::1");
}

#[test]
fn every_truncation_is_an_error_not_a_panic() {
    for frame in [
        header().encode(),
        Hello::new("home", "agt_secret").unwrap().encode(),
        HelloAnswer::Refused {
            reason: "no".into(),
        }
        .encode(),
        OpenStatus::Connected.encode(),
    ] {
        for cut in 0..frame.len() {
            let err = match frame[1] {
                1 => Hello::decode(&frame[..cut]).unwrap_err(),
                2 => HelloAnswer::decode(&frame[..cut]).unwrap_err(),
                3 => StreamHeader::decode(&frame[..cut]).unwrap_err(),
                _ => OpenStatus::decode(&frame[..cut]).unwrap_err(),
            };
            assert!(
                matches!(err, ProtoError::Truncated { .. }),
                "cut at {cut}: {err:?}"
            );
        }
    }
}

#[test]
fn truncated_body_with_a_lying_length_is_detected() {
    // The prefix says 5 bytes, the body holds a string length of 200.
    let frame = [
        VERSION,
        Kind::StreamHeader as u8,
        0,
        5,
        200,
        b'a',
        b'b',
        b'c',
        b'd',
    ];
    assert!(matches!(
        StreamHeader::decode(&frame),
        Err(ProtoError::Truncated { .. })
    ));
}

#[test]
fn oversized_frames_are_refused_from_the_prefix() {
    let err = Prefix::parse([VERSION, Kind::StreamHeader as u8, 0xff, 0xff]).unwrap_err();
    assert_eq!(
        err,
        ProtoError::Oversized {
            len: PREFIX_LEN + 0xffff,
            max: MAX_FRAME
        }
    );
    let at_limit = (MAX_FRAME - PREFIX_LEN) as u16;
    let ok = Prefix::parse([VERSION, 3, (at_limit >> 8) as u8, at_limit as u8]).unwrap();
    assert_eq!(ok.body_len, MAX_FRAME - PREFIX_LEN);
    let over = at_limit + 1;
    assert!(Prefix::parse([VERSION, 3, (over >> 8) as u8, over as u8]).is_err());
}

#[test]
fn garbage_is_refused() {
    assert_eq!(
        Prefix::parse(*b"GET ").unwrap_err(),
        ProtoError::UnsupportedVersion(b'G')
    );
    assert_eq!(
        Prefix::parse([VERSION, 99, 0, 0]).unwrap_err(),
        ProtoError::UnknownKind(99)
    );
    let mut frame = header().encode();
    frame.push(0);
    assert_eq!(
        StreamHeader::decode(&frame).unwrap_err(),
        ProtoError::TrailingBytes(1)
    );
    // The right length but a body that is not a header.
    let bad_family = [VERSION, 3, 0, 5, 3, b'a', b':', b'1', 9];
    assert!(StreamHeader::decode(&bad_family).is_err());
    // A hello sent where a header was expected.
    let hello = Hello::new("a", "b").unwrap().encode();
    assert!(matches!(
        StreamHeader::decode(&hello),
        Err(ProtoError::UnexpectedKind { .. })
    ));
    // A deterministic stream of pseudo-random frames never panics.
    let mut x: u32 = 0x1234_5678;
    for _ in 0..20_000 {
        let len = (x % 40) as usize;
        let mut buf = vec![VERSION, (x % 5) as u8];
        buf.extend_from_slice(&((len as u16).to_be_bytes()));
        for _ in 0..len {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            buf.push(x as u8);
        }
        let _ = StreamHeader::decode(&buf);
        let _ = Hello::decode(&buf);
        let _ = HelloAnswer::decode(&buf);
        let _ = OpenStatus::decode(&buf);
    }
}

#[test]
fn upstream_validation() {
    for bad in [
        "",
        "host",
        "host:",
        ":80",
        "host:0",
        "host:65536",
        "ho st:80",
        "host/x:80",
        "[::1:80",
        "[zz]:80",
        "a\n:80",
    ] {
        assert!(Upstream::parse(bad).is_err(), "{bad:?} accepted");
    }
    let long = format!("{}:80", "a".repeat(260));
    assert!(Upstream::parse(&long).is_err());
    let u = Upstream::parse("LocalHost:8080").unwrap();
    assert_eq!((u.host(), u.port()), ("localhost", 8080));
    assert_eq!(u.to_string(), "localhost:8080");
}

#[test]
fn hello_hides_its_token_and_checks_sizes() {
    let h = Hello::new("home", "agt_secret").unwrap();
    assert!(!format!("{h:?}").contains("agt_secret"));
    assert_eq!(Hello::decode(&h.encode()).unwrap(), h);
    assert!(Hello::new("home", "").is_err());
    assert!(Hello::new("home", &"t".repeat(256)).is_err());
    assert!(Hello::new(&"n".repeat(256), "t").is_err());
}

#[test]
fn answers_and_statuses_round_trip_and_long_text_is_cut() {
    let long = "é".repeat(300);
    let a = HelloAnswer::Refused {
        reason: long.clone(),
    };
    let HelloAnswer::Refused { reason } = HelloAnswer::decode(&a.encode()).unwrap() else {
        panic!("kind changed");
    };
    assert!(reason.len() <= 255 && long.starts_with(&reason));
    let s = OpenStatus::Refused {
        reason: RefuseReason::DialTimeout,
        message: "10.0.0.1:80 after 5s".into(),
    };
    assert_eq!(OpenStatus::decode(&s.encode()).unwrap(), s);
    assert_eq!(
        OpenStatus::decode(&OpenStatus::Connected.encode()).unwrap(),
        OpenStatus::Connected
    );
    let unknown = [VERSION, 4, 0, 2, 77, 0];
    assert_eq!(
        OpenStatus::decode(&unknown).unwrap(),
        OpenStatus::Refused {
            reason: RefuseReason::Other(77),
            message: String::new()
        }
    );
}

#[test]
fn largest_header_fits_in_a_frame() {
    let host = "a".repeat(249);
    let h = StreamHeader {
        upstream: Upstream::parse(&format!("{host}:65535")).unwrap(),
        client: SocketAddr::new(std::net::Ipv6Addr::LOCALHOST.into(), 1),
    };
    let bytes = h.encode();
    assert!(bytes.len() <= MAX_FRAME);
    assert_eq!(StreamHeader::decode(&bytes).unwrap(), h);
}
