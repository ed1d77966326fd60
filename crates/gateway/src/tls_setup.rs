//! Certificates of the https listener: the static set and the ACME manager built from
//! `[tls]`, kept up to date on reload, and their state for `/metrics`.

use std::path::Path;

use kakuremichi_config::GatewayConfig;
use kakuremichi_config::gateway::{AcmeChallenge, AcmeSection};
use kakuremichi_router::HostPattern;
use kakuremichi_tls::{AcmeManager, AcmeSettings, CertStore, Challenge, DnsSettings, StaticCert};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum ServerTlsError {
    #[error("{file}: `https` needs certificates: add [tls] certificates or [tls.acme]")]
    NoCertificates { file: String },
    #[error("{file}: [tls]: {source}")]
    Tls {
        file: String,
        #[source]
        source: kakuremichi_tls::TlsError,
    },
    #[error("{file}: [tls.acme.dns]: cannot read api_token_file {path}: {source}")]
    DnsToken {
        file: String,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{file}: [tls.acme]: challenge \"dns-01\" needs [tls.acme.dns] with provider and api_token_file"
    )]
    DnsMissing { file: String },
}

/// Certificates for one gateway.
pub struct TlsRuntime {
    pub store: CertStore,
    pub acme: Option<AcmeManager>,
    acme_section: Option<AcmeSection>,
}

/// Hosts that need certificates: the exact and wildcard hosts of enabled routes.
pub fn certificate_hosts(config: &GatewayConfig) -> Vec<String> {
    let mut hosts: Vec<String> = config
        .routes
        .iter()
        .filter(|r| r.enabled)
        .flat_map(|r| r.hosts.iter())
        .filter_map(|h| match h {
            HostPattern::Exact(name) => Some(name.clone()),
            HostPattern::Wildcard(suffix) => Some(format!("*{suffix}")),
            HostPattern::Any => None,
        })
        .collect();
    hosts.sort();
    hosts.dedup();
    hosts
}

fn static_certs(config: &GatewayConfig) -> Vec<StaticCert> {
    config
        .tls
        .iter()
        .flat_map(|t| t.certificates.iter())
        .map(|c| StaticCert {
            cert: c.cert.clone(),
            key: c.key.clone(),
        })
        .collect()
}

fn acme_settings(
    config: &GatewayConfig,
    acme: &AcmeSection,
) -> Result<AcmeSettings, ServerTlsError> {
    let file = config.file.display().to_string();
    let mut settings = AcmeSettings::new(acme.directory.clone(), config.settings.state_dir.clone());
    settings.email = acme.email.clone();
    settings.ca_roots = acme
        .ca_roots
        .clone()
        .or_else(|| config.settings.ca_roots.clone());
    settings.renew_before = acme.renew_before.0;
    settings.challenge = match acme.challenge {
        AcmeChallenge::Http01 => Challenge::Http01,
        AcmeChallenge::TlsAlpn01 => Challenge::TlsAlpn01,
        AcmeChallenge::Dns01 => Challenge::Dns01,
    };
    if let Some(dns) = &acme.dns {
        let token = match &dns.api_token_file {
            Some(path) => read_token(path).map_err(|source| ServerTlsError::DnsToken {
                file: file.clone(),
                path: path.display().to_string(),
                source,
            })?,
            None => String::new(),
        };
        let mut d = DnsSettings::cloudflare(token);
        d.provider = dns.provider.clone();
        d.api_url = dns.api_url.clone();
        settings.dns = Some(d);
    } else if settings.challenge == Challenge::Dns01 {
        return Err(ServerTlsError::DnsMissing { file });
    }
    Ok(settings)
}

fn read_token(path: &Path) -> std::io::Result<String> {
    Ok(std::fs::read_to_string(path)?.trim().to_string())
}

impl TlsRuntime {
    /// `None` when the file has no `[tls]`.
    pub fn build(config: &GatewayConfig) -> Result<Option<TlsRuntime>, ServerTlsError> {
        let file = config.file.display().to_string();
        let Some(tls) = &config.tls else {
            if config.settings.https.is_some() {
                return Err(ServerTlsError::NoCertificates { file });
            }
            return Ok(None);
        };
        if tls.certificates.is_empty() && tls.acme.is_none() {
            return Err(ServerTlsError::NoCertificates { file });
        }
        let store = CertStore::new();
        store
            .load_static(&static_certs(config))
            .map_err(|source| ServerTlsError::Tls {
                file: file.clone(),
                source,
            })?;
        let acme = match &tls.acme {
            Some(section) => {
                let manager = AcmeManager::new(acme_settings(config, section)?, store.clone())
                    .map_err(|source| ServerTlsError::Tls {
                        file: file.clone(),
                        source,
                    })?;
                manager.set_hosts(certificate_hosts(config));
                Some(manager)
            }
            None => None,
        };
        Ok(Some(TlsRuntime {
            store,
            acme,
            acme_section: tls.acme.clone(),
        }))
    }

    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.store.server_config())
    }

    /// Starts the ACME manager, if any.
    pub fn start(&self, shutdown: CancellationToken) {
        if let Some(manager) = &self.acme {
            tokio::spawn(manager.clone().run(shutdown));
        }
    }

    /// Applies the `[tls]` of a reloaded file: static certificates now, new hosts to ACME.
    pub fn reload(&self, config: &GatewayConfig) -> Result<(), ServerTlsError> {
        let file = config.file.display().to_string();
        self.store
            .load_static(&static_certs(config))
            .map_err(|source| ServerTlsError::Tls { file, source })?;
        let section = config.tls.as_ref().and_then(|t| t.acme.clone());
        if section != self.acme_section {
            tracing::warn!(
                "[tls.acme] changed in the file; the new ACME settings take effect at the next restart"
            );
        }
        if let Some(manager) = &self.acme {
            manager.set_hosts(certificate_hosts(config));
        }
        Ok(())
    }

    /// Answer for an HTTP-01 challenge token.
    pub fn http01_answer(&self, token: &str) -> Option<String> {
        self.acme.as_ref().and_then(|m| m.http01_answer(token))
    }
}
