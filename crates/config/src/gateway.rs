//! The gateway file (`gateway.toml`): serde model with defaults, and the cross-field checks
//! that turn it into a [`GatewayConfig`].

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::time::Duration;

use http::Method;
use kakuremichi_router::{HostPattern, normalize_path};
use serde::Deserialize;
use toml::Spanned;

use crate::client::ControlClient;
use crate::error::{SpannedMessage, err};
use crate::net::{Cidr, ListenAddr, UpstreamUrl};
use crate::policy::{ApiKeysPolicy, CorsPolicy, HeaderEdits, IpPolicy, JwtPolicy, RateLimitPolicy};
use crate::secret::Secret;
use crate::units::{ConfigDuration, ConfigSize};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayFile {
    pub gateway: GatewaySection,
    pub control: Option<ControlClient>,
    pub tls: Option<TlsSection>,
    #[serde(default)]
    pub agents: Vec<AgentEntry>,
    #[serde(default)]
    pub routes: Vec<Spanned<RouteSection>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewaySection {
    pub http: Option<ListenAddr>,
    pub https: Option<Spanned<ListenAddr>>,
    pub tunnel: Option<ListenAddr>,
    pub admin: Option<ListenAddr>,
    pub state_dir: Option<PathBuf>,
    pub redirect_https: Option<bool>,
    #[serde(default = "default_request_id_header")]
    pub request_id_header: Spanned<String>,
    #[serde(default)]
    pub trusted_proxies: Vec<Cidr>,
    #[serde(default = "default_max_header_size")]
    pub max_header_size: ConfigSize,
    #[serde(default = "default_header_timeout")]
    pub header_timeout: ConfigDuration,
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    #[serde(default = "default_drain_timeout")]
    pub drain_timeout: ConfigDuration,
    pub ca_roots: Option<PathBuf>,
}

fn default_request_id_header() -> Spanned<String> {
    Spanned::new(0..0, "x-request-id".to_string())
}
fn default_max_header_size() -> ConfigSize {
    ConfigSize(64 << 10)
}
fn default_header_timeout() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(10))
}
fn default_max_connections() -> usize {
    10_000
}
fn default_drain_timeout() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(30))
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    #[serde(default)]
    pub certificates: Vec<CertificateFiles>,
    pub acme: Option<AcmeSection>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CertificateFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AcmeSection {
    pub email: Option<String>,
    #[serde(default = "default_acme_directory")]
    pub directory: String,
    pub ca_roots: Option<PathBuf>,
    #[serde(default)]
    pub challenge: AcmeChallenge,
    #[serde(default = "default_renew_before")]
    pub renew_before: ConfigDuration,
    pub dns: Option<AcmeDns>,
}

fn default_acme_directory() -> String {
    "https://acme-v02.api.letsencrypt.org/directory".into()
}
fn default_renew_before() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(30 * 86400))
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
pub enum AcmeChallenge {
    #[default]
    #[serde(rename = "http-01")]
    Http01,
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01,
    #[serde(rename = "dns-01")]
    Dns01,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AcmeDns {
    pub provider: String,
    pub api_token_file: Option<PathBuf>,
    pub api_url: Option<String>,
}

/// An agent allowed to connect to this gateway's tunnel (standalone mode).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentEntry {
    pub name: Spanned<String>,
    pub token_sha256: Option<String>,
    pub token: Option<Secret>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum LoadBalance {
    #[default]
    RoundRobin,
    LeastRequests,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Timeouts {
    #[serde(default = "default_connect")]
    pub connect: ConfigDuration,
    #[serde(default = "default_response")]
    pub response: ConfigDuration,
    #[serde(default = "default_idle")]
    pub idle: ConfigDuration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: default_connect(),
            response: default_response(),
            idle: default_idle(),
        }
    }
}

fn default_connect() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(5))
}
fn default_response() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(60))
}
fn default_idle() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(3600))
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    #[serde(default = "default_health_path")]
    pub path: String,
    #[serde(default = "default_health_interval")]
    pub interval: ConfigDuration,
    #[serde(default = "default_health_timeout")]
    pub timeout: ConfigDuration,
}

fn default_health_path() -> String {
    "/".into()
}
fn default_health_interval() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(5))
}
fn default_health_timeout() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(2))
}

fn yes() -> bool {
    true
}
fn root_path() -> Spanned<String> {
    Spanned::new(0..0, "/".to_string())
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSection {
    pub name: Spanned<String>,
    #[serde(default)]
    pub hosts: Vec<Spanned<String>>,
    #[serde(default = "root_path")]
    pub path: Spanned<String>,
    #[serde(default)]
    pub strip_path: bool,
    pub methods: Option<Vec<Spanned<String>>>,
    pub upstream: Option<Spanned<UpstreamUrl>>,
    pub upstreams: Option<Spanned<Vec<UpstreamUrl>>>,
    pub via: Option<Spanned<String>>,
    pub host_header: Option<Spanned<String>>,
    #[serde(default = "yes")]
    pub tls_verify: bool,
    pub max_body: Option<ConfigSize>,
    #[serde(default)]
    pub timeouts: Timeouts,
    #[serde(default)]
    pub load_balance: LoadBalance,
    pub health_check: Option<HealthCheck>,
    #[serde(default = "yes")]
    pub enabled: bool,
    pub jwt: Option<JwtPolicy>,
    pub rate_limit: Option<RateLimitPolicy>,
    pub api_keys: Option<ApiKeysPolicy>,
    pub cors: Option<CorsPolicy>,
    pub ip: Option<IpPolicy>,
    pub headers: Option<HeaderEdits>,
}

/// Gateway-wide settings with every default applied.
#[derive(Debug, Clone, PartialEq)]
pub struct GatewaySettings {
    pub http: Option<std::net::SocketAddr>,
    pub https: Option<std::net::SocketAddr>,
    pub tunnel: Option<std::net::SocketAddr>,
    pub admin: Option<std::net::SocketAddr>,
    pub state_dir: PathBuf,
    pub redirect_https: bool,
    pub request_id_header: http::HeaderName,
    pub trusted_proxies: Vec<Cidr>,
    pub max_header_size: u64,
    pub header_timeout: Duration,
    pub max_connections: usize,
    pub drain_timeout: Duration,
    pub ca_roots: Option<PathBuf>,
}

/// One validated route.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteConfig {
    pub name: String,
    /// Empty: any host.
    pub hosts: Vec<HostPattern>,
    /// Normalized prefix without a trailing slash ("/" for the root).
    pub path: String,
    pub strip_path: bool,
    pub methods: Option<Vec<Method>>,
    pub upstreams: Vec<UpstreamUrl>,
    pub via: Option<String>,
    pub host_header: Option<http::HeaderValue>,
    pub tls_verify: bool,
    pub max_body: Option<u64>,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pub idle_timeout: Duration,
    pub load_balance: LoadBalance,
    pub health_check: Option<HealthCheck>,
    pub enabled: bool,
    pub jwt: Option<JwtPolicy>,
    pub rate_limit: Option<RateLimitPolicy>,
    pub api_keys: Option<ApiKeysPolicy>,
    pub cors: Option<CorsPolicy>,
    pub ip: Option<IpPolicy>,
    pub headers: Option<HeaderEdits>,
}

/// A gateway file after every check passed. Relative paths are already resolved against the
/// folder of the file.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub file: PathBuf,
    pub settings: GatewaySettings,
    pub control: Option<ControlClient>,
    pub tls: Option<TlsSection>,
    pub agents: Vec<AgentEntry>,
    pub routes: Vec<RouteConfig>,
}

/// The route that claimed a (host, path) pair, and its methods.
type Claim = (String, Option<Vec<Method>>);

pub(crate) fn validate(
    raw: GatewayFile,
    base_dir: &std::path::Path,
    file: PathBuf,
) -> Result<GatewayConfig, SpannedMessage> {
    let g = raw.gateway;
    if g.http.is_none() && g.https.is_none() && raw.control.is_none() {
        return Err(SpannedMessage {
            span: None,
            message: "[gateway] needs at least one listener: set `http = \"0.0.0.0:80\"` or `https = \"0.0.0.0:443\"`".into(),
        });
    }
    if let Some(https) = &g.https
        && raw.tls.is_none()
    {
        return err(
            https.span(),
            "`https` is set but there is no [tls] section: add [tls] with certificates or [tls.acme]",
        );
    }
    let request_id_header = http::HeaderName::from_bytes(g.request_id_header.get_ref().as_bytes())
        .or_else(|_| {
            err(
                g.request_id_header.span(),
                format!(
                    "invalid header name \"{}\" for request_id_header",
                    g.request_id_header.get_ref()
                ),
            )
        })?;
    if g.max_header_size.0 < 1024 {
        return Err(SpannedMessage {
            span: None,
            message: "max_header_size must be at least \"1KiB\"".into(),
        });
    }
    if g.max_connections == 0 {
        return Err(SpannedMessage {
            span: None,
            message: "max_connections must be at least 1".into(),
        });
    }
    let resolve = |p: &PathBuf| base_dir.join(p);
    let settings = GatewaySettings {
        http: g.http.map(|a| a.0),
        https: g.https.as_ref().map(|a| a.get_ref().0),
        tunnel: g.tunnel.map(|a| a.0),
        admin: g.admin.map(|a| a.0),
        state_dir: g
            .state_dir
            .as_ref()
            .map(resolve)
            .unwrap_or_else(|| base_dir.join("state")),
        redirect_https: g.redirect_https.unwrap_or(g.https.is_some()),
        request_id_header,
        trusted_proxies: g.trusted_proxies,
        max_header_size: g.max_header_size.0,
        header_timeout: g.header_timeout.0,
        max_connections: g.max_connections,
        drain_timeout: g.drain_timeout.0,
        ca_roots: g.ca_roots.as_ref().map(resolve),
    };

    let mut agent_names = BTreeSet::new();
    for agent in &raw.agents {
        match (&agent.token, &agent.token_sha256) {
            (None, None) => {
                return err(
                    agent.name.span(),
                    format!(
                        "agent \"{}\" needs `token_sha256` (hex) or `token`",
                        agent.name.get_ref()
                    ),
                );
            }
            (Some(_), Some(_)) => {
                return err(
                    agent.name.span(),
                    format!(
                        "agent \"{}\" has both `token` and `token_sha256`; keep one",
                        agent.name.get_ref()
                    ),
                );
            }
            (None, Some(hex)) if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) => {
                return err(
                    agent.name.span(),
                    format!(
                        "agent \"{}\": token_sha256 must be 64 hex digits (the SHA-256 of the token)",
                        agent.name.get_ref()
                    ),
                );
            }
            _ => {}
        }
        agent_names.insert(agent.name.get_ref().clone());
    }

    let mut routes = Vec::with_capacity(raw.routes.len());
    let mut names: HashMap<String, ()> = HashMap::new();
    // (host, path) -> (route index, methods)
    let mut claimed: HashMap<(HostPattern, String), Claim> = HashMap::new();
    for spanned in raw.routes {
        let route_span = spanned.span();
        let r = spanned.into_inner();
        let name = r.name.get_ref().trim().to_string();
        if name.is_empty() {
            return err(r.name.span(), "route name must not be empty");
        }
        if names.insert(name.clone(), ()).is_some() {
            return err(
                r.name.span(),
                format!("duplicate route name \"{name}\"; route names must be unique"),
            );
        }
        let mut hosts = Vec::with_capacity(r.hosts.len());
        for h in &r.hosts {
            let pattern = HostPattern::parse(h.get_ref())
                .or_else(|e| err(h.span(), format!("invalid host \"{}\": {e}", h.get_ref())))?;
            if !hosts.contains(&pattern) {
                hosts.push(pattern);
            }
        }
        let raw_path = r.path.get_ref();
        if !raw_path.starts_with('/') {
            return err(
                r.path.span(),
                format!("path \"{raw_path}\" must start with \"/\""),
            );
        }
        if raw_path.contains(['?', '#']) {
            return err(
                r.path.span(),
                format!("path \"{raw_path}\" must not contain a query or fragment"),
            );
        }
        let normalized = normalize_path(raw_path)
            .or_else(|e| err(r.path.span(), format!("invalid path \"{raw_path}\": {e}")))?;
        let path = if normalized.len() > 1 {
            normalized.trim_end_matches('/').to_string()
        } else {
            "/".to_string()
        };
        let path = if path.is_empty() { "/".into() } else { path };
        let methods = match &r.methods {
            None => None,
            Some(list) => {
                if list.is_empty() {
                    return err(
                        route_span.clone(),
                        format!(
                            "route \"{name}\": `methods` is empty; remove it to allow every method"
                        ),
                    );
                }
                let mut out = Vec::new();
                for m in list {
                    let text = m.get_ref().trim().to_ascii_uppercase();
                    let valid = !text.is_empty()
                        && text
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
                    let method = Method::from_bytes(text.as_bytes())
                        .ok()
                        .filter(|_| valid)
                        .map_or_else(
                            || err(m.span(), format!("invalid HTTP method \"{}\"", m.get_ref())),
                            Ok,
                        )?;
                    if !out.contains(&method) {
                        out.push(method);
                    }
                }
                Some(out)
            }
        };
        let upstreams = match (&r.upstream, &r.upstreams) {
            (Some(_), Some(u)) => {
                return err(
                    u.span(),
                    format!("route \"{name}\" sets both `upstream` and `upstreams`; keep one"),
                );
            }
            (Some(u), None) => vec![u.get_ref().clone()],
            (None, Some(u)) => {
                if u.get_ref().is_empty() {
                    return err(u.span(), format!("route \"{name}\": `upstreams` is empty"));
                }
                u.get_ref().clone()
            }
            (None, None) => {
                return err(
                    r.name.span(),
                    format!(
                        "route \"{name}\" needs `upstream = \"http://...\"` or `upstreams = [...]`"
                    ),
                );
            }
        };
        if let Some(via) = &r.via
            && raw.control.is_none()
            && !agent_names.contains(via.get_ref())
        {
            return err(
                via.span(),
                format!(
                    "route \"{name}\": via = \"{}\" names no agent; add an [[agents]] entry with that name",
                    via.get_ref()
                ),
            );
        }
        let host_header =
            match &r.host_header {
                None => None,
                Some(h) => Some(http::HeaderValue::from_str(h.get_ref()).or_else(|_| {
                    err(h.span(), format!("invalid host_header \"{}\"", h.get_ref()))
                })?),
            };
        if let Some(hc) = &r.health_check
            && !hc.path.starts_with('/')
        {
            return err(
                route_span.clone(),
                format!("route \"{name}\": health_check.path must start with \"/\""),
            );
        }
        if let Some(rl) = &r.rate_limit {
            if rl.requests == 0 {
                return err(
                    route_span.clone(),
                    format!("route \"{name}\": rate_limit.requests must be at least 1"),
                );
            }
            let key_ok = matches!(rl.key.as_str(), "ip" | "api_key")
                || rl.key.strip_prefix("claim:").is_some_and(|s| !s.is_empty())
                || rl
                    .key
                    .strip_prefix("header:")
                    .is_some_and(|s| !s.is_empty());
            if !key_ok {
                return err(
                    route_span.clone(),
                    format!(
                        "route \"{name}\": rate_limit.key \"{}\" must be \"ip\", \"api_key\", \"claim:NAME\" or \"header:NAME\"",
                        rl.key
                    ),
                );
            }
        }
        if let Some(jwt) = &r.jwt
            && jwt.jwks_uri.is_none()
            && jwt.secret_file.is_none()
        {
            return err(
                route_span.clone(),
                format!("route \"{name}\": [routes.jwt] needs `jwks_uri` or `secret_file`"),
            );
        }

        let host_keys: Vec<HostPattern> = if hosts.is_empty() {
            vec![HostPattern::Any]
        } else {
            hosts.clone()
        };
        for host in host_keys {
            let key = (host.clone(), path.clone());
            if let Some((other, other_methods)) = claimed.get(&key) {
                let disjoint = match (&methods, other_methods) {
                    (Some(a), Some(b)) => !a.iter().any(|m| b.contains(m)),
                    _ => false,
                };
                if !disjoint {
                    return err(
                        r.path.span(),
                        format!(
                            "route \"{name}\" has the same hosts and path \"{path}\" as route \"{other}\"; change one, or give both disjoint `methods`"
                        ),
                    );
                }
            }
            claimed.insert(key, (name.clone(), methods.clone()));
        }

        let mut headers = r.headers.clone();
        if let Some(edits) = &mut headers {
            for k in edits
                .request_set
                .keys()
                .chain(edits.response_set.keys())
                .chain(edits.request_remove.iter())
                .chain(edits.response_remove.iter())
            {
                if http::HeaderName::from_bytes(k.as_bytes()).is_err() {
                    return err(
                        route_span.clone(),
                        format!(
                            "route \"{name}\": invalid header name \"{k}\" in [routes.headers]"
                        ),
                    );
                }
            }
            for v in edits
                .request_set
                .values()
                .chain(edits.response_set.values())
            {
                if http::HeaderValue::from_str(v).is_err() {
                    return err(
                        route_span.clone(),
                        format!(
                            "route \"{name}\": invalid header value \"{v}\" in [routes.headers]"
                        ),
                    );
                }
            }
        }
        let api_keys = r.api_keys.clone().map(|mut a| {
            a.keys_file = resolve(&a.keys_file);
            a
        });
        let jwt = r.jwt.clone().map(|mut j| {
            j.secret_file = j.secret_file.as_ref().map(resolve);
            j
        });

        routes.push(RouteConfig {
            name,
            hosts,
            path,
            strip_path: r.strip_path,
            methods,
            upstreams,
            via: r.via.as_ref().map(|v| v.get_ref().clone()),
            host_header,
            tls_verify: r.tls_verify,
            max_body: r.max_body.map(|s| s.0),
            connect_timeout: r.timeouts.connect.0,
            response_timeout: r.timeouts.response.0,
            idle_timeout: r.timeouts.idle.0,
            load_balance: r.load_balance,
            health_check: r.health_check.clone(),
            enabled: r.enabled,
            jwt,
            rate_limit: r.rate_limit.clone(),
            api_keys,
            cors: r.cors.clone(),
            ip: r.ip.clone(),
            headers,
        });
    }

    let tls = raw.tls.map(|mut t| {
        for c in &mut t.certificates {
            c.cert = resolve(&c.cert);
            c.key = resolve(&c.key);
        }
        if let Some(acme) = &mut t.acme {
            acme.ca_roots = acme.ca_roots.as_ref().map(resolve);
            if let Some(dns) = &mut acme.dns {
                dns.api_token_file = dns.api_token_file.as_ref().map(resolve);
            }
        }
        t
    });

    Ok(GatewayConfig {
        file,
        settings,
        control: raw.control,
        tls,
        agents: raw.agents,
        routes,
    })
}
