//! Request ids: taken from the client's request id header when it is sane, generated otherwise.

use std::cell::Cell;

use http::HeaderValue;

thread_local! {
    static STATE: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_err() {
        // No OS randomness: fall back on the time and the thread; ids stay unique enough.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        return t ^ 0x9E37_79B9_7F4A_7C15;
    }
    u64::from_le_bytes(bytes) | 1
}

/// splitmix64: fast, and good enough for ids that only need to be unique.
fn next_u64() -> u64 {
    STATE.with(|s| {
        let mut z = s.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
        s.set(z);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    })
}

/// A fresh 32-hex-digit id.
pub fn generate() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 32];
    for (half, value) in [next_u64(), next_u64()].into_iter().enumerate() {
        for i in 0..16 {
            out[half * 16 + i] = HEX[((value >> (60 - 4 * i)) & 0xF) as usize];
        }
    }
    HeaderValue::from_bytes(&out).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

/// Keeps a client-sent id if it is 1..=128 visible ASCII characters, else makes one.
pub fn from_request(value: Option<&HeaderValue>) -> HeaderValue {
    match value {
        Some(v)
            if !v.is_empty()
                && v.len() <= 128
                && v.as_bytes().iter().all(|b| (0x21..0x7f).contains(b)) =>
        {
            v.clone()
        }
        _ => generate(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_differ_and_are_hex() {
        let a = generate();
        let b = generate();
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        assert!(a.as_bytes().iter().all(|b| b.is_ascii_hexdigit()));
    }

    #[test]
    fn client_ids_are_kept_when_sane() {
        let v = HeaderValue::from_static("abc-123");
        assert_eq!(from_request(Some(&v)), v);
        let spaced = HeaderValue::from_static("a b");
        assert_ne!(from_request(Some(&spaced)), spaced);
        let long = HeaderValue::from_str(&"x".repeat(200)).unwrap();
        assert_eq!(from_request(Some(&long)).len(), 32);
    }
}
