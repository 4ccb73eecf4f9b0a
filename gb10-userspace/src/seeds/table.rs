//! What the daemon renders: the seed kinds a profile may name, the built-in templates,
//! and one table of seed routes (path, template, which kinds, who may fetch it, what is
//! recorded). HTTP and TFTP serve from this table; a new seed kind is a variant, its
//! rows and its template file.
use serde::{Deserialize, Serialize};

pub use crate::hosts::Handout;

/// Which seed a profile's installer reads (`seed = "…"` in a profile).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SeedKind {
    /// NoCloud cloud-init: `/cloud-init/{mac}/user-data`, `meta-data`, `vendor-data`.
    CloudInit,
    /// Ubuntu autoinstall (Subiquity) through NoCloud: the same files, autoinstall user-data.
    Autoinstall,
    /// The Proxmox automated installer's answer file.
    Proxmox,
    /// A Talos machine config.
    Talos,
    /// An OS image streamed to disk by the install environment: `/install/{mac}` (the
    /// install script), then the installed system's cloud-init reads the NoCloud files.
    Image,
    /// No seed: the boot scripts only.
    None,
}

impl SeedKind {
    /// The name a profile uses, also the template variable `seed`.
    pub fn label(self) -> &'static str {
        match self {
            Self::CloudInit => "cloud-init",
            Self::Autoinstall => "autoinstall",
            Self::Proxmox => "proxmox",
            Self::Talos => "talos",
            Self::Image => "image",
            Self::None => "none",
        }
    }
}

/// The image formats the install script streams.
pub const IMAGE_FORMATS: &[&str] = &["raw", "gzip", "zstd"];

/// The format an image's name implies: `.gz` gzip, `.zst` zstd, else raw.
pub fn format_of(image: &str) -> &'static str {
    let name = image.rsplit('/').next().unwrap_or(image);
    if name.ends_with(".gz") {
        "gzip"
    } else if name.ends_with(".zst") || name.ends_with(".zstd") {
        "zstd"
    } else {
        "raw"
    }
}

/// The built-in templates, by the name an override file must have.
pub const BUILTIN: &[(&str, &str)] = &[
    ("boot.ipxe.j2", include_str!("../../templates/boot.ipxe.j2")),
    ("ipxe-host.j2", include_str!("../../templates/ipxe-host.j2")),
    // Included by the iPXE scripts: how they leave for the local disk.
    (
        "ipxe-local.j2",
        include_str!("../../templates/ipxe-local.j2"),
    ),
    ("grub.cfg.j2", include_str!("../../templates/grub.cfg.j2")),
    ("grub-host.j2", include_str!("../../templates/grub-host.j2")),
    ("user-data.j2", include_str!("../../templates/user-data.j2")),
    (
        "autoinstall.j2",
        include_str!("../../templates/autoinstall.j2"),
    ),
    ("meta-data.j2", include_str!("../../templates/meta-data.j2")),
    (
        "vendor-data.j2",
        include_str!("../../templates/vendor-data.j2"),
    ),
    (
        "proxmox-answer.toml.j2",
        include_str!("../../templates/proxmox-answer.toml.j2"),
    ),
    (
        "talos.yaml.j2",
        include_str!("../../templates/talos.yaml.j2"),
    ),
    (
        "onboard.service.j2",
        include_str!("../../templates/onboard.service.j2"),
    ),
    (
        "install.sh.j2",
        include_str!("../../templates/install.sh.j2"),
    ),
];

/// Context keys the daemon sets; inventory variables cannot replace them.
pub const RESERVED: &[&str] = &[
    "server",
    "server_host",
    "server_port",
    "mac",
    "mac_hyphen",
    "hostname",
    "ip",
    "uuid",
    "serial",
    "profile",
    "kernel_url",
    "initrd_url",
    "kernel_path",
    "initrd_path",
    "cmdline",
    "seed",
    "seed_url",
    "installed",
    "profiles",
    "grub_root",
    // Per install (see `hosts::install`).
    "instance_id",
    "install_token",
    "host_key_public",
    "host_key_private",
    "overwrite",
    // The image kind's, from `image`.
    "image_url",
    "image_size",
];

/// Who a route serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Every client the same way; no MAC (the entry scripts).
    Global,
    /// Any client, by the MAC in the path (boot-loader scripts, the onboard unit).
    AnyClient,
    /// Only hosts whose profile's seed is one of these kinds.
    Kinds(&'static [SeedKind]),
}

/// What serving a route records in the client's timeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Record {
    Nothing,
    /// A boot-loader script: `ClientEvent::BootFile`.
    BootFile,
    /// An installer seed: `ClientEvent::Seed`.
    Seed,
}

/// One rendered route.
#[derive(Debug)]
pub struct SeedRoute {
    /// URL path; `{mac}` stands for the client's MAC and may sit inside a segment.
    pub path: &'static str,
    pub template: &'static str,
    pub scope: Scope,
    /// Only the host's fixed IP or current lease may fetch it (with `seed_owner_check`).
    pub owner_only: bool,
    pub record: Record,
    pub content_type: &'static str,
    /// Also answered over TFTP at the same path (Debian's network GRUB reads its configs
    /// from `(tftp,<server>)/grub`).
    pub tftp: bool,
    /// The installer POSTs to it too (Proxmox sends its system information).
    pub post: bool,
    /// How it hands out the install's secrets (token, keys, password hash).
    pub handout: Handout,
}

/// iPXE and GRUB scripts, NoCloud files.
const TEXT: &str = "text/plain; charset=utf-8";

/// The kinds whose installed system (or installer) reads NoCloud files from us.
const NOCLOUD: &[SeedKind] = &[SeedKind::CloudInit, SeedKind::Autoinstall, SeedKind::Image];

const fn row(path: &'static str, template: &'static str, scope: Scope) -> SeedRoute {
    SeedRoute {
        path,
        template,
        scope,
        owner_only: false,
        record: Record::Nothing,
        content_type: TEXT,
        tftp: false,
        post: false,
        handout: Handout::Open,
    }
}

const fn script(path: &'static str, template: &'static str) -> SeedRoute {
    SeedRoute {
        record: Record::BootFile,
        ..row(path, template, Scope::AnyClient)
    }
}

const fn seed(
    path: &'static str,
    template: &'static str,
    kinds: &'static [SeedKind],
    content_type: &'static str,
) -> SeedRoute {
    SeedRoute {
        owner_only: true,
        record: Record::Seed,
        content_type,
        ..row(path, template, Scope::Kinds(kinds))
    }
}

/// Every rendered route. A path may appear more than once with disjoint kinds: the
/// host's profile picks the row.
pub static ROUTES: &[SeedRoute] = &[
    row("/boot.ipxe", "boot.ipxe.j2", Scope::Global),
    script("/ipxe/{mac}", "ipxe-host.j2"),
    SeedRoute {
        tftp: true,
        ..row("/grub/grub.cfg", "grub.cfg.j2", Scope::Global)
    },
    SeedRoute {
        tftp: true,
        ..script("/grub/hosts/{mac}.cfg", "grub-host.j2")
    },
    // cloud-init reads its user-data again on every boot: the secrets go out once, later
    // boots of a proved install get it without them.
    SeedRoute {
        handout: Handout::OnceThenWithheld,
        ..seed(
            "/cloud-init/{mac}/user-data",
            "user-data.j2",
            &[SeedKind::CloudInit, SeedKind::Image],
            TEXT,
        )
    },
    SeedRoute {
        handout: Handout::OnceThenWithheld,
        ..seed(
            "/cloud-init/{mac}/user-data",
            "autoinstall.j2",
            &[SeedKind::Autoinstall],
            TEXT,
        )
    },
    // The install environment's script: nothing legitimate fetches it twice.
    SeedRoute {
        handout: Handout::Once,
        content_type: "text/x-shellscript; charset=utf-8",
        ..seed("/install/{mac}", "install.sh.j2", &[SeedKind::Image], TEXT)
    },
    seed("/cloud-init/{mac}/meta-data", "meta-data.j2", NOCLOUD, TEXT),
    seed(
        "/cloud-init/{mac}/vendor-data",
        "vendor-data.j2",
        NOCLOUD,
        TEXT,
    ),
    SeedRoute {
        post: true,
        handout: Handout::Once,
        ..seed(
            "/proxmox/{mac}/answer.toml",
            "proxmox-answer.toml.j2",
            &[SeedKind::Proxmox],
            "application/toml",
        )
    },
    SeedRoute {
        handout: Handout::Once,
        ..seed(
            "/talos/{mac}/config.yaml",
            "talos.yaml.j2",
            &[SeedKind::Talos],
            "application/yaml",
        )
    },
    // The onboard unit: `?mac=` or the requester's own (see the HTTP route).
    row("/onboard.service", "onboard.service.j2", Scope::AnyClient),
];

impl SeedRoute {
    /// Whether a host whose profile names `kind` gets this row.
    pub fn serves(&self, kind: Option<SeedKind>) -> bool {
        match self.scope {
            Scope::Global | Scope::AnyClient => true,
            Scope::Kinds(kinds) => kind.is_some_and(|k| kinds.contains(&k)),
        }
    }

    /// `(before, after)` the `{mac}` in the path's segment that holds it, and the path
    /// up to that segment: `/grub/hosts/{mac}.cfg` → (`/grub/hosts/`, "", ".cfg").
    pub fn mac_segment(&self) -> Option<(&'static str, &'static str, &'static str)> {
        let at = self.path.find("{mac}")?;
        let seg_start = self.path[..at].rfind('/').map_or(0, |i| i + 1);
        let after = &self.path[at + "{mac}".len()..];
        let seg_end = after.find('/').unwrap_or(after.len());
        Some((
            &self.path[..seg_start],
            &self.path[seg_start..at],
            &after[..seg_end],
        ))
    }

    /// Whether a concrete `path` is this route: `Some(None)` for a route without a MAC,
    /// `Some(Some(mac))` with the MAC it names, `None` when it is another path.
    pub fn matches(&self, path: &str) -> Option<Option<crate::mac::Mac>> {
        let Some((dir, before, after)) = self.mac_segment() else {
            return (self.path == path).then_some(None);
        };
        let rest = path.strip_prefix(dir)?;
        let (segment, tail) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let tail_wanted = &self.path[dir.len() + before.len() + "{mac}".len() + after.len()..];
        if tail != tail_wanted {
            return None;
        }
        let mac = segment
            .strip_prefix(before)?
            .strip_suffix(after)?
            .parse()
            .ok()?;
        Some(Some(mac))
    }

    /// The path with `mac` in place of `{mac}`.
    pub fn path_for(&self, mac: crate::mac::Mac) -> String {
        self.path.replace("{mac}", &mac.to_string())
    }
}

/// Every template a host whose profile names `kind` is rendered: its boot-loader
/// scripts and the seeds of its kind.
pub fn templates_for(kind: Option<SeedKind>) -> Vec<&'static str> {
    ROUTES
        .iter()
        .filter(|r| r.scope != Scope::Global && r.serves(kind))
        .map(|r| r.template)
        .collect()
}

/// The rows at `path` (one per kind set).
pub fn rows_at(path: &str) -> impl Iterator<Item = &'static SeedRoute> + '_ {
    ROUTES.iter().filter(move |r| r.path == path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_row_names_a_builtin_and_kinds_do_not_overlap() {
        for r in ROUTES {
            assert!(
                BUILTIN.iter().any(|(name, _)| *name == r.template),
                "{}",
                r.template
            );
            for other in rows_at(r.path).filter(|o| !std::ptr::eq(*o, r)) {
                for kind in [
                    SeedKind::CloudInit,
                    SeedKind::Autoinstall,
                    SeedKind::Proxmox,
                    SeedKind::Talos,
                    SeedKind::Image,
                    SeedKind::None,
                ] {
                    assert!(
                        !(r.serves(Some(kind)) && other.serves(Some(kind))),
                        "{} served twice for {kind:?}",
                        r.path
                    );
                }
            }
        }
        let grub = rows_at("/grub/hosts/{mac}.cfg").next().unwrap();
        assert_eq!(grub.mac_segment(), Some(("/grub/hosts/", "", ".cfg")));
        let mac: crate::mac::Mac = "02:00:00:00:00:01".parse().unwrap();
        assert_eq!(
            grub.matches("/grub/hosts/02-00-00-00-00-01.cfg"),
            Some(Some(mac))
        );
        assert_eq!(grub.matches("/grub/hosts/02:00:00:00:00:01"), None);
        assert_eq!(grub.matches("/grub/hosts/x.cfg"), None);
        let user = rows_at("/cloud-init/{mac}/user-data").next().unwrap();
        assert_eq!(
            user.matches("/cloud-init/02:00:00:00:00:01/user-data"),
            Some(Some(mac))
        );
        assert_eq!(
            user.matches("/cloud-init/02:00:00:00:00:01/meta-data"),
            None
        );
        let boot = rows_at("/boot.ipxe").next().unwrap();
        assert_eq!(boot.matches("/boot.ipxe"), Some(None));
    }
}
