//! Tests of the loaders: good files parse, each kind of mistake is reported at its position.

use std::path::Path;

use super::*;

fn gw(text: &str) -> Result<GatewayConfig, String> {
    parse_gateway(Path::new("/etc/k/gateway.toml"), text).map_err(|e| e.to_string())
}

const MINIMAL: &str = r#"
[gateway]
http = "127.0.0.1:8080"

[[routes]]
name = "app"
upstream = "http://127.0.0.1:9000"
"#;

#[test]
fn minimal_file_gets_defaults() {
    let c = gw(MINIMAL).unwrap();
    assert_eq!(c.routes.len(), 1);
    let r = &c.routes[0];
    assert_eq!(r.path, "/");
    assert!(r.enabled && r.tls_verify && !r.strip_path);
    assert_eq!(r.connect_timeout, std::time::Duration::from_secs(5));
    assert_eq!(c.settings.max_header_size, 64 << 10);
    assert_eq!(c.settings.request_id_header.as_str(), "x-request-id");
    assert_eq!(c.settings.state_dir, Path::new("/etc/k/state"));
    assert!(!c.settings.redirect_https);
}

#[test]
fn full_example_from_the_design_parses() {
    let text = r#"
[gateway]
http = "0.0.0.0:80"
https = "0.0.0.0:443"
tunnel = "0.0.0.0:7844"
admin = "127.0.0.1:9090"
state_dir = "/var/lib/kakuremichi"
redirect_https = true
request_id_header = "x-correlation-id"
trusted_proxies = ["10.0.0.0/8"]
max_header_size = "64KiB"
header_timeout = "10s"
max_connections = 10000
drain_timeout = "30s"
ca_roots = "extra-roots.pem"

[tls]
certificates = [{ cert = "site.pem", key = "site.key" }]
[tls.acme]
email = "ops@example.com"
directory = "https://acme-v02.api.letsencrypt.org/directory"
ca_roots = "acme-ca.pem"
challenge = "http-01"
renew_before = "30d"

[[agents]]
name = "home"
token_sha256 = "0000000000000000000000000000000000000000000000000000000000000000"

[[routes]]
name = "ai-interview"
hosts = ["cloud.example.tech"]
path = "/ai-interview/"
strip_path = true
methods = ["GET", "POST"]
upstream = "https://d111.cloudfront.example"
via = "home"
host_header = "d111.cloudfront.example"
tls_verify = true
max_body = "500MiB"
timeouts = { connect = "5s", response = "60s", idle = "24h" }
load_balance = "round_robin"
health_check = { path = "/healthz", interval = "5s" }
enabled = true

[routes.jwt]
jwks_uri = "https://idp.example/.well-known/jwks.json"
issuer = "https://idp.example"
audiences = ["client-id"]
algorithms = ["RS256"]
roles_claim = "cognito:groups"
require_roles = ["admin"]
scopes_claim = "scope"
require_scopes = ["service/user.read"]
forward_claims = { "x-user-sub" = "sub" }

[routes.rate_limit]
key = "ip"
requests = 100
per = "1m"
burst = 20

[routes.api_keys]
header = "x-api-key"
keys_file = "api-keys.toml"

[routes.cors]
allow_origins = ["https://cloud.example.tech"]
allow_methods = ["GET", "POST", "PUT", "DELETE", "OPTIONS"]
allow_headers = ["content-type", "authorization"]
allow_credentials = true
max_age = "10m"

[routes.ip]
allow = ["203.0.113.0/24"]
deny = []

[routes.headers]
request_set = { "x-from" = "edge" }
request_remove = ["x-internal"]
response_set = { "strict-transport-security" = "max-age=31536000" }
"#;
    let c = gw(text).unwrap();
    let r = &c.routes[0];
    assert_eq!(r.path, "/ai-interview");
    assert_eq!(r.idle_timeout, std::time::Duration::from_secs(86400));
    assert_eq!(r.max_body, Some(500 << 20));
    assert_eq!(
        c.settings.ca_roots.as_deref(),
        Some(Path::new("/etc/k/extra-roots.pem"))
    );
    assert_eq!(
        r.api_keys.as_ref().unwrap().keys_file,
        Path::new("/etc/k/api-keys.toml")
    );
    assert!(c.settings.redirect_https);
}

fn expect_error(text: &str, position: &str, words: &str) {
    let e = gw(text).expect_err("should fail");
    assert!(
        e.starts_with(&format!("/etc/k/gateway.toml:{position}: ")),
        "error {e:?} should be at {position}"
    );
    assert!(e.contains(words), "error {e:?} should mention {words:?}");
}

#[test]
fn unknown_key_is_reported_at_the_key() {
    expect_error(
        "[gateway]\nhttp = \"127.0.0.1:1\"\nlisten = 5\n",
        "3:1",
        "unknown field `listen`",
    );
    expect_error(
        &format!("{MINIMAL}upstrem = \"http://x\"\n"),
        "8:1",
        "unknown field `upstrem`",
    );
}

#[test]
fn bad_values_are_reported_at_the_value() {
    expect_error(
        "[gateway]\nhttp = \"127.0.0.1:1\"\nheader_timeout = \"10 parsecs\"\n",
        "3:18",
        "invalid duration",
    );
    expect_error(
        "[gateway]\nhttp = \"127.0.0.1:1\"\nmax_header_size = \"lots\"\n",
        "3:19",
        "invalid size",
    );
    expect_error(
        "[gateway]\nhttp = \"localhost\"\n",
        "2:8",
        "invalid listen address",
    );
    expect_error(
        "[gateway]\nhttp = \"127.0.0.1:1\"\ntrusted_proxies = [\"10.0.0.0/99\"]\n",
        "3:19",
        "invalid CIDR",
    );
    expect_error(
        "[gateway]\nhttp = \"127.0.0.1:1\"\n[[routes]]\nname = \"a\"\nupstream = \"ftp://x\"\n",
        "5:12",
        "invalid upstream URL",
    );
    expect_error(
        "[gateway]\nhttp = \"127.0.0.1:1\"\nheader_timeout = 10\n",
        "3:18",
        "durations are strings",
    );
}

#[test]
fn cross_field_mistakes() {
    expect_error(
        &format!(
            "{MINIMAL}\n[[routes]]\nname = \"app\"\nupstream = \"http://127.0.0.1:9001\"\npath = \"/x\"\n"
        ),
        "10:8",
        "duplicate route name",
    );
    expect_error(
        &format!(
            "{MINIMAL}\n[[routes]]\nname = \"other\"\nupstream = \"http://127.0.0.1:9001\"\npath = \"/\"\n"
        ),
        "12:8",
        "same hosts and path",
    );
    expect_error(
        "[gateway]\nhttps = \"127.0.0.1:8443\"\n",
        "2:9",
        "no [tls] section",
    );
    expect_error(
        "[gateway]\nhttp = \"127.0.0.1:1\"\n[[routes]]\nname = \"a\"\nupstream = \"http://x\"\nvia = \"nobody\"\n",
        "6:7",
        "names no agent",
    );
    expect_error(
        "[gateway]\nhttp = \"127.0.0.1:1\"\n[[routes]]\nname = \"a\"\n",
        "4:8",
        "needs `upstream",
    );
}

#[test]
fn same_path_with_disjoint_methods_is_allowed() {
    let text = format!(
        "{MINIMAL}methods = [\"GET\"]\n[[routes]]\nname = \"writes\"\nupstream = \"http://127.0.0.1:9001\"\nmethods = [\"POST\"]\n"
    );
    assert_eq!(gw(&text).unwrap().routes.len(), 2);
}

#[test]
fn kinds_are_detected() {
    let p = Path::new("x.toml");
    assert_eq!(detect_kind(p, MINIMAL).unwrap(), FileKind::Gateway);
    assert_eq!(
        detect_kind(p, "[agent]\nname = \"a\"\n").unwrap(),
        FileKind::Agent
    );
    assert_eq!(
        detect_kind(p, "[control]\nurl = \"https://c\"\ntoken = \"agt_x\"\n").unwrap(),
        FileKind::Agent
    );
    assert_eq!(
        detect_kind(p, "[control]\nlisten = \"127.0.0.1:3000\"\n").unwrap(),
        FileKind::Control
    );
    assert!(detect_kind(p, "x = 1\n").is_err());
    let e = detect_kind(p, "[gateway\n").unwrap_err().to_string();
    assert!(e.starts_with("x.toml:1:"), "{e}");
}
