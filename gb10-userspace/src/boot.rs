//! The boot decision: what a client is told to boot, from what it says about itself
//! (options 93, 60, 77, 175, 97) and what the inventory says about it. One pure
//! function, used by DHCP, TFTP, HTTP and `explain`, so they can never disagree.
use std::net::Ipv4Addr;

use serde::Serialize;

use crate::{
    config::{BootConfig, InstalledBoot, UnknownClients},
    inventory::Inventory,
    mac::Mac,
};

/// The firmware class a client belongs to, from option 93 (RFC 4578, IANA "Processor
/// Architecture Types") or, when that is missing, from the `Arch:NNNNN` in option 60.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Firmware {
    /// Arch 0: legacy BIOS PXE (SeaBIOS iPXE ROM, vendor UNDI ROMs).
    Bios,
    /// Arch 6, 7, 9: x86 UEFI PXE (TFTP).
    UefiX86,
    /// Arch 11: arm64 UEFI PXE (TFTP).
    UefiArm64,
    /// Arch 15, 16: x86 UEFI HTTP boot.
    HttpX86,
    /// Arch 19: arm64 UEFI HTTP boot.
    HttpArm64,
}

impl Firmware {
    /// The firmware class of an option-93 value, `None` for architectures we have no
    /// boot file for.
    pub fn from_arch(arch: u16) -> Option<Self> {
        Some(match arch {
            0 => Self::Bios,
            6 | 7 | 9 => Self::UefiX86,
            11 => Self::UefiArm64,
            15 | 16 => Self::HttpX86,
            19 => Self::HttpArm64,
            _ => return None,
        })
    }

    /// The key of this firmware's boot file in `[boot]` and in a profile's `boot_files`.
    pub fn key(self) -> &'static str {
        match self {
            Self::Bios => "bios",
            Self::UefiX86 => "uefi_x86",
            Self::UefiArm64 => "uefi_arm64",
            Self::HttpX86 => "http_x86",
            Self::HttpArm64 => "http_arm64",
        }
    }

    /// This firmware's boot file in `[boot]`.
    pub fn configured(self, boot: &BootConfig) -> &str {
        match self {
            Self::Bios => &boot.bios,
            Self::UefiX86 => &boot.uefi_x86,
            Self::UefiArm64 => &boot.uefi_arm64,
            Self::HttpX86 => &boot.http_x86,
            Self::HttpArm64 => &boot.http_arm64,
        }
    }

    /// UEFI HTTP boot: the boot file is a URL and option 60 must say `HTTPClient`.
    pub fn is_http(self) -> bool {
        matches!(self, Self::HttpX86 | Self::HttpArm64)
    }
}

/// What a client told us about itself, as the DHCP options carried it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BootRequest {
    pub mac: Option<Mac>,
    /// Option 93, first architecture listed.
    pub arch: Option<u16>,
    /// Option 60, raw (e.g. `PXEClient:Arch:00007:UNDI:003000`).
    pub vendor_class: Option<Vec<u8>>,
    /// Option 77, raw: iPXE sends the bare string `iPXE`, RFC 3004 clients a
    /// length-prefixed list; both are matched.
    pub user_class: Option<Vec<u8>>,
    /// Option 175 (iPXE encapsulated options) was present.
    pub ipxe_options: bool,
    /// Option 97 (client machine UUID), raw.
    pub uuid: Option<Vec<u8>>,
}

impl BootRequest {
    /// From a decoded DHCP message.
    pub fn from_message(msg: &dhcproto::v4::Message) -> Self {
        use dhcproto::v4::{DhcpOption as O, OptionCode};
        let opts = msg.opts();
        let bytes = |code| match opts.get(code) {
            Some(O::ClassIdentifier(v) | O::UserClass(v) | O::ClientMachineIdentifier(v)) => {
                Some(v.clone())
            }
            _ => None,
        };
        Self {
            mac: (msg.hlen() == 6 && msg.chaddr().len() >= 6).then(|| {
                let mut m = [0; 6];
                m.copy_from_slice(&msg.chaddr()[..6]);
                Mac(m)
            }),
            arch: match opts.get(OptionCode::ClientSystemArchitecture) {
                Some(O::ClientSystemArchitecture(a)) => Some(u16::from(*a)),
                _ => None,
            },
            vendor_class: bytes(OptionCode::ClassIdentifier),
            user_class: bytes(OptionCode::UserClass),
            ipxe_options: opts.get(OptionCode::Unknown(IPXE_ENCAP)).is_some(),
            uuid: bytes(OptionCode::ClientMachineIdentifier),
        }
    }

    /// `PXEClient` or `HTTPClient` when option 60 starts with one of them.
    pub fn pxe_class(&self) -> Option<PxeClass> {
        let vc = self.vendor_class.as_deref()?;
        if vc.starts_with(b"PXEClient") {
            Some(PxeClass::PxeClient)
        } else if vc.starts_with(b"HTTPClient") {
            Some(PxeClass::HttpClient)
        } else {
            None
        }
    }

    /// Whether the client is iPXE: user class `iPXE` or option 175 present.
    pub fn is_ipxe(&self) -> bool {
        self.ipxe_options || self.user_class.as_deref().is_some_and(user_class_has_ipxe)
    }

    /// Option 93, or else the `Arch:NNNNN` field of option 60.
    fn effective_arch(&self) -> Option<(u16, &'static str)> {
        if let Some(arch) = self.arch {
            return Some((arch, "option 93"));
        }
        let vc = std::str::from_utf8(self.vendor_class.as_deref()?).ok()?;
        let mut parts = vc.split(':');
        while let Some(p) = parts.next() {
            if p == "Arch" {
                return parts
                    .next()?
                    .parse()
                    .ok()
                    .map(|a| (a, "option 60 Arch field"));
            }
        }
        None
    }

    /// Option 97 as text: the 16 UUID bytes after the type byte 0, else hex.
    pub fn uuid_text(&self) -> Option<String> {
        let raw = self.uuid.as_deref()?;
        Some(match raw {
            [0, u @ ..] if u.len() == 16 => {
                let h: Vec<String> = u.iter().map(|b| format!("{b:02x}")).collect();
                format!(
                    "{}-{}-{}-{}-{}",
                    h[..4].concat(),
                    h[4..6].concat(),
                    h[6..8].concat(),
                    h[8..10].concat(),
                    h[10..].concat()
                )
            }
            _ => raw.iter().map(|b| format!("{b:02x}")).collect(),
        })
    }
}

/// Option code of iPXE's encapsulated options.
pub const IPXE_ENCAP: u8 = 175;
/// Sub-option of 175: "no-pxedhcp", skip waiting for proxy offers.
pub const IPXE_NO_PXEDHCP: u8 = 176;

/// The class a PXE client names itself with in option 60, echoed in replies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum PxeClass {
    #[serde(rename = "PXEClient")]
    PxeClient,
    #[serde(rename = "HTTPClient")]
    HttpClient,
}

impl PxeClass {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PxeClient => "PXEClient",
            Self::HttpClient => "HTTPClient",
        }
    }
}

/// Matches `iPXE` as a bare option-77 value or as one entry of an RFC 3004 list.
fn user_class_has_ipxe(uc: &[u8]) -> bool {
    if uc == b"iPXE" {
        return true;
    }
    let mut rest = uc;
    while let [len, tail @ ..] = rest {
        let len = usize::from(*len);
        if len > tail.len() {
            return false;
        }
        if &tail[..len] == b"iPXE" {
            return true;
        }
        rest = &tail[len..];
    }
    false
}

/// Where the server is, for URLs and `siaddr`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerAddr {
    pub ip: Ipv4Addr,
    pub http_port: u16,
}

/// What to do with a client.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Answer it (with a boot file when `boot_file` is set, else a plain address).
    Serve,
    /// Unknown client and `[boot] unknown_clients = "ignore"`: no answer at all.
    Ignore,
}

/// The answer for one client: what DHCP puts in the reply and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BootDecision {
    pub action: Action,
    pub firmware: Option<Firmware>,
    /// Boot file name (TFTP path) or URL, for the BOOTP `file` field and option 67.
    pub boot_file: Option<String>,
    /// `siaddr`: the TFTP server, set when the boot file is fetched by TFTP.
    pub next_server: Option<Ipv4Addr>,
    /// Option 60 to echo: `HTTPClient` only. UEFI HTTP boot needs it; EDK2's PXE rejects
    /// a full-DHCP offer that echoes `PXEClient` (PXE-E16 "No valid offer received",
    /// seen on OVMF and AAVMF). Proxy offers add `PXEClient` themselves.
    pub vendor_class: Option<PxeClass>,
    /// Send option 175 with 176 (no-pxedhcp) = 1 so iPXE skips its proxy-offer wait.
    pub ipxe_no_proxy_wait: bool,
    /// The inventory host's name when the MAC is known.
    pub hostname: Option<String>,
    /// The profile the client gets, if any.
    pub profile: Option<String>,
    /// Option 97 as text, recorded for the client.
    pub uuid: Option<String>,
    /// Each step of the decision, in words, for logs and `explain`.
    pub why: Vec<String>,
}

/// Decides what `req` boots. Pure: the same inputs always give the same answer.
pub fn decide(
    req: &BootRequest,
    inventory: &Inventory,
    boot: &BootConfig,
    server: ServerAddr,
) -> BootDecision {
    let mut why = Vec::new();
    let host = req.mac.and_then(|m| inventory.host(m));
    match (host, req.mac) {
        (Some(h), _) => why.push(format!(
            "MAC {} is inventory host {}",
            h.mac,
            h.hostname.as_deref().unwrap_or("(no hostname)")
        )),
        (None, Some(mac)) => why.push(format!("MAC {mac} is not in the inventory")),
        (None, None) => why.push("no Ethernet MAC in chaddr".into()),
    }
    let mut decision = BootDecision {
        action: Action::Serve,
        firmware: None,
        boot_file: None,
        next_server: None,
        vendor_class: req.pxe_class().filter(|c| *c == PxeClass::HttpClient),
        ipxe_no_proxy_wait: false,
        hostname: host.and_then(|h| h.hostname.clone()),
        profile: None,
        uuid: req.uuid_text(),
        why: Vec::new(),
    };
    if host.is_none() && boot.unknown_clients == UnknownClients::Ignore {
        why.push("unknown clients are ignored ([boot] unknown_clients = \"ignore\")".into());
        decision.action = Action::Ignore;
        decision.why = why;
        return decision;
    }
    let profile = inventory.profile_for(host);
    decision.profile = profile.map(|(name, _)| name.to_owned());
    if let Some((name, _)) = profile {
        why.push(format!("profile {name}"));
    }
    let expand = |template: &str| expand(template, server, req.mac);

    if req.is_ipxe() {
        // iPXE loaded by our own boot file would otherwise get that boot file again.
        let script = profile
            .and_then(|(_, p)| p.boot_files.get("ipxe_script"))
            .unwrap_or(&boot.ipxe_script);
        why.push(format!(
            "client is iPXE ({}): HTTP script instead of a boot loader, breaking the chainload loop",
            if req.ipxe_options {
                "option 175 present"
            } else {
                "user class iPXE"
            }
        ));
        decision.boot_file = Some(expand(script));
        decision.ipxe_no_proxy_wait = true;
        decision.firmware = req
            .effective_arch()
            .and_then(|(a, _)| Firmware::from_arch(a));
        decision.why = why;
        return decision;
    }

    let Some((arch, source)) = req.effective_arch() else {
        why.push(if req.pxe_class().is_some() {
            "PXE class without an architecture: plain address, no boot file".into()
        } else {
            "no option 93 and no PXE class: not a network-boot client, plain address".into()
        });
        decision.why = why;
        return decision;
    };
    let Some(fw) = Firmware::from_arch(arch) else {
        why.push(format!(
            "architecture {arch} ({source}) has no boot file: plain address"
        ));
        decision.why = why;
        return decision;
    };
    decision.firmware = Some(fw);
    why.push(format!("architecture {arch} ({source}) is {}", fw.key()));
    let (file, from) = if let Some(f) = host.and_then(|h| h.boot_file.as_ref()) {
        (f.as_str(), "the host's boot_file".to_owned())
    } else if let Some((name, f)) =
        profile.and_then(|(n, p)| p.boot_files.get(fw.key()).map(|f| (n, f)))
    {
        (
            f.as_str(),
            format!("profile {name} boot_files.{}", fw.key()),
        )
    } else {
        (fw.configured(boot), format!("[boot] {}", fw.key()))
    };
    let file = expand(file);
    if fw.is_http() {
        decision.vendor_class = Some(PxeClass::HttpClient);
        let url = if file.contains("://") {
            file
        } else {
            format!(
                "http://{}:{}/{}",
                server.ip,
                server.http_port,
                file.trim_start_matches('/')
            )
        };
        why.push(format!(
            "UEFI HTTP boot: URL {url} from {from}, option 60 HTTPClient"
        ));
        decision.boot_file = Some(url);
    } else {
        why.push(format!(
            "TFTP boot file {file} from {from}, siaddr {}",
            server.ip
        ));
        decision.boot_file = Some(file);
        decision.next_server = Some(server.ip);
    }
    decision.why = why;
    decision
}

/// The boot file an installed host is offered with `[boot] installed = "not_found"`:
/// TFTP and HTTP answer a request for it "not found" at once, whatever the roots hold,
/// and record no failure (it is the host's way to its disk, not a missing file).
pub const LOCAL_BOOT_FILE: &str = "gb10-local-boot";

/// Whether a requested TFTP or HTTP path is [`LOCAL_BOOT_FILE`].
pub fn is_local_boot_file(path: &str) -> bool {
    path.trim_start_matches('/') == LOCAL_BOOT_FILE
}

/// How [`send_to_disk`] sent an installed host on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ToDisk {
    /// No boot file (`no_boot_file`).
    Withheld,
    /// [`LOCAL_BOOT_FILE`], which is not found (`not_found`).
    NotFound,
}

/// With `[boot] installed = "no_boot_file"` or `"not_found"`, changes an installed
/// host's network boot so the firmware goes on to its disk; how, if it did. `installed`
/// is only asked when it matters (a boot file to change, the setting on): it looks at
/// the host life cycle.
pub fn send_to_disk(
    decision: &mut BootDecision,
    boot: &BootConfig,
    installed: impl FnOnce() -> bool,
) -> Option<ToDisk> {
    if boot.installed == InstalledBoot::Loader || decision.boot_file.is_none() || !installed() {
        return None;
    }
    if boot.installed == InstalledBoot::NotFound {
        let file = decision.boot_file.take().unwrap_or_default();
        // A URL (UEFI HTTP boot, an iPXE script) keeps its server; a TFTP name its siaddr.
        let local = match file.find("://").map(|i| i + 3) {
            Some(host) => {
                let end = file[host..].find('/').map_or(file.len(), |p| host + p);
                format!("{}/{LOCAL_BOOT_FILE}", &file[..end])
            }
            None => LOCAL_BOOT_FILE.to_owned(),
        };
        decision.why.push(format!(
            "the host is installed and [boot] installed = \"not_found\": boot file {local}, \
             which is not found, so the firmware goes on to its next boot option (the disk) at once"
        ));
        decision.boot_file = Some(local);
        return Some(ToDisk::NotFound);
    }
    decision.boot_file = None;
    decision.next_server = None;
    decision.vendor_class = None;
    decision.ipxe_no_proxy_wait = false;
    decision.why.push(
        "the host is installed and [boot] installed = \"no_boot_file\": no boot file, so the \
         firmware goes on to its next boot option (the disk)"
            .into(),
    );
    Some(ToDisk::Withheld)
}

/// Fills `{server}`, `{http_port}` and `{mac}` in a configured file name or URL.
fn expand(template: &str, server: ServerAddr, mac: Option<Mac>) -> String {
    let mut s = template
        .replace("{server}", &server.ip.to_string())
        .replace("{http_port}", &server.http_port.to_string());
    if let Some(mac) = mac {
        s = s.replace("{mac}", &mac.to_string());
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVER: ServerAddr = ServerAddr {
        ip: Ipv4Addr::new(198, 18, 0, 1),
        http_port: 8080,
    };
    const MAC: Mac = Mac([0x52, 0x54, 0, 0x12, 0x34, 0x56]);

    fn req(arch: Option<u16>, vc: &str, uc: Option<&[u8]>) -> BootRequest {
        BootRequest {
            mac: Some(MAC),
            arch,
            vendor_class: (!vc.is_empty()).then(|| vc.as_bytes().to_vec()),
            user_class: uc.map(<[u8]>::to_vec),
            ipxe_options: false,
            uuid: Some([[0u8].as_slice(), &[0x11; 16]].concat()),
        }
    }

    fn decide_default(r: &BootRequest) -> BootDecision {
        decide(r, &Inventory::default(), &BootConfig::default(), SERVER)
    }

    const SCRIPT: &str = "http://198.18.0.1:8080/boot.ipxe";

    // One test per row of FIRMWARE.md's table.
    #[test]
    fn seabios_ipxe_rom_gets_the_script_and_no_proxy_wait() {
        let d = decide_default(&req(
            Some(0),
            "PXEClient:Arch:00000:UNDI:002001",
            Some(b"iPXE"),
        ));
        assert_eq!(d.boot_file.as_deref(), Some(SCRIPT));
        assert!(d.ipxe_no_proxy_wait);
        assert_eq!(d.firmware, Some(Firmware::Bios));
        assert_eq!(d.action, Action::Serve);
    }

    #[test]
    fn ovmf_pxe_gets_uefi_x86_file_and_siaddr() {
        let d = decide_default(&req(Some(7), "PXEClient:Arch:00007:UNDI:003000", None));
        assert_eq!(d.boot_file.as_deref(), Some("ipxe.efi"));
        assert_eq!(d.next_server, Some(SERVER.ip));
        // No PXEClient echo: EDK2 rejects a full-DHCP offer carrying it.
        assert_eq!(d.vendor_class, None);
        assert!(!d.ipxe_no_proxy_wait);
        assert_eq!(
            d.uuid.as_deref(),
            Some("11111111-1111-1111-1111-111111111111")
        );
    }

    #[test]
    fn aavmf_pxe_gets_shimaa64() {
        let d = decide_default(&req(Some(11), "PXEClient:Arch:00011:UNDI:003000", None));
        assert_eq!(d.boot_file.as_deref(), Some("shimaa64.efi"));
        assert_eq!(d.next_server, Some(SERVER.ip));
        assert_eq!(d.firmware, Some(Firmware::UefiArm64));
    }

    #[test]
    fn uefi_http_boot_gets_httpclient_and_a_url() {
        for (arch, fw, file) in [
            (16, Firmware::HttpX86, "ipxe.efi"),
            (19, Firmware::HttpArm64, "shimaa64.efi"),
        ] {
            let vc = format!("HTTPClient:Arch:{arch:05}:UNDI:003000");
            let d = decide_default(&req(Some(arch), &vc, None));
            assert_eq!(d.firmware, Some(fw));
            assert_eq!(d.vendor_class, Some(PxeClass::HttpClient));
            assert_eq!(
                d.boot_file.unwrap(),
                format!("http://198.18.0.1:8080/{file}")
            );
            assert_eq!(d.next_server, None);
        }
    }

    #[test]
    fn ipxe_efi_both_arches_and_option_175_alone() {
        for arch in [7, 11] {
            let vc = format!("PXEClient:Arch:{arch:05}:UNDI:003010");
            let d = decide_default(&req(Some(arch), &vc, Some(b"iPXE")));
            assert_eq!(d.boot_file.as_deref(), Some(SCRIPT), "arch {arch}");
            assert!(d.ipxe_no_proxy_wait);
        }
        let mut r = req(Some(7), "PXEClient:Arch:00007:UNDI:003010", None);
        r.ipxe_options = true;
        assert_eq!(decide_default(&r).boot_file.as_deref(), Some(SCRIPT));
        // RFC 3004 form of option 77.
        let r = req(Some(7), "", Some(b"\x04iPXE"));
        assert_eq!(decide_default(&r).boot_file.as_deref(), Some(SCRIPT));
    }

    #[test]
    fn grub_net_bootp_and_plain_clients_get_a_plain_address() {
        let d = decide_default(&req(None, "", None));
        assert_eq!(d.boot_file, None);
        assert_eq!(d.next_server, None);
        assert_eq!(d.vendor_class, None);
        assert_eq!(d.action, Action::Serve);
        assert!(d.why.iter().any(|w| w.contains("plain address")), "{d:?}");
    }

    #[test]
    fn bios_x86_variants_and_arch_from_option_60() {
        let d = decide_default(&req(Some(0), "PXEClient:Arch:00000:UNDI:002001", None));
        assert_eq!(d.boot_file.as_deref(), Some("undionly.kpxe"));
        for arch in [6, 9] {
            let d = decide_default(&req(Some(arch), "PXEClient", None));
            assert_eq!(d.firmware, Some(Firmware::UefiX86));
        }
        let d = decide_default(&req(None, "PXEClient:Arch:00011:UNDI:003000", None));
        assert_eq!(d.boot_file.as_deref(), Some("shimaa64.efi"));
        assert!(d.why.iter().any(|w| w.contains("option 60")));
        let d = decide_default(&req(Some(2), "PXEClient", None));
        assert_eq!(d.boot_file, None);
    }

    fn inventory() -> Inventory {
        toml::from_str(
            r#"
            default_profile = "base"
            [profiles.base]
            [profiles.spark]
            boot_files = { uefi_arm64 = "grub/shimaa64.efi", ipxe_script = "http://{server}:{http_port}/ipxe/{mac}" }
            [[hosts]]
            mac = "52:54:00:12:34:56"
            hostname = "spark-1"
            profile = "spark"
            [[hosts]]
            mac = "52:54:00:00:00:02"
            boot_file = "special.efi"
            "#,
        )
        .unwrap()
    }

    #[test]
    fn profile_and_host_overrides() {
        let inv = inventory();
        let boot = BootConfig::default();
        let d = decide(&req(Some(11), "PXEClient", None), &inv, &boot, SERVER);
        assert_eq!(d.boot_file.as_deref(), Some("grub/shimaa64.efi"));
        assert_eq!(d.profile.as_deref(), Some("spark"));
        assert_eq!(d.hostname.as_deref(), Some("spark-1"));
        let d = decide(&req(Some(7), "", Some(b"iPXE")), &inv, &boot, SERVER);
        assert_eq!(
            d.boot_file.as_deref(),
            Some("http://198.18.0.1:8080/ipxe/52:54:00:12:34:56")
        );
        let mut r = req(Some(7), "PXEClient", None);
        r.mac = Some(Mac([0x52, 0x54, 0, 0, 0, 2]));
        let d = decide(&r, &inv, &boot, SERVER);
        assert_eq!(d.boot_file.as_deref(), Some("special.efi"));
        assert_eq!(d.profile.as_deref(), Some("base"));
    }

    #[test]
    fn unknown_clients_policy() {
        let inv = inventory();
        let mut boot = BootConfig::default();
        let mut r = req(Some(7), "PXEClient", None);
        r.mac = Some(Mac([2, 0, 0, 0, 0, 9]));
        let d = decide(&r, &inv, &boot, SERVER);
        assert_eq!(d.action, Action::Serve);
        assert_eq!(d.profile.as_deref(), Some("base"));
        boot.unknown_clients = UnknownClients::Ignore;
        let d = decide(&r, &inv, &boot, SERVER);
        assert_eq!(d.action, Action::Ignore);
        assert_eq!(d.boot_file, None);
        // Known hosts are still served.
        let d = decide(&req(Some(7), "PXEClient", None), &inv, &boot, SERVER);
        assert_eq!(d.action, Action::Serve);
    }
}
