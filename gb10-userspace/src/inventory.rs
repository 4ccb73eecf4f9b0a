//! The inventory: `data_path/inventory.toml`, profiles and hosts. Declarative, optional
//! (no file = no known hosts), validated with messages that name the entry to fix.
use std::{collections::BTreeMap, net::Ipv4Addr, path::Path};

use serde::{Deserialize, Serialize};

use crate::{
    mac::Mac,
    seeds::table::{IMAGE_FORMATS, RESERVED, SeedKind, format_of},
};

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
    /// Which seed the installer reads (see [`SeedKind`]); none when unset.
    #[serde(default)]
    pub seed: Option<SeedKind>,
    /// Boot files per firmware, overriding `[boot]` defaults (keys: bios, uefi_x86,
    /// uefi_arm64, ...).
    #[serde(default)]
    pub boot_files: BTreeMap<String, String>,
    /// Template variables for every host of this profile.
    #[serde(default)]
    pub vars: BTreeMap<String, toml::Value>,
}

/// How a machine is known besides its MAC (which keys it wherever it is held): the
/// firmware's UUID and serial and the profile it is installed with. One type for the
/// inventory's hosts, the API's registrations and the host records.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostIdentity {
    /// SMBIOS UUID as firmware sends it in option 97.
    #[serde(default)]
    pub uuid: Option<String>,
    #[serde(default)]
    pub serial: Option<String>,
    /// Profile name; the inventory's default_profile when absent.
    #[serde(default)]
    pub profile: Option<String>,
}

/// One known machine.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Host {
    pub mac: Mac,
    /// Host name, handed out in DHCP and used in seeds.
    #[serde(default)]
    pub hostname: Option<String>,
    #[serde(flatten)]
    pub identity: HostIdentity,
    /// Fixed address (direct mode), inside the LAN subnet and outside the pool.
    #[serde(default)]
    pub ip: Option<Ipv4Addr>,
    /// Boot file override for this host (any firmware).
    #[serde(default)]
    pub boot_file: Option<String>,
    /// Template variables, over the profile's.
    #[serde(default)]
    pub vars: BTreeMap<String, toml::Value>,
    /// Keys no field took: refused by validation, naming them (serde's
    /// `deny_unknown_fields` does not work beside `flatten`).
    #[serde(flatten, skip_serializing)]
    pub unknown: BTreeMap<String, toml::Value>,
}

impl Host {
    /// A host known only by its MAC and identity (an API registration).
    pub fn new(mac: Mac, identity: HostIdentity) -> Self {
        Self {
            mac,
            hostname: None,
            identity,
            ip: None,
            boot_file: None,
            vars: BTreeMap::new(),
            unknown: BTreeMap::new(),
        }
    }
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
            if let Some(key) = profile.vars.keys().find(|k| RESERVED.contains(&k.as_str())) {
                return Err(InventoryError::Profile {
                    profile: name.clone(),
                    reason: format!(
                        "variable `{key}` is set by gb10-provision and cannot be overridden"
                    ),
                });
            }
            if let Err(reason) = check_vars(&profile.vars) {
                return Err(InventoryError::Profile {
                    profile: name.clone(),
                    reason,
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
            if profile.seed == Some(SeedKind::Image) {
                check_image(|k| profile.vars.get(k)).map_err(|reason| InventoryError::Profile {
                    profile: name.clone(),
                    reason,
                })?;
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
            if let Some(key) = host.unknown.keys().next() {
                return Err(fail(format!("unknown key `{key}`")));
            }
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
            check_vars(&host.vars).map_err(fail)?;
            for key in host.vars.keys() {
                if RESERVED.contains(&key.as_str()) {
                    return Err(fail(format!(
                        "variable `{key}` is set by gb10-provision and cannot be overridden"
                    )));
                }
            }
            if let Some(p) = host
                .identity
                .profile
                .as_ref()
                .or(self.default_profile.as_ref())
            {
                let Some(profile) = self.profiles.get(p) else {
                    return Err(fail(format!(
                        "profile `{p}` is not defined under [profiles]"
                    )));
                };
                if profile.seed == Some(SeedKind::Image) {
                    check_image(|k| host.vars.get(k).or_else(|| profile.vars.get(k)))
                        .map_err(fail)?;
                }
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
            .and_then(|h| h.identity.profile.as_deref())
            .or(self.default_profile.as_deref())?;
        self.profiles
            .get_key_value(name)
            .map(|(k, v)| (k.as_str(), v))
    }
}

/// Whether `name` is a plain file name (letters, digits, `-`, `_`, `.`; not starting with
/// `.`): what a credentials name must be, so it stays inside `credentials_dir`.
pub fn plain_file_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Whether `user` is a plain POSIX user name (`[a-z_][a-z0-9_-]*`, at most 32): what
/// reaches ssh as the join user, so it can never be read as an option.
pub fn plain_user_name(user: &str) -> bool {
    let mut chars = user.chars();
    user.len() <= 32
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-'))
}

/// The variables gb10-provision itself acts on (the join over SSH, the BMC), checked
/// at load so a hostile or mistyped inventory never reaches ssh or the file system.
fn check_vars(vars: &BTreeMap<String, toml::Value>) -> Result<(), String> {
    if let Some(user) = vars.get("join_user")
        && !user.as_str().is_some_and(plain_user_name)
    {
        return Err("join_user must be a plain user name: [a-z_][a-z0-9_-]*".into());
    }
    if let Some(port) = vars.get("join_port")
        && !port
            .as_str()
            .is_some_and(|p| p.parse::<u16>().is_ok_and(|n| n > 0))
    {
        return Err("join_port must be a port number as a string, like \"22\"".into());
    }
    if let Some(bmc) = vars.get("bmc") {
        let bmc: crate::hosts::Bmc = bmc.clone().try_into().map_err(|e| format!("bmc: {e}"))?;
        crate::hosts::redfish::check_bmc(&bmc).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// The variables of an image install (`seed = "image"`): the image, its sha256 (always:
/// a disk whose write did not verify is never reported installed), its format and the
/// target disk when given.
fn check_image<'a>(var: impl Fn(&str) -> Option<&'a toml::Value>) -> Result<(), String> {
    let text = |k: &str| -> Result<Option<&'a str>, String> {
        match var(k) {
            None => Ok(None),
            Some(toml::Value::String(s)) => Ok(Some(s.as_str())),
            Some(_) => Err(format!("`{k}` must be a string")),
        }
    };
    let Some(image) = text("image")?.filter(|i| !i.is_empty()) else {
        return Err(
            "seed = \"image\" needs `image` (a path under the HTTP root or a mount, or a URL)"
                .into(),
        );
    };
    match text("image_sha256")? {
        Some(sum) if sum.len() == 64 && sum.bytes().all(|b| b.is_ascii_hexdigit()) => {}
        Some(_) => return Err("`image_sha256` must be 64 hexadecimal digits".into()),
        None => {
            return Err(
                "seed = \"image\" needs `image_sha256` (the sha256 of the image as served)".into(),
            );
        }
    }
    let format = text("image_format")?.unwrap_or(format_of(image));
    if !IMAGE_FORMATS.contains(&format) {
        return Err(format!(
            "`image_format` {format:?} is not one of {}",
            IMAGE_FORMATS.join(", ")
        ));
    }
    if let Some(disk) = text("target_disk")?
        && (!disk.starts_with("/dev/") || disk.contains(char::is_whitespace))
    {
        return Err(format!("`target_disk` {disk:?} is not a /dev path"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a hostile inventory tried (issue 15): a credentials name that climbs out of
    /// `credentials_dir`, a join user that ssh would read as an option. Refused at load,
    /// with the field named.
    #[test]
    fn hostile_vars_are_refused_at_load() {
        let load = |vars: &str| {
            Inventory::parse(
                Path::new("inventory.toml"),
                &format!("[[hosts]]\nmac = \"02:00:00:00:00:01\"\n{vars}"),
            )
        };
        for (vars, field) in [
            (
                "[hosts.vars.bmc]\nurl = \"http://198.18.1.2\"\ncredentials = \"../../../etc/passwd\"\n",
                "bmc.credentials",
            ),
            (
                "[hosts.vars.bmc]\nurl = \"http://198.18.1.2\"\ncredentials = \".hidden\"\n",
                "bmc.credentials",
            ),
            (
                "[hosts.vars.bmc]\nurl = \"file:///etc\"\ncredentials = \"b\"\n",
                "bmc.url",
            ),
            (
                "vars = { join_user = \"-oProxyCommand=touch /tmp/x\" }\n",
                "join_user",
            ),
            ("vars = { join_user = \"root@198.18.0.9\" }\n", "join_user"),
            ("vars = { join_port = \"22 -oX\" }\n", "join_port"),
        ] {
            let err = load(vars).expect_err(vars).to_string();
            assert!(err.contains(field), "{vars}: {err}");
        }
        let profile = Inventory::parse(
            Path::new("inventory.toml"),
            "[profiles.p]\nkernel = \"k\"\nvars = { join_user = \"-oProxyCommand=x\" }\n",
        );
        assert!(profile.unwrap_err().to_string().contains("join_user"));
        let fine = "[hosts.vars]\njoin_user = \"ubuntu\"\njoin_port = \"2222\"\n\
                    [hosts.vars.bmc]\nurl = \"http://198.18.1.2\"\ncredentials = \"bmc-1.cred\"\n";
        load(fine).unwrap();
    }

    #[test]
    fn image_installs_need_a_checksum() {
        let parse = |vars: &str| {
            Inventory::parse(
                Path::new("inventory.toml"),
                &format!(
                    "[profiles.img]\nseed = \"image\"\nvars = {{ {vars} }}\n\
                     [[hosts]]\nmac = \"02:00:00:00:00:01\"\nprofile = \"img\"\n"
                ),
            )
            .map(|_| ())
            .map_err(|e| e.to_string())
        };
        let sum = "ab".repeat(32);
        parse(&format!(
            "image = \"images/d.raw.zst\", image_sha256 = \"{sum}\""
        ))
        .unwrap();
        let err = parse("image = \"images/d.raw.zst\"").unwrap_err();
        assert!(
            err.contains("image_sha256") && err.contains("inventory.toml:1"),
            "{err}"
        );
        let err = parse("image = \"d.raw\", image_sha256 = \"abc\"").unwrap_err();
        assert!(err.contains("64 hexadecimal"), "{err}");
        let err = parse(&format!("image_sha256 = \"{sum}\"")).unwrap_err();
        assert!(err.contains("needs `image`"), "{err}");
        let err = parse(&format!(
            "image = \"d.img\", image_sha256 = \"{sum}\", image_format = \"xz\""
        ))
        .unwrap_err();
        assert!(err.contains("xz"), "{err}");
        let err = parse(&format!(
            "image = \"d.img\", image_sha256 = \"{sum}\", target_disk = \"sda\""
        ))
        .unwrap_err();
        assert!(err.contains("target_disk"), "{err}");
        // A host's own sha256 is checked too.
        let err = Inventory::parse(
            Path::new("inventory.toml"),
            &format!(
                "[profiles.img]\nseed = \"image\"\nvars = {{ image = \"d.raw\", image_sha256 = \"{sum}\" }}\n\
                 [[hosts]]\nmac = \"02:00:00:00:00:01\"\nhostname = \"h1\"\nprofile = \"img\"\n\
                 vars = {{ image_sha256 = \"nope\" }}\n"
            ),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("h1") && err.contains("64 hexadecimal"),
            "{err}"
        );
    }

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
        // Keys no field takes are refused, as `deny_unknown_fields` would.
        let err = Inventory::parse(
            Path::new("inventory.toml"),
            "[[hosts]]\nmac = \"02:00:00:00:00:01\"\nhostnme = \"x\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("`hostnme`") && err.contains("inventory.toml:1"),
            "{err}"
        );
        // The seed kind is one the daemon knows.
        let err = toml::from_str::<Inventory>("[profiles.p]\nseed = \"kickstart\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("kickstart") && err.contains("cloud-init"),
            "{err}"
        );
    }
}
