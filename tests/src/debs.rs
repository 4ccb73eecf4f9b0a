//! Debian packages for boot assets, fetched with `apt-get download` (the e2e lab and the
//! `assets` tests both take their boot chain from real packages).
use std::{
    path::{Path, PathBuf},
    process::Command,
};

/// The kernel package the `linux-image-cloud-<arch>` metapackage depends on now, as
/// `name:arch`.
pub fn cloud_kernel_package(arch: &str) -> Result<String, String> {
    let meta = format!("linux-image-cloud-{arch}:{arch}");
    let out = Command::new("apt-cache")
        .args(["depends", &meta])
        .output()
        .map_err(|e| format!("apt-cache depends {meta}: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let kernel = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Depends: linux-image-"))
        .ok_or_else(|| format!("apt-cache depends {meta}: no kernel package in\n{text}"))?;
    let kernel = format!("linux-image-{}", kernel.trim());
    Ok(if kernel.contains(':') {
        kernel
    } else {
        format!("{kernel}:{arch}")
    })
}

/// Downloads `packages` (`name[:arch]`) into `dir` with `apt-get download`, unless the
/// last download there was of the same list; the `.deb` files in `dir`.
pub fn apt_download(dir: &Path, packages: &[String]) -> Result<Vec<PathBuf>, String> {
    let marker = dir.join(".packages");
    let list = packages.join("\n");
    if std::fs::read_to_string(&marker).ok().as_deref() != Some(list.as_str()) {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        println!("apt-get download {}", packages.join(" "));
        // apt-get downloads into the current directory.
        let status = Command::new("apt-get")
            .arg("download")
            .args(packages)
            .current_dir(dir)
            .status()
            .map_err(|e| format!("spawning apt-get download: {e}"))?;
        if !status.success() {
            return Err(format!(
                "apt-get download {} failed ({status}); arm64 packages need \
                 `dpkg --add-architecture arm64 && apt-get update`",
                packages.join(" ")
            ));
        }
        std::fs::write(&marker, &list).map_err(|e| format!("{}: {e}", marker.display()))?;
    }
    let mut debs: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "deb"))
        .collect();
    debs.sort();
    Ok(debs)
}
