//! The inventory: `data_path/inventory.toml`, profiles and hosts. Declarative, optional
//! (no file = no known hosts), validated with messages that name the entry to fix.
use std::{collections::BTreeMap, net::Ipv4Addr, path::Path};

use serde::{Deserialize, Serialize};

/// File name of the inventory inside `data_path`.
pub const INVENTORY_FILE: &str = "inventory.toml";

/// Why the inventory could not be used.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    #[error("reading {path}")]
    Read {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}: {source}")]
    Parse {
        path: std::path::PathBuf,
        line: usize,
        #[source]
        source: Box<toml::de::Error>,
    },
    #[error("inventory host `{host}`: {reason}")]
    Host { host: String, reason: String },
    #[error("inventory profile `{profile}`: {reason}")]
    Profile { profile: String, reason: String },
    /// A validation error placed at the line of the entry it is about.
    #[error("{path}:{line}: {error}")]
    At {
        path: std::path::PathBuf,
        line: usize,
        error: Box<InventoryError>,
    },
}

/// The 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset).map_or(0, |t| t.matches('\n').count()) + 1
}

/// Only the spans of the hosts and profiles, to place validation errors on a line.
#[derive(Deserialize)]
struct Spans {
    #[serde(default)]
    hosts: Vec<toml::Spanned<toml::Table>>,
    #[serde(default)]
    profiles: BTreeMap<String, toml::Spanned<toml::Table>>,
}

/// A MAC address (parsed from `aa:bb:cc:dd:ee:ff` or `aa-bb-…`, any case).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mac(pub [u8; 6]);

impl std::fmt::Display for Mac {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl std::str::FromStr for Mac {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut mac = [0u8; 6];
        let mut parts = s.split([':', '-']);
        for b in &mut mac {
            let part = parts
                .next()
                .ok_or_else(|| format!("`{s}` is not a MAC address"))?;
            if part.len() != 2 {
                return Err(format!("`{s}` is not a MAC address"));
            }
            *b = u8::from_str_radix(part, 16).map_err(|_| format!("`{s}` is not a MAC address"))?;
        }
        if parts.next().is_some() {
            return Err(format!("`{s}` is not a MAC address"));
        }
        Ok(Mac(mac))
    }
}

impl Serialize for Mac {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Mac {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// `inventory.toml`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Inventory {
    /// Profile used for hosts without one, and for unknown clients when they are served.
    #[serde(default)]
    pub default_profile: Option<String>,
    /// Named profiles: what to boot and which seed to render.
    #[serde(default)]
    pub profiles: BTreeMap<String, Profile>,
    /// Known machines.
    #[serde(default)]
    pub hosts: Vec<Host>,
}

/// How a kind of machine is installed.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// Kernel path or URL, relative to the HTTP root unless absolute.
    #[serde(default)]
    pub kernel: Option<String>,
    /// Initrd path or URL.
    #[serde(default)]
    pub initrd: Option<String>,
    /// Kernel command line (a template: may use variables).
    #[serde(default)]
    pub cmdline: Option<String>,
    /// Which seed the installer reads: `cloud-init`, `autoinstall`, `proxmox`, `talos`, `none`.
    #[serde(default)]
    pub seed: Option<String>,
    /// Boot files per firmware, overriding `[boot]` defaults (keys: bios, uefi_x86,
    /// uefi_arm64, ...).
    #[serde(default)]
    pub boot_files: BTreeMap<String, String>,
    /// Template variables for every host of this profile.
    #[serde(default)]
    pub vars: BTreeMap<String, toml::Value>,
}

/// One known machine.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Host {
    pub mac: Mac,
    /// Host name, handed out in DHCP and used in seeds.
    #[serde(default)]
    pub hostname: Option<String>,
    /// SMBIOS UUID as firmware sends it in option 97.
    #[serde(default)]
    pub uuid: Option<String>,
    #[serde(default)]
    pub serial: Option<String>,
    /// Profile name; the inventory's default_profile when absent.
    #[serde(default)]
    pub profile: Option<String>,
    /// Fixed address (direct mode), inside the LAN subnet and outside the pool.
    #[serde(default)]
    pub ip: Option<Ipv4Addr>,
    /// Boot file override for this host (any firmware).
    #[serde(default)]
    pub boot_file: Option<String>,
    /// Template variables, over the profile's.
    #[serde(default)]
    pub vars: BTreeMap<String, toml::Value>,
}

impl Inventory {
    /// Reads `data_path/inventory.toml`; a missing file is an empty inventory.
    pub fn load(data_path: &Path) -> Result<Self, InventoryError> {
        let path = data_path.join(INVENTORY_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => return Err(InventoryError::Read { path, source }),
        };
        Self::parse(&path, &text)
    }

    /// Parses and validates inventory `text` read from `path` (named in errors, with the
    /// line of the entry at fault).
    pub fn parse(path: &Path, text: &str) -> Result<Self, InventoryError> {
        let inv: Inventory = toml::from_str(text).map_err(|source| InventoryError::Parse {
            path: path.to_owned(),
            line: source.span().map_or(0, |s| line_of(text, s.start)),
            source: Box::new(source),
        })?;
        inv.validate().map_err(|error| {
            let spans: Option<Spans> = toml::from_str(text).ok();
            let offset = spans.and_then(|spans| match &error {
                InventoryError::Host { host, .. } => spans
                    .hosts
                    .iter()
                    .rfind(|h| {
                        let name = h.get_ref().get("hostname").and_then(|v| v.as_str());
                        let mac = h.get_ref().get("mac").and_then(|v| v.as_str());
                        name == Some(host.as_str())
                            || mac
                                .and_then(|m| m.parse::<Mac>().ok())
                                .map(|m| m.to_string())
                                == Some(host.clone())
                    })
                    .map(|h| h.span().start),
                InventoryError::Profile { profile, .. } => {
                    spans.profiles.get(profile).map(|p| p.span().start)
                }
                _ => None,
            });
            match offset {
                Some(offset) => InventoryError::At {
                    path: path.to_owned(),
                    line: line_of(text, offset),
                    error: Box::new(error),
                },
                None => error,
            }
        })?;
        Ok(inv)
    }

    /// Cross-entry checks: unique MACs and IPs, profiles that exist.
    pub fn validate(&self) -> Result<(), InventoryError> {
        for (name, profile) in &self.profiles {
            if let Some(key) = profile
                .vars
                .keys()
                .find(|k| crate::templates::RESERVED.contains(&k.as_str()))
            {
                return Err(InventoryError::Profile {
                    profile: name.clone(),
                    reason: format!(
                        "variable `{key}` is set by gb10-provision and cannot be overridden"
                    ),
                });
            }
            // Profile names become iPXE labels and menu items.
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(InventoryError::Profile {
                    profile: name.clone(),
                    reason: "a profile name may hold only letters, digits, `-` and `_`".into(),
                });
            }
        }
        if let Some(p) = &self.default_profile
            && !self.profiles.contains_key(p)
        {
            return Err(InventoryError::Profile {
                profile: p.clone(),
                reason: "default_profile names a profile not defined under [profiles]".into(),
            });
        }
        let mut macs = std::collections::HashSet::new();
        let mut ips = std::collections::HashSet::new();
        for host in &self.hosts {
            let name = host
                .hostname
                .clone()
                .unwrap_or_else(|| host.mac.to_string());
            let fail = |reason: String| InventoryError::Host {
                host: name.clone(),
                reason,
            };
            if !macs.insert(host.mac) {
                return Err(fail(format!("MAC {} is listed twice", host.mac)));
            }
            if let Some(ip) = host.ip
                && !ips.insert(ip)
            {
                return Err(fail(format!("fixed IP {ip} is given to two hosts")));
            }
            if let Some(name) = &host.hostname
                && (name.is_empty()
                    || !name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'))
            {
                // Host names are pasted into scripts and YAML unquoted in places.
                return Err(fail(
                    "hostname may hold only letters, digits, `-` and `.`".into(),
                ));
            }
            for key in host.vars.keys() {
                if crate::templates::RESERVED.contains(&key.as_str()) {
                    return Err(fail(format!(
                        "variable `{key}` is set by gb10-provision and cannot be overridden"
                    )));
                }
            }
            if let Some(p) = host.profile.as_ref().or(self.default_profile.as_ref())
                && !self.profiles.contains_key(p)
            {
                return Err(fail(format!(
                    "profile `{p}` is not defined under [profiles]"
                )));
            }
        }
        Ok(())
    }

    /// The host with this MAC.
    pub fn host(&self, mac: Mac) -> Option<&Host> {
        self.hosts.iter().find(|h| h.mac == mac)
    }

    /// The host with this fixed IP.
    pub fn host_by_ip(&self, ip: Ipv4Addr) -> Option<&Host> {
        self.hosts.iter().find(|h| h.ip == Some(ip))
    }

    /// The profile a host (or an unknown client, `None`) gets.
    pub fn profile_for(&self, host: Option<&Host>) -> Option<(&str, &Profile)> {
        let name = host
            .and_then(|h| h.profile.as_deref())
            .or(self.default_profile.as_deref())?;
        self.profiles
            .get_key_value(name)
            .map(|(k, v)| (k.as_str(), v))
    }
}

/// What the inventory and templates looked like on disk: (path, mtime, length) of each
/// file, so an edit (or a file appearing or vanishing) changes it.
fn fingerprint(data_path: &Path) -> Vec<(std::path::PathBuf, Option<std::time::SystemTime>, u64)> {
    let mut files = vec![data_path.join(INVENTORY_FILE)];
    files.extend(
        crate::templates::override_files(&data_path.join(crate::templates::TEMPLATES_DIR))
            .unwrap_or_default(),
    );
    files
        .into_iter()
        .map(|p| {
            let meta = std::fs::metadata(&p).ok();
            let mtime = meta.as_ref().and_then(|m| m.modified().ok());
            (p, mtime, meta.map_or(0, |m| m.len()))
        })
        .collect()
}

/// Loads the inventory and the templates. Either failing to parse is refused (a reload
/// keeps what serves now); a seed that does not render for some host is only logged, by
/// [`check_logged`], so one host's missing variable never blocks the others.
pub fn load_all(data_path: &Path) -> Result<(Inventory, crate::templates::Templates), ReloadError> {
    let inventory = Inventory::load(data_path)?;
    let templates = crate::templates::Templates::load(data_path)?;
    Ok((inventory, templates))
}

/// Renders every seed for every host and logs the first failure, naming file, line,
/// template and variable: requests for that seed will get a 500 until it is fixed.
pub fn check_logged(inventory: &Inventory, templates: &crate::templates::Templates) {
    if let Err(err) = crate::templates::check_all(templates, inventory) {
        tracing::error!(
            error = %crate::error_chain(&err),
            "a seed does not render; requests for it get 500 until the inventory or template is fixed"
        );
    }
}

/// Why a reload was refused.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Inventory(#[from] InventoryError),
    #[error(transparent)]
    Template(#[from] crate::templates::TemplateError),
}

/// Polls `data_path` every second and swaps in the new inventory and templates when the
/// files change. A broken edit keeps what is serving now and logs why, with file and line.
pub async fn watch(
    shared: std::sync::Arc<crate::daemon::Shared>,
    token: tokio_util::sync::CancellationToken,
) {
    let data_path = shared.config.data_path.clone();
    let mut last = fingerprint(&data_path);
    loop {
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
        }
        let dp = data_path.clone();
        let Ok(now) = tokio::task::spawn_blocking(move || fingerprint(&dp)).await else {
            continue;
        };
        if now == last {
            continue;
        }
        last = now;
        let dp = data_path.clone();
        match tokio::task::spawn_blocking(move || {
            load_all(&dp).inspect(|(inv, templates)| check_logged(inv, templates))
        })
        .await
        {
            Ok(Ok((inventory, templates))) => {
                tracing::info!(
                    hosts = inventory.hosts.len(),
                    profiles = inventory.profiles.len(),
                    "inventory and templates reloaded"
                );
                *shared.inventory.write().unwrap_or_else(|p| p.into_inner()) =
                    std::sync::Arc::new(inventory);
                *shared.templates.write().unwrap_or_else(|p| p.into_inner()) =
                    std::sync::Arc::new(templates);
            }
            Ok(Err(err)) => tracing::error!(
                error = %crate::error_chain(&err),
                "inventory or templates changed but do not load; still serving the previous ones"
            ),
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_validates() {
        let inv: Inventory = toml::from_str(
            r#"
            default_profile = "ubuntu"
            [profiles.ubuntu]
            kernel = "casper/vmlinuz"
            seed = "autoinstall"
            vars = { disk = "/dev/nvme0n1" }
            [[hosts]]
            mac = "02:00:00:00:00:01"
            hostname = "spark-1"
            ip = "198.18.0.10"
            "#,
        )
        .unwrap();
        inv.validate().unwrap();
        let host = inv.host("02-00-00-00-00-01".parse().unwrap()).unwrap();
        assert_eq!(inv.profile_for(Some(host)).unwrap().0, "ubuntu");
    }

    #[test]
    fn names_what_is_wrong() {
        let inv: Inventory =
            toml::from_str("[[hosts]]\nmac = \"02:00:00:00:00:01\"\nprofile = \"nope\"\n").unwrap();
        let err = inv.validate().unwrap_err().to_string();
        assert!(err.contains("nope"), "{err}");
        let err = toml::from_str::<Inventory>("[[hosts]]\nmac = \"zz\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("zz"), "{err}");
    }
}
