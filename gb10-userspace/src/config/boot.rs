//! `[boot]`: the boot file each firmware class gets, and what unknown clients get.
use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};

use super::{Base, ConfigError, invalid};

/// `[boot]` as written: TFTP paths or URLs; `{server}`, `{http_port}`, `{mac}` are
/// filled in per client.
#[derive(Args, Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBoot {
    /// Boot file for BIOS PXE, arch 0 (default `undionly.kpxe`).
    #[arg(long = "boot-bios", env = "GB10_BOOT_BIOS")]
    pub bios: Option<String>,
    /// Boot file for x86 UEFI PXE, arch 6/7/9 (default `ipxe.efi`; `shimx64.efi` for
    /// Secure Boot).
    #[arg(long = "boot-uefi-x86", env = "GB10_BOOT_UEFI_X86")]
    pub uefi_x86: Option<String>,
    /// Boot file for arm64 UEFI PXE, arch 11 (default `shimaa64.efi`).
    #[arg(long = "boot-uefi-arm64", env = "GB10_BOOT_UEFI_ARM64")]
    pub uefi_arm64: Option<String>,
    /// x86 UEFI HTTP boot, arch 16: a URL or a path under the HTTP root (default `ipxe.efi`).
    #[arg(long = "boot-http-x86", env = "GB10_BOOT_HTTP_X86")]
    pub http_x86: Option<String>,
    /// arm64 UEFI HTTP boot, arch 19: a URL or a path under the HTTP root (default
    /// `shimaa64.efi`).
    #[arg(long = "boot-http-arm64", env = "GB10_BOOT_HTTP_ARM64")]
    pub http_arm64: Option<String>,
    /// URL iPXE gets instead of a boot file (default
    /// `http://{server}:{http_port}/boot.ipxe`).
    #[arg(long = "boot-ipxe-script", env = "GB10_BOOT_IPXE_SCRIPT")]
    pub ipxe_script: Option<String>,
    /// Clients not in the inventory: `serve` (default profile) or `ignore` (no answer).
    #[arg(long = "boot-unknown-clients", env = "GB10_BOOT_UNKNOWN_CLIENTS")]
    pub unknown_clients: Option<UnknownClients>,
    /// How an installed host's network boot goes to its disk: `not_found` (default; DHCP
    /// offers a boot file that is not there: the firmware's request for it fails at
    /// once), `no_boot_file` (DHCP offers no boot file, so the firmware goes on to its
    /// next boot option after its retries) or `loader` (the boot loader is served and
    /// its script sends it on).
    #[arg(long = "boot-installed", env = "GB10_BOOT_INSTALLED")]
    pub installed: Option<InstalledBoot>,
}

/// How a network boot of an installed host is sent to its disk (no second install).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum InstalledBoot {
    /// Offer the address with no boot file (proxy mode: no proxy offer at all): the
    /// firmware's network boot fails and it tries its next boot option, the disk. No
    /// boot loader runs, so none of their exit quirks apply (Debian's `ipxe.efi` hangs
    /// OVMF on `exit`, a boot loop). EDK2 (OVMF, AAVMF) waits about a minute for a better
    /// offer on each network boot entry before it moves on.
    NoBootFile,
    /// Offer [`crate::boot::LOCAL_BOOT_FILE`] as the boot file (over TFTP, or as the
    /// URL's path for UEFI HTTP boot and iPXE), which TFTP and HTTP answer "not found"
    /// at once: the firmware's network boot fails within a second and it tries its next
    /// boot option, the disk. No boot loader runs either. With OVMF the disk booted 73 s
    /// after the reboot instead of 191 s with `no_boot_file` (most of what is left is its
    /// IPv6 HTTP boot entry waiting for a DHCPv6 server).
    #[default]
    NotFound,
    /// Serve the boot loader as usual; the script or config it fetches sends the host to
    /// its disk (GRUB's local entry; iPXE `exit 1` on UEFI, `sanboot` on BIOS). For
    /// firmware that halts after a failed network boot; recorded as `local_boot` when
    /// the loader fetches its script.
    Loader,
}

/// What happens to clients whose MAC is not in the inventory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum UnknownClients {
    /// Serve them with the inventory's default profile.
    #[default]
    Serve,
    /// Do not answer them at all.
    Ignore,
}

/// Validated `[boot]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootConfig {
    pub bios: String,
    pub uefi_x86: String,
    pub uefi_arm64: String,
    pub http_x86: String,
    pub http_arm64: String,
    pub ipxe_script: String,
    pub unknown_clients: UnknownClients,
    pub installed: InstalledBoot,
}

impl Default for BootConfig {
    fn default() -> Self {
        Self {
            bios: "undionly.kpxe".into(),
            uefi_x86: "ipxe.efi".into(),
            uefi_arm64: "shimaa64.efi".into(),
            http_x86: "ipxe.efi".into(),
            http_arm64: "shimaa64.efi".into(),
            ipxe_script: "http://{server}:{http_port}/boot.ipxe".into(),
            unknown_clients: UnknownClients::Serve,
            installed: InstalledBoot::NotFound,
        }
    }
}

impl RawBoot {
    pub(super) fn validate(self, _: &Base<'_>) -> Result<BootConfig, ConfigError> {
        let RawBoot {
            bios,
            uefi_x86,
            uefi_arm64,
            http_x86,
            http_arm64,
            ipxe_script,
            unknown_clients,
            installed,
        } = self;
        let d = BootConfig::default();
        let pick = |key: &'static str, v: Option<String>, default: String| match v {
            // The BOOTP `file` field holds 128 bytes with its NUL.
            Some(v) if v.is_empty() || v.len() > 127 => Err(invalid(
                key,
                &v,
                "must be 1 to 127 bytes (it travels in the BOOTP file field)",
            )),
            Some(v) => Ok(v),
            None => Ok(default),
        };
        Ok(BootConfig {
            bios: pick("boot.bios", bios, d.bios)?,
            uefi_x86: pick("boot.uefi_x86", uefi_x86, d.uefi_x86)?,
            uefi_arm64: pick("boot.uefi_arm64", uefi_arm64, d.uefi_arm64)?,
            http_x86: pick("boot.http_x86", http_x86, d.http_x86)?,
            http_arm64: pick("boot.http_arm64", http_arm64, d.http_arm64)?,
            ipxe_script: pick("boot.ipxe_script", ipxe_script, d.ipxe_script)?,
            unknown_clients: unknown_clients.unwrap_or_default(),
            installed: installed.unwrap_or_default(),
        })
    }
}
