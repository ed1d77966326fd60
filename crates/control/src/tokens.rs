//! Tokens and ids: `agt_` / `gtw_` / `adm_` + 256 random bits in hex, kept only as SHA-256
//! hashes (the same hex hash a standalone gateway's `token_sha256` holds), compared in
//! constant time. The admin token lives in a file the operator keeps.

use std::io::Write;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::error::ControlError;

pub(crate) const AGENT_PREFIX: &str = "agt_";
pub(crate) const GATEWAY_PREFIX: &str = "gtw_";
pub(crate) const ADMIN_PREFIX: &str = "adm_";

fn random_hex(bytes: usize) -> Result<String, std::io::Error> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(hex(&buf))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

/// A new token: `prefix` + 64 hex digits (256 random bits).
pub(crate) fn generate(prefix: &str) -> Result<String, std::io::Error> {
    Ok(format!("{prefix}{}", random_hex(32)?))
}

/// A new opaque id for an agent, gateway or route (64 random bits).
pub(crate) fn new_id() -> Result<String, std::io::Error> {
    random_hex(8)
}

/// Lowercase hex SHA-256 of the token text, as stored and as pushed to gateways.
pub(crate) fn sha256_hex(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))
}

/// Equality that takes the same time wherever the inputs differ.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The admin token's hash; the token itself stays in its file.
#[derive(Clone)]
pub(crate) struct AdminToken {
    hash: [u8; 32],
}

impl AdminToken {
    pub(crate) fn matches(&self, presented: &str) -> bool {
        let h: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        constant_time_eq(&h, &self.hash)
    }
}

/// Reads the admin token file, or creates it (mode 0600) with a new token that is printed
/// once to stdout. Returns the hash and whether the file was created.
pub(crate) fn load_or_create_admin(path: &Path) -> Result<(AdminToken, bool), ControlError> {
    let io_err = |source| ControlError::AdminToken {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let token = text.trim();
            if token.is_empty() {
                return Err(ControlError::EmptyAdminToken {
                    path: path.to_path_buf(),
                });
            }
            Ok((
                AdminToken {
                    hash: Sha256::digest(token.as_bytes()).into(),
                },
                false,
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let token = generate(ADMIN_PREFIX).map_err(io_err)?;
            write_new_secret_file(path, &token).map_err(io_err)?;
            println!(
                "kakuremichi control: new admin token (shown once; also in {}): {token}",
                path.display()
            );
            Ok((
                AdminToken {
                    hash: Sha256::digest(token.as_bytes()).into(),
                },
                true,
            ))
        }
        Err(e) => Err(io_err(e)),
    }
}

fn write_new_secret_file(path: &Path, token: &str) -> Result<(), std::io::Error> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(format!("{token}\n").as_bytes())?;
    file.sync_all()
}

/// Which kind of peer a push token belongs to, from its prefix.
pub(crate) fn peer_prefix_ok(token: &str) -> bool {
    token.starts_with(AGENT_PREFIX) || token.starts_with(GATEWAY_PREFIX)
}

/// Temporary-file helper for tests in this crate.
#[cfg(test)]
pub(crate) fn temp_path(name: &str) -> std::path::PathBuf {
    let id = new_id().unwrap_or_default();
    std::env::temp_dir().join(format!("kakuremichi-control-{id}-{name}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_have_prefix_and_256_bits() {
        let t = generate(AGENT_PREFIX).expect("random");
        assert!(t.starts_with("agt_"));
        assert_eq!(t.len(), 4 + 64);
        assert_ne!(t, generate(AGENT_PREFIX).expect("random"));
        assert_eq!(sha256_hex("abc").len(), 64);
        assert_eq!(
            sha256_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn admin_token_file_is_created_once() {
        let path = temp_path("admin.token");
        let (a, created) = load_or_create_admin(&path).expect("create");
        assert!(created);
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(a.matches(text.trim()));
        assert!(!a.matches("adm_wrong"));
        let (b, created) = load_or_create_admin(&path).expect("load");
        assert!(!created);
        assert!(b.matches(text.trim()));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let _ = std::fs::remove_file(&path);
    }
}
