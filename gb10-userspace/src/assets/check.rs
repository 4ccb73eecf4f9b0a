//! For `check`: the boot files the configuration and the inventory point clients at that
//! are not under `data_path` (TFTP boot files in tftp/, HTTP ones in www/ or a mount,
//! GRUB beside each shim, profile kernels and initrds).
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use crate::{config::Config, inventory::Inventory};

/// Which root a client fetches a file from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Root {
    Tftp,
    Http,
}

/// A boot file named somewhere in the configuration.
struct Named {
    root: Root,
    /// Relative to the root, without a leading `/`.
    path: String,
}

/// The file a configured name or URL points at on our own server, `None` for other
/// servers' URLs and per-client names (`{mac}`), which cannot be checked here.
fn local(value: &str, root: Root) -> Option<Named> {
    let (root, path) = match value.split_once("://") {
        Some((_, rest)) => {
            let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
            if !authority.starts_with("{server}") {
                return None;
            }
            (Root::Http, path)
        }
        None => (root, value),
    };
    let path = path.trim_start_matches('/');
    (!path.is_empty() && !path.contains('{') && !path.contains('?')).then(|| Named {
        root,
        path: path.to_owned(),
    })
}

/// The GRUB image shim loads from its own directory, for a shim file name.
fn grub_beside(path: &str) -> Option<String> {
    let (dir, file) = path.rsplit_once('/').map_or(("", path), |(d, f)| (d, f));
    let grub = match file {
        "shimx64.efi" => "grubx64.efi",
        "shimaa64.efi" => "grubaa64.efi",
        _ => return None,
    };
    Some(if dir.is_empty() {
        grub.to_owned()
    } else {
        format!("{dir}/{grub}")
    })
}

/// Where a file of `root` is on disk.
fn on_disk(config: &Config, root: Root, path: &str) -> PathBuf {
    match root {
        Root::Tftp => config.data_path.join("tftp").join(path),
        Root::Http => {
            let url = format!("/{path}");
            for (prefix, dir) in &config.http.mounts {
                if let Some(rest) = url.strip_prefix(prefix.as_str()) {
                    return dir.join(rest);
                }
            }
            config.data_path.join("www").join(path)
        }
    }
}

/// One line per boot file that is named but missing: the path and who names it.
pub fn missing_boot_files(config: &Config, inventory: &Inventory) -> Vec<String> {
    // (root, path) → who names it.
    let mut named: BTreeMap<(Root, String), Vec<String>> = BTreeMap::new();
    let mut add = |value: &str, root: Root, who: String| {
        if let Some(n) = local(value, root) {
            if let Some(grub) = grub_beside(&n.path) {
                named
                    .entry((n.root, grub))
                    .or_default()
                    .push(format!("beside {} for {who}", n.path));
            }
            named.entry((n.root, n.path)).or_default().push(who);
        }
    };
    let b = &config.boot;
    for (key, value, root) in [
        ("bios", &b.bios, Root::Tftp),
        ("uefi_x86", &b.uefi_x86, Root::Tftp),
        ("uefi_arm64", &b.uefi_arm64, Root::Tftp),
        ("http_x86", &b.http_x86, Root::Http),
        ("http_arm64", &b.http_arm64, Root::Http),
    ] {
        add(value, root, format!("[boot] {key}"));
    }
    for (name, p) in &inventory.profiles {
        for (key, value) in &p.boot_files {
            let root = match key.as_str() {
                "bios" | "uefi_x86" | "uefi_arm64" => Root::Tftp,
                "http_x86" | "http_arm64" => Root::Http,
                _ => continue,
            };
            add(value, root, format!("profile {name} boot_files.{key}"));
        }
        // GRUB without an http module fetches kernels over TFTP (`grub_fetch = "tftp"`).
        let tftp = |vars: &BTreeMap<String, toml::Value>| {
            vars.get("grub_fetch").and_then(|v| v.as_str()) == Some("tftp")
        };
        let over_tftp = tftp(&p.vars)
            || inventory
                .hosts
                .iter()
                .any(|h| h.identity.profile.as_deref() == Some(name.as_str()) && tftp(&h.vars));
        for (key, value) in [("kernel", &p.kernel), ("initrd", &p.initrd)] {
            let Some(value) = value else { continue };
            add(value, Root::Http, format!("profile {name} {key}"));
            if over_tftp {
                add(
                    value,
                    Root::Tftp,
                    format!("profile {name} {key} (grub_fetch = \"tftp\")"),
                );
            }
        }
    }
    for h in &inventory.hosts {
        if let Some(f) = &h.boot_file {
            add(f, Root::Tftp, format!("host {} boot_file", h.mac));
        }
    }
    named
        .into_iter()
        .filter_map(|((root, path), who)| {
            let file = on_disk(config, root, &path);
            (!is_file(&file)).then(|| {
                format!(
                    "{} is missing ({} fetches `{path}` from {}; named by {})",
                    file.display(),
                    match root {
                        Root::Tftp => "TFTP",
                        Root::Http => "HTTP",
                    },
                    match root {
                        Root::Tftp => "tftp/",
                        Root::Http => "www/",
                    },
                    who.join(", ")
                )
            })
        })
        .collect()
}

fn is_file(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RawConfig;

    #[test]
    fn names_what_is_missing_and_skips_what_it_cannot_check() {
        let dir = std::env::temp_dir().join(format!("gb10-bootcheck-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("tftp")).unwrap();
        std::fs::create_dir_all(dir.join("www/amd64")).unwrap();
        std::fs::write(dir.join("tftp/shimx64.efi"), b"x").unwrap();
        std::fs::write(dir.join("www/amd64/vmlinuz"), b"x").unwrap();
        let config = Config::try_from(RawConfig {
            lan_iface: Some("lo".into()),
            data_path: Some(dir.clone()),
            boot: crate::config::RawBoot {
                uefi_x86: Some("shimx64.efi".into()),
                http_x86: Some("http://mirror.example/ipxe.efi".into()),
                ..Default::default()
            },
            ..Default::default()
        })
        .unwrap();
        let inv: Inventory = toml::from_str(
            r#"
            [profiles.deb]
            kernel = "amd64/vmlinuz"
            initrd = "amd64/initrd.img"
            boot_files = { ipxe_script = "http://{server}/x/{mac}", uefi_arm64 = "{mac}.efi" }
            vars = { grub_fetch = "tftp" }
            "#,
        )
        .unwrap();
        let lines = missing_boot_files(&config, &inv);
        let text = lines.join("\n");
        // The shim is there; its GRUB, the BIOS and arm64 defaults and the initrd are not.
        assert!(text.contains("tftp/grubx64.efi is missing"), "{text}");
        assert!(
            text.contains("beside shimx64.efi for [boot] uefi_x86"),
            "{text}"
        );
        assert!(text.contains("tftp/undionly.kpxe is missing"), "{text}");
        assert!(text.contains("www/shimaa64.efi is missing"), "{text}");
        assert!(text.contains("www/amd64/initrd.img is missing"), "{text}");
        assert!(text.contains("tftp/amd64/vmlinuz is missing"), "{text}");
        assert!(!text.contains("www/amd64/vmlinuz is missing"), "{text}");
        assert!(
            !text.contains("mirror.example") && !text.contains("{mac}"),
            "{text}"
        );
        assert!(!text.contains("tftp/shimx64.efi is missing"), "{text}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
