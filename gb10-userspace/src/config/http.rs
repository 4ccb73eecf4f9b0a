//! `[http]`: static mounts beside `data_path/www`, the seed owner check, connection cap.
use std::path::PathBuf;

use clap::Args;
use serde::{Deserialize, Serialize};

use super::{Base, ConfigError, count, invalid};

/// `[http] max_connections` when unset.
pub const DEFAULT_HTTP_MAX_CONNECTIONS: usize = 1024;

/// `[http]` as written.
#[derive(Args, Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHttp {
    /// Extra static directories by URL prefix, beside `data_path/www` at `/`. In the file a
    /// table (`mounts = { "/repos/" = "/data/provision/repos" }`); as flags
    /// `--http-mount /repos/=/data/provision/repos` (repeatable); in the environment
    /// `GB10_HTTP_MOUNTS=/repos/=/a,/hf/=/b`. Flags or env replace the file's table whole.
    #[arg(
        id = "http_mounts",
        long = "http-mount",
        env = "GB10_HTTP_MOUNTS",
        value_delimiter = ',',
        value_name = "PREFIX=DIR"
    )]
    #[serde(default, with = "mount_table")]
    pub mounts: Option<Vec<Mount>>,
    /// Serve a host's seed only to the host's fixed IP or DHCP lease (default true). Turn
    /// off only in labs where clients reach the server through NAT or static addresses.
    #[arg(long = "seed-owner-check", env = "GB10_HTTP_SEED_OWNER_CHECK")]
    pub seed_owner_check: Option<bool>,
    /// Open HTTP connections served at once on the LAN (default 1024); beyond it new
    /// connections wait in the kernel's accept queue instead of taking descriptors.
    #[arg(long = "http-max-connections", env = "GB10_HTTP_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
}

/// One `PREFIX=DIR` static mount as written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    pub prefix: String,
    pub dir: PathBuf,
}

impl std::str::FromStr for Mount {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (prefix, dir) = s.split_once('=').ok_or_else(|| {
            format!("`{s}`: write PREFIX=DIR, like /repos/=/data/provision/repos")
        })?;
        Ok(Self {
            prefix: prefix.to_owned(),
            dir: dir.into(),
        })
    }
}

/// `[http] mounts` as a TOML table of prefix → directory.
mod mount_table {
    use std::{collections::BTreeMap, path::PathBuf};

    use serde::{Deserialize as _, Deserializer, Serializer};

    use super::Mount;

    pub fn serialize<S: Serializer>(mounts: &Option<Vec<Mount>>, s: S) -> Result<S::Ok, S::Error> {
        match mounts {
            Some(mounts) => s.collect_map(mounts.iter().map(|m| (&m.prefix, &m.dir))),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<Mount>>, D::Error> {
        let table = Option::<BTreeMap<String, PathBuf>>::deserialize(d)?;
        Ok(table.map(|t| {
            t.into_iter()
                .map(|(prefix, dir)| Mount { prefix, dir })
                .collect()
        }))
    }
}

/// Validated `[http]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpConfig {
    /// URL prefix (starting and ending with `/`) → directory, longest prefix first.
    pub mounts: Vec<(String, PathBuf)>,
    pub seed_owner_check: bool,
    pub max_connections: usize,
}

impl RawHttp {
    pub(super) fn validate(self, _: &Base<'_>) -> Result<HttpConfig, ConfigError> {
        let RawHttp {
            mounts,
            seed_owner_check,
            max_connections,
        } = self;
        Ok(HttpConfig {
            mounts: validate_mounts(mounts.unwrap_or_default())?,
            seed_owner_check: seed_owner_check.unwrap_or(true),
            max_connections: count(
                "http.max_connections",
                max_connections,
                DEFAULT_HTTP_MAX_CONNECTIONS,
                1..=1_000_000,
            )?,
        })
    }
}

fn validate_mounts(mounts: Vec<Mount>) -> Result<Vec<(String, PathBuf)>, ConfigError> {
    let mut out: Vec<(String, PathBuf)> = Vec::with_capacity(mounts.len());
    for Mount { prefix, dir } in mounts {
        let bad = |reason: &str| {
            invalid(
                "http.mounts",
                &format!("{prefix}={}", dir.display()),
                reason,
            )
        };
        if !prefix.starts_with('/') || !prefix.ends_with('/') || prefix == "/" {
            return Err(bad(
                "the prefix must start and end with `/`, like /repos/ (`/` is data_path/www)",
            ));
        }
        if prefix.split('/').any(|seg| seg == ".." || seg == ".")
            || prefix.contains(['\\', '%', '\0', '?', '#'])
        {
            return Err(bad(
                "the prefix may not hold `.`/`..` segments, `\\`, `%`, `?` or `#`",
            ));
        }
        if !dir.is_absolute() {
            return Err(bad("the directory must be an absolute path"));
        }
        if out.iter().any(|(p, _)| *p == prefix) {
            return Err(bad("the prefix is mounted twice"));
        }
        out.push((prefix, dir));
    }
    // Longest prefix first, so /repos/debian/ wins over /repos/.
    out.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.0.cmp(&b.0)));
    Ok(out)
}
