//! The firmware scenarios: which machine, which firmware, which boot chain.
use super::assets::Arch;

/// The firmware QEMU runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Firmware {
    /// SeaBIOS with QEMU's default iPXE option ROM for virtio-net.
    SeaBios,
    /// OVMF (x86 UEFI), `secure` = MS keys enrolled and Secure Boot on.
    Ovmf { secure: bool },
    /// AAVMF (arm64 UEFI).
    Aavmf,
}

/// What the firmware is handed by DHCP (option 93 decides, see FIRMWARE.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Chain {
    /// The firmware is iPXE already: HTTP script URL.
    IpxeScript,
    /// TFTP an iPXE EFI binary (`ipxe.efi`, `snponly.efi`), which then gets the script.
    Ipxe(&'static str),
    /// TFTP shim → signed network GRUB → `grub/grub.cfg` → kernel over TFTP.
    ShimGrub,
    /// UEFI HTTP boot (option 60 `HTTPClient` echoed, a URL as boot file) of iPXE or
    /// shim. The firmware's PXE entries are off, as on a machine set to boot over HTTP.
    HttpBoot(&'static str),
}

/// Who gives the VM its address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dhcp {
    /// The boot server is the LAN's DHCP server.
    Direct,
    /// The site's DHCP server (dnsmasq on another host of the LAN) gives the address;
    /// the boot server only answers PXE, as proxy DHCP.
    Proxy,
}

/// How an image install scenario ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Case {
    /// Installed, booted from disk, onboarded by cloud-init.
    Onboard,
    /// The sha256 given does not match: `failed`, disk wiped.
    WrongChecksum,
    /// The download is cut halfway: `failed` naming the truncation, disk wiped.
    Truncated,
    /// The marker image installed; the reboot network-boots, is sent to the disk, and
    /// the disk's own shim and GRUB print the marker line (no second install).
    LocalBoot,
}

/// The image's format on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Gzip,
    Zstd,
}

/// An image install (see `install.rs`) instead of a boot to heartbeat.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Install {
    pub case: Case,
    pub format: Format,
    /// The daemon's `[boot] installed` when the scenario is about another setting than
    /// the default (`not_found`): how the network boot after the install is sent to the
    /// disk.
    pub to_disk: Option<&'static str>,
}

/// The fleet view watched in headless Chromium during the boot (gb10-provision serving;
/// see `fleet.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fleet {
    /// The VM's row walks the stages live to its heartbeat.
    Live,
    /// This file (under data_path) is removed before the boot: the boot stops there and
    /// the row's "why it stopped" names it.
    Missing(&'static str),
}

pub struct Scenario {
    pub name: &'static str,
    pub about: &'static str,
    pub arch: Arch,
    pub firmware: Firmware,
    pub chain: Chain,
    pub dhcp: Dhcp,
    /// An image install, from an empty disk with the network first in the boot order.
    pub install: Option<Install>,
    /// The fleet view watched while it boots.
    pub fleet: Option<Fleet>,
}

pub static SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "seabios-ipxe",
        about: "SeaBIOS + iPXE option ROM -> iPXE script over HTTP -> kernel",
        arch: Arch::Amd64,
        firmware: Firmware::SeaBios,
        chain: Chain::IpxeScript,
        dhcp: Dhcp::Direct,
        install: None,
        fleet: None,
    },
    Scenario {
        name: "ovmf-ipxe",
        about: "OVMF UEFI PXE (arch 7) -> TFTP ipxe.efi -> HTTP script -> kernel",
        arch: Arch::Amd64,
        firmware: Firmware::Ovmf { secure: false },
        chain: Chain::Ipxe("ipxe.efi"),
        dhcp: Dhcp::Direct,
        install: None,
        fleet: Some(Fleet::Live),
    },
    Scenario {
        name: "ovmf-ipxe-missing-kernel",
        about: "as ovmf-ipxe with the kernel removed from www/: iPXE's fetch of it fails, and \
                the fleet view says why the machine stopped, naming the file",
        arch: Arch::Amd64,
        firmware: Firmware::Ovmf { secure: false },
        chain: Chain::Ipxe("ipxe.efi"),
        dhcp: Dhcp::Direct,
        install: None,
        fleet: Some(Fleet::Missing("www/amd64/vmlinuz")),
    },
    Scenario {
        name: "ovmf-snponly",
        about: "OVMF UEFI PXE (arch 7) -> TFTP snponly.efi -> HTTP script -> kernel",
        arch: Arch::Amd64,
        firmware: Firmware::Ovmf { secure: false },
        chain: Chain::Ipxe("snponly.efi"),
        dhcp: Dhcp::Direct,
        install: None,
        fleet: None,
    },
    Scenario {
        name: "ovmf-shim-grub",
        about: "OVMF PXE -> shim -> signed GRUB -> grub.cfg -> kernel",
        arch: Arch::Amd64,
        firmware: Firmware::Ovmf { secure: false },
        chain: Chain::ShimGrub,
        dhcp: Dhcp::Direct,
        install: None,
        fleet: None,
    },
    Scenario {
        name: "ovmf-shim-grub-sb",
        about: "as ovmf-shim-grub with Secure Boot on (MS keys), Debian's signed kernel over TFTP",
        arch: Arch::Amd64,
        firmware: Firmware::Ovmf { secure: true },
        chain: Chain::ShimGrub,
        dhcp: Dhcp::Direct,
        install: None,
        fleet: None,
    },
    Scenario {
        name: "ovmf-httpboot",
        about: "OVMF UEFI HTTP boot (arch 16) -> ipxe.efi over HTTP -> HTTP script -> kernel",
        arch: Arch::Amd64,
        firmware: Firmware::Ovmf { secure: false },
        chain: Chain::HttpBoot("ipxe.efi"),
        dhcp: Dhcp::Direct,
        install: None,
        fleet: None,
    },
    Scenario {
        name: "aavmf-shim-grub",
        about: "AAVMF arm64 UEFI PXE (arch 11) -> shimaa64 -> grubnetaa64 -> kernel (the GB10 path)",
        arch: Arch::Arm64,
        firmware: Firmware::Aavmf,
        chain: Chain::ShimGrub,
        dhcp: Dhcp::Direct,
        install: None,
        fleet: None,
    },
    Scenario {
        name: "aavmf-httpboot",
        about: "AAVMF arm64 UEFI HTTP boot (arch 19) -> shimaa64 over HTTP -> grubnetaa64 -> kernel",
        arch: Arch::Arm64,
        firmware: Firmware::Aavmf,
        chain: Chain::HttpBoot("shimaa64.efi"),
        dhcp: Dhcp::Direct,
        install: None,
        fleet: None,
    },
    Scenario {
        name: "ovmf-ipxe-proxy",
        about: "proxy DHCP: dnsmasq (the site's DHCP) gives the address, the boot server \
                OVMF PXE -> TFTP ipxe.efi -> HTTP script -> kernel",
        arch: Arch::Amd64,
        firmware: Firmware::Ovmf { secure: false },
        chain: Chain::Ipxe("ipxe.efi"),
        dhcp: Dhcp::Proxy,
        install: None,
        fleet: None,
    },
    Scenario {
        name: "ovmf-image-install",
        about: "Secure Boot, empty disk, network first: PXE -> shim -> GRUB -> install environment \
                -> zstd image streamed to disk and verified -> reboot -> sent to disk -> Debian's \
                signed shim -> GRUB -> kernel -> cloud-init NoCloud seed -> onboarded",
        arch: Arch::Amd64,
        firmware: Firmware::Ovmf { secure: true },
        chain: Chain::ShimGrub,
        dhcp: Dhcp::Direct,
        install: Some(Install {
            case: Case::Onboard,
            format: Format::Zstd,
            to_disk: None,
        }),
        fleet: None,
    },
    Scenario {
        name: "aavmf-image-install",
        about: "arm64 (the GB10 path), empty disk, network first: PXE -> shimaa64 -> GRUB -> \
                install environment -> zstd image to disk -> reboot -> disk -> cloud-init -> onboarded",
        arch: Arch::Arm64,
        firmware: Firmware::Aavmf,
        chain: Chain::ShimGrub,
        dhcp: Dhcp::Direct,
        install: Some(Install {
            case: Case::Onboard,
            format: Format::Zstd,
            to_disk: None,
        }),
        fleet: None,
    },
    Scenario {
        name: "ovmf-image-bad-checksum",
        about: "image install with a wrong sha256 (zstd marker image): streamed in full, then \
                failed with the mismatch, disk wiped, never installed",
        arch: Arch::Amd64,
        firmware: Firmware::Ovmf { secure: true },
        chain: Chain::ShimGrub,
        dhcp: Dhcp::Direct,
        install: Some(Install {
            case: Case::WrongChecksum,
            format: Format::Zstd,
            to_disk: None,
        }),
        fleet: None,
    },
    Scenario {
        name: "ovmf-image-truncated",
        about: "image install whose download is cut short on the wire (gzip marker image): \
                failed naming the truncation, disk wiped, never installed",
        arch: Arch::Amd64,
        firmware: Firmware::Ovmf { secure: true },
        chain: Chain::ShimGrub,
        dhcp: Dhcp::Direct,
        install: Some(Install {
            case: Case::Truncated,
            format: Format::Gzip,
            to_disk: None,
        }),
        fleet: None,
    },
    Scenario {
        name: "ovmf-ipxe-local",
        about: "installed host, iPXE chain, network first: PXE -> ipxe.efi -> install environment \
                -> marker image to disk -> reboot -> DHCP offers gb10-local-boot (the default \
                [boot] installed = not_found), TFTP and HTTP boot answer not found at once -> \
                OVMF's next boot option: the disk's signed shim -> GRUB -> marker line",
        arch: Arch::Amd64,
        firmware: Firmware::Ovmf { secure: false },
        chain: Chain::Ipxe("ipxe.efi"),
        dhcp: Dhcp::Direct,
        install: Some(Install {
            case: Case::LocalBoot,
            format: Format::Zstd,
            to_disk: None,
        }),
        fleet: None,
    },
    Scenario {
        name: "seabios-local",
        about: "installed host, BIOS: SeaBIOS + iPXE option ROM -> iPXE script -> install \
                environment -> marker image to disk -> reboot -> DHCP offers iPXE the script \
                URL gb10-local-boot (the default [boot] installed = not_found), which HTTP \
                answers not found -> SeaBIOS's next boot device: the disk's MBR -> GRUB \
                (i386-pc) -> marker line",
        arch: Arch::Amd64,
        firmware: Firmware::SeaBios,
        chain: Chain::IpxeScript,
        dhcp: Dhcp::Direct,
        install: Some(Install {
            case: Case::LocalBoot,
            format: Format::Zstd,
            to_disk: None,
        }),
        fleet: None,
    },
    Scenario {
        name: "seabios-local-sanboot",
        about: "installed host, BIOS, [boot] installed = loader: SeaBIOS + iPXE option ROM -> \
                install environment -> marker image to disk -> reboot -> iPXE script's \
                `sanboot --drive 0x80` -> the disk's MBR -> GRUB (i386-pc) -> marker line",
        arch: Arch::Amd64,
        firmware: Firmware::SeaBios,
        chain: Chain::IpxeScript,
        dhcp: Dhcp::Direct,
        install: Some(Install {
            case: Case::LocalBoot,
            format: Format::Gzip,
            to_disk: Some("loader"),
        }),
        fleet: None,
    },
    Scenario {
        name: "ovmf-local-no-boot-file",
        about: "installed host, [boot] installed = no_boot_file: PXE -> ipxe.efi -> install \
                environment -> marker image to disk -> reboot -> DHCP offers no boot file; \
                OVMF retries each network boot entry, then its next boot option: the disk",
        arch: Arch::Amd64,
        firmware: Firmware::Ovmf { secure: false },
        chain: Chain::Ipxe("ipxe.efi"),
        dhcp: Dhcp::Direct,
        install: Some(Install {
            case: Case::LocalBoot,
            format: Format::Zstd,
            to_disk: Some("no_boot_file"),
        }),
        fleet: None,
    },
    Scenario {
        name: "ovmf-sb-local-grub",
        about: "installed host, Secure Boot, [boot] installed = loader (the boot loader sends it \
                on): PXE -> shim -> GRUB -> install environment -> marker image to disk -> reboot \
                -> shim -> network GRUB's local entry -> the disk's /boot/grub/grub.cfg -> marker",
        arch: Arch::Amd64,
        firmware: Firmware::Ovmf { secure: true },
        chain: Chain::ShimGrub,
        dhcp: Dhcp::Direct,
        install: Some(Install {
            case: Case::LocalBoot,
            format: Format::Gzip,
            to_disk: Some("loader"),
        }),
        fleet: None,
    },
    Scenario {
        name: "aavmf-local",
        about: "arm64 (the GB10 path), installed host: PXE -> shimaa64 -> GRUB -> arm64 install \
                environment -> marker image to disk -> reboot -> DHCP offers gb10-local-boot, \
                not found at once -> AAVMF boots the disk: shimaa64 -> GRUB -> marker line",
        arch: Arch::Arm64,
        firmware: Firmware::Aavmf,
        chain: Chain::ShimGrub,
        dhcp: Dhcp::Direct,
        install: Some(Install {
            case: Case::LocalBoot,
            format: Format::Zstd,
            to_disk: None,
        }),
        fleet: None,
    },
];

pub fn find(name: &str) -> Option<&'static Scenario> {
    SCENARIOS.iter().find(|s| s.name == name)
}
