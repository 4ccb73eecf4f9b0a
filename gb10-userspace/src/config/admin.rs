//! `[admin]`: the hosts API and dashboard, and the token every admin route needs (reads
//! too), given in a file (`token_file`) or, visibly in `ps` and the process environment,
//! as a value.
use std::{net::SocketAddr, path::PathBuf};

use clap::Args;
use serde::{Deserialize, Serialize};

use super::{Base, ConfigError, invalid};

/// `[admin]` as written.
#[derive(Args, Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    /// Bearer token of the admin routes: the hosts and fleet API, the dashboard's data,
    /// `/clients`, `/explain` and `/metrics` on the LAN. Without one they answer nobody.
    /// At least 16 characters; never logged. As a flag or variable it is visible in `ps`
    /// and the process environment: prefer `token_file`.
    #[arg(long = "admin-token", env = "GB10_ADMIN_TOKEN")]
    pub token: Option<Secret>,
    /// A file holding the admin token (its first line; read at start), such as a
    /// mounted Kubernetes Secret. Not together with `token`.
    #[arg(long = "admin-token-file", env = "GB10_ADMIN_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// A separate address (like 127.0.0.1:9190) for the hosts API and dashboard; when
    /// unset they are served on the LAN HTTP listener.
    #[arg(long = "admin-listen", env = "GB10_ADMIN_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Directory of BMC credential files (`user:password`), named by hosts' `bmc.credentials`
    /// (default data_path/secrets).
    #[arg(long = "admin-credentials-dir", env = "GB10_ADMIN_CREDENTIALS_DIR")]
    pub credentials_dir: Option<PathBuf>,
    /// A PEM bundle of the CA(s) that sign https BMCs' certificates, for BMCs without a
    /// `bmc.ca_file` of their own (read and checked at start, re-read at each rebuild).
    /// Unset: an https BMC needs its own `ca_file` or, warned at each use,
    /// `insecure_skip_verify`.
    #[arg(long = "admin-bmc-ca-file", env = "GB10_ADMIN_BMC_CA_FILE")]
    pub bmc_ca_file: Option<PathBuf>,
}

/// A secret value: printed as `***` by Debug and Display, so it never reaches a log line.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// The value, for the one place that compares or sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Self(s)
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

/// Validated `[admin]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminConfig {
    pub token: Option<Secret>,
    pub listen: Option<SocketAddr>,
    pub credentials_dir: PathBuf,
    pub bmc_ca_file: Option<PathBuf>,
}

impl RawAdmin {
    pub(super) fn validate(self, base: &Base<'_>) -> Result<AdminConfig, ConfigError> {
        let RawAdmin {
            token,
            token_file,
            listen,
            credentials_dir,
            bmc_ca_file,
        } = self;
        let token = match (token, token_file) {
            (Some(_), Some(path)) => {
                return Err(invalid(
                    "admin.token_file",
                    &path.display().to_string(),
                    "give the token once: token_file or token, not both",
                ));
            }
            (token, None) => token,
            (None, Some(path)) => Some(read_token(&path)?),
        };
        if let Some(addr) = listen
            && addr.ip().is_unspecified()
        {
            return Err(invalid(
                "admin.listen",
                &addr.to_string(),
                "never a wildcard address: name one, like 127.0.0.1:9190",
            ));
        }
        if token
            .as_ref()
            .is_some_and(|t| t.expose().chars().count() < 16)
        {
            return Err(invalid("admin.token", "***", "use at least 16 characters"));
        }
        if let Some(path) = &bmc_ca_file {
            crate::hosts::bmc_tls::load_roots(path).map_err(|e| {
                invalid(
                    "admin.bmc_ca_file",
                    &path.display().to_string(),
                    crate::error_chain(&e),
                )
            })?;
        }
        Ok(AdminConfig {
            token,
            listen,
            credentials_dir: credentials_dir.unwrap_or_else(|| base.data_path.join("secrets")),
            bmc_ca_file,
        })
    }
}

/// The token in `path`: its first line, without surrounding whitespace.
fn read_token(path: &std::path::Path) -> Result<Secret, ConfigError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| invalid("admin.token_file", &shown, format!("cannot be read: {e}")))?;
    let token = text.lines().next().unwrap_or("").trim();
    if token.is_empty() {
        return Err(invalid("admin.token_file", &shown, "the file is empty"));
    }
    Ok(Secret(token.to_owned()))
}
