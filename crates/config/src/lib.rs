//! Configuration files of kakuremichi: the gateway, agent and control files, parsed with
//! unknown keys refused and every problem reported as `file:line:column: message`.
//!
//! Three layers: serde structs with `deny_unknown_fields` whose leaf types (durations, sizes,
//! addresses, URLs, CIDRs) validate themselves while parsing, so their errors carry the
//! position of the value; cross-field checks that produce validated types; and the loaders
//! below, which read a file and resolve relative paths against its folder.
#![forbid(unsafe_code)]

pub mod agent;
pub mod client;
pub mod control;
mod error;
pub mod gateway;
pub mod net;
pub mod policy;
mod secret;
pub mod units;

use std::path::{Path, PathBuf};

pub use error::{ConfigError, Located, line_column};
pub use gateway::{GatewayConfig, LoadBalance, RouteConfig};
pub use secret::Secret;

/// Which of the three kinds a file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Gateway,
    Agent,
    Control,
}

impl FileKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FileKind::Gateway => "gateway",
            FileKind::Agent => "agent",
            FileKind::Control => "control",
        }
    }
}

fn read(file: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(file).map_err(|source| ConfigError::Read {
        file: file.to_path_buf(),
        source,
    })
}

fn base_dir(file: &Path) -> PathBuf {
    match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn parse<T: serde::de::DeserializeOwned>(file: &Path, text: &str) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::at(file, text, e.span(), e.message().trim()))
}

/// Tells the kind of a config file from its top-level tables.
pub fn detect_kind(file: &Path, text: &str) -> Result<FileKind, ConfigError> {
    let table: toml::Table = parse(file, text)?;
    if table.contains_key("gateway") || table.contains_key("routes") {
        return Ok(FileKind::Gateway);
    }
    if table.contains_key("agent") {
        return Ok(FileKind::Agent);
    }
    if let Some(toml::Value::Table(control)) = table.get("control") {
        if control.contains_key("url") {
            return Ok(FileKind::Agent);
        }
        return Ok(FileKind::Control);
    }
    Err(ConfigError::at(
        file,
        text,
        None,
        "cannot tell which kind of file this is: a gateway file has [gateway], an agent file [agent], a control file [control] with `listen`",
    ))
}

/// Reads and validates a gateway file.
pub fn load_gateway(file: &Path) -> Result<GatewayConfig, ConfigError> {
    let text = read(file)?;
    parse_gateway(file, &text)
}

/// Validates gateway file contents (`file` is used for messages and relative paths).
pub fn parse_gateway(file: &Path, text: &str) -> Result<GatewayConfig, ConfigError> {
    let raw: gateway::GatewayFile = parse(file, text)?;
    gateway::validate(raw, &base_dir(file), file.to_path_buf())
        .map_err(|m| ConfigError::at(file, text, m.span, m.message))
}

/// Reads and validates an agent file.
pub fn load_agent(file: &Path) -> Result<agent::AgentFile, ConfigError> {
    let text = read(file)?;
    let raw: agent::AgentFile = parse(file, &text)?;
    if raw.agent.is_none() && raw.control.is_none() {
        return Err(ConfigError::at(
            file,
            &text,
            None,
            "an agent file needs [agent] (standalone) or [control] (managed)",
        ));
    }
    Ok(raw)
}

/// Reads and validates a control file.
pub fn load_control(file: &Path) -> Result<control::ControlFile, ConfigError> {
    let text = read(file)?;
    parse(file, &text)
}

/// Validates a file of any kind; returns its kind.
pub fn check(file: &Path) -> Result<FileKind, ConfigError> {
    let text = read(file)?;
    let kind = detect_kind(file, &text)?;
    match kind {
        FileKind::Gateway => {
            parse_gateway(file, &text)?;
        }
        FileKind::Agent => {
            load_agent(file)?;
        }
        FileKind::Control => {
            load_control(file)?;
        }
    }
    Ok(kind)
}

#[cfg(test)]
mod tests;
