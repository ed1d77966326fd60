//! Per-route policy sections (`[routes.jwt]`, `[routes.rate_limit]`, `[routes.api_keys]`,
//! `[routes.cors]`, `[routes.ip]`, `[routes.headers]`) as written in a gateway file.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use crate::net::Cidr;
use crate::units::ConfigDuration;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JwtPolicy {
    pub jwks_uri: Option<String>,
    pub secret_file: Option<PathBuf>,
    pub issuer: Option<String>,
    #[serde(default)]
    pub audiences: Vec<String>,
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    pub roles_claim: Option<String>,
    #[serde(default)]
    pub require_roles: Vec<String>,
    pub scopes_claim: Option<String>,
    #[serde(default)]
    pub require_scopes: Vec<String>,
    #[serde(default)]
    pub forward_claims: BTreeMap<String, String>,
}

fn default_algorithms() -> Vec<String> {
    vec!["RS256".into()]
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RateLimitPolicy {
    #[serde(default = "default_rate_key")]
    pub key: String,
    pub requests: u64,
    pub per: ConfigDuration,
    pub burst: Option<u64>,
    pub store: Option<String>,
    #[serde(default)]
    pub on_store_error: StoreErrorMode,
}

fn default_rate_key() -> String {
    "ip".into()
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum StoreErrorMode {
    #[default]
    Allow,
    Deny,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ApiKeysPolicy {
    #[serde(default = "default_api_key_header")]
    pub header: String,
    pub keys_file: PathBuf,
}

fn default_api_key_header() -> String {
    "x-api-key".into()
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CorsPolicy {
    #[serde(default)]
    pub allow_origins: Vec<String>,
    #[serde(default = "default_cors_methods")]
    pub allow_methods: Vec<String>,
    #[serde(default)]
    pub allow_headers: Vec<String>,
    #[serde(default)]
    pub expose_headers: Vec<String>,
    #[serde(default)]
    pub allow_credentials: bool,
    pub max_age: Option<ConfigDuration>,
}

fn default_cors_methods() -> Vec<String> {
    ["GET", "HEAD", "POST"].map(String::from).to_vec()
}

#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct IpPolicy {
    #[serde(default)]
    pub allow: Vec<Cidr>,
    #[serde(default)]
    pub deny: Vec<Cidr>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct HeaderEdits {
    #[serde(default)]
    pub request_set: BTreeMap<String, String>,
    #[serde(default)]
    pub request_remove: Vec<String>,
    #[serde(default)]
    pub response_set: BTreeMap<String, String>,
    #[serde(default)]
    pub response_remove: Vec<String>,
}
