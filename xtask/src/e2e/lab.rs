//! One boot: a bridge namespace, gb10-provision (DHCP, TFTP, HTTP) or the reference
//! stack (dnsmasq + nginx), one QEMU VM on a tap, watched stage by stage,
//! everything killed by PID on return.
use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use gb10_lab::{Bridge, Guard, HTTP_PORT};

use super::{
    assets::{Arch, Assets},
    fleet::{Seen, Watcher},
    report::{Failure, last_lines, tail},
    scenario::{Chain, Dhcp, Firmware, Fleet, Scenario},
};
use crate::{cargo, exec, root};

/// The site DHCP server's address in proxy scenarios.
const SITE_DHCP: &str = "198.18.0.3";

/// Longest a boot may take, VM start to heartbeat (TCG boots take 14-34 s here).
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(150);

/// Which servers answer the VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stack {
    /// gb10-provision alone: DHCP, TFTP, HTTP.
    Gb10,
    /// The reference: dnsmasq (DHCP, TFTP) + nginx with static scripts.
    Reference,
    /// gb10-provision's container image of this architecture (the release artifact or a
    /// check image), run by podman from the chart's pod spec (`cargo xtask image
    /// --check`).
    Image(Arch, crate::image::Build),
}

/// What serves the VM when it is gb10-provision: the process, or the chart's pod.
enum Server {
    Process(gb10_lab::Daemon),
    Pod(crate::image::check::Pod),
}

impl Server {
    fn log(&self) -> String {
        match self {
            Self::Process(d) => d.log(),
            Self::Pod(p) => p.log(),
        }
    }
}

/// How progress is shown.
pub enum Progress {
    /// One line per stage as it is reached.
    Lines,
    Quiet,
}

/// The stages of a boot, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    Started,
    Dhcp,
    Tftp,
    Http,
    Kernel,
    Initramfs,
    Lease,
    Heartbeat,
}

impl Stage {
    fn label(self) -> &'static str {
        match self {
            Self::Started => "VM started",
            Self::Dhcp => "DHCP: firmware got an address",
            Self::Tftp => "TFTP: boot loader fetched",
            Self::Http => "HTTP: boot script / kernel fetched",
            Self::Kernel => "kernel running",
            Self::Initramfs => "initramfs up",
            Self::Lease => "initramfs DHCP lease",
            Self::Heartbeat => "heartbeat: client onboarded",
        }
    }
}

impl Stage {
    /// A short name for summaries.
    pub fn short(self) -> &'static str {
        match self {
            Self::Started => "start",
            Self::Dhcp => "dhcp",
            Self::Tftp => "tftp",
            Self::Http => "http",
            Self::Kernel => "kernel",
            Self::Initramfs => "initramfs",
            Self::Lease => "lease",
            Self::Heartbeat => "heartbeat",
        }
    }
}

pub struct Outcome {
    /// VM start to heartbeat (or, when the scenario makes it stop, to the fleet view
    /// saying why).
    pub heartbeat: Duration,
    pub stages: Vec<(Stage, Duration)>,
    /// What the fleet view showed, when the scenario watches it.
    pub fleet: Option<Seen>,
    /// The firmware stalled before its first network step and the VM was started again
    /// (the times count from the second start).
    pub restarted: bool,
}

/// Builds the daemon (without the eBPF object when AYA_BUILD_SKIP is set); its path.
/// `release` for timings set beside a reference (which is an optimised build too); the
/// debug build, already there from the tests, otherwise.
pub fn build_daemon(release: bool) -> anyhow::Result<PathBuf> {
    let mut cmd = cargo();
    cmd.args([
        "build",
        "--quiet",
        "-p",
        "gb10-userspace",
        "--bin",
        "gb10-provision",
    ]);
    if release {
        cmd.arg("--release");
    }
    exec(&mut cmd)?;
    let profile = if release { "release" } else { "debug" };
    Ok(root()
        .join("target")
        .join(profile)
        .join("gb10-provision")
        .canonicalize()?)
}

/// A MAC per scenario and stack, so records never mix.
pub fn mac_for(s: &Scenario, stack: Stack) -> String {
    let n = super::scenario::SCENARIOS
        .iter()
        .position(|x| std::ptr::eq(x, s))
        .unwrap_or(0);
    let stack = match stack {
        Stack::Gb10 => 0,
        Stack::Reference => 1,
        Stack::Image(..) => 2,
    };
    format!("52:54:00:e2:{stack:02x}:{:02x}", n + 1)
}

fn copy(from: &Path, to: &Path) -> anyhow::Result<()> {
    if let Some(d) = to.parent() {
        fs::create_dir_all(d)?;
    }
    fs::copy(from, to)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    Ok(())
}

/// Lays out the TFTP and HTTP roots with `gb10-provision assets`, as an operator would:
/// from the downloaded packages (shim, signed GRUB, iPXE, the kernel) and the e2e
/// initramfs, kernels and initrds under `<arch>/` in both roots, boot loaders at their
/// top. Then one e2e-only change: UEFI HTTP boot fetches GRUB over HTTP and Debian's
/// signed network GRUB has no http module, so www/ gets a GRUB built with it.
///
/// `gb10` is the command that runs gb10-provision: the built binary, or the image's
/// own (`podman run` with these paths mounted) when the container serves.
pub fn populate(
    assets: &Assets,
    mut gb10: Command,
    data: &Path,
    progress: &Progress,
) -> anyhow::Result<()> {
    let out = gb10
        .arg("assets")
        .arg(&assets.amd64.debs)
        .arg(&assets.arm64.debs)
        .arg(format!("--initrd=amd64={}", assets.amd64.initrd.display()))
        .arg(format!("--initrd=arm64={}", assets.arm64.initrd.display()))
        .arg("--data-path")
        .arg(data)
        .output()
        .context("running gb10-provision assets")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        anyhow::bail!(
            "gb10-provision assets failed ({}):\n{text}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    if let Progress::Lines = progress {
        let placed = text
            .lines()
            .filter(|l| l.trim_start().starts_with("placed"))
            .count();
        println!("  gb10-provision assets: {placed} boot files placed from the packages");
    }
    copy(&assets.amd64.grub_http, &data.join("www/grubx64.efi"))?;
    copy(&assets.arm64.grub_http, &data.join("www/grubaa64.efi"))?;
    Ok(())
}

/// `gb10-provision` run from `arch`'s image (no network, read-only root), with the
/// packages and initrds `assets` reads mounted read-only and `data` writable, each at
/// its own path so the arguments name them as on this machine.
fn assets_in_image(
    arch: Arch,
    build: crate::image::Build,
    assets: &Assets,
    data: &Path,
) -> anyhow::Result<Command> {
    fs::create_dir_all(data)?;
    let mut mounts = Vec::new();
    for a in [&assets.amd64, &assets.arm64] {
        mounts.push((a.debs.as_path(), false));
        mounts.push((a.initrd.as_path(), false));
    }
    mounts.push((data, true));
    crate::image::check::Runtime::open(arch, build)?.command(&mounts)
}

fn console(arch: Arch) -> &'static str {
    match arch {
        Arch::Amd64 => "ttyS0",
        Arch::Arm64 => "ttyAMA0",
    }
}

/// The kernel command line every chain passes (the initramfs reads `gb10.heartbeat`).
fn cmdline(s: &Scenario, heartbeat: &str) -> String {
    format!(
        "console={} panic=1 gb10.heartbeat={heartbeat}",
        console(s.arch)
    )
}

/// The reference stack's static scripts (what a dnsmasq + web server site writes by
/// hand), and nginx's config: the files, and a `/heartbeat/<mac>` location that answers
/// 200, so the access log shows the heartbeat.
fn reference_files(
    s: &Scenario,
    lab: &Bridge,
    mac: &str,
    www: &Path,
    tftp: &Path,
) -> anyhow::Result<PathBuf> {
    let server = lab.server_ip;
    let a = s.arch.debian();
    let line = cmdline(s, &format!("http://{server}:{HTTP_PORT}/heartbeat/{mac}"));
    fs::write(
        www.join("boot.ipxe"),
        format!(
            "#!ipxe\nkernel http://{server}:{HTTP_PORT}/{a}/vmlinuz initrd=initrd {line}\n\
             initrd --name initrd http://{server}:{HTTP_PORT}/{a}/initrd.img\nboot\n"
        ),
    )?;
    for (root, dev) in [
        (tftp, format!("tftp,{server}")),
        (www, format!("http,{server}:{HTTP_PORT}")),
    ] {
        fs::create_dir_all(root.join("grub"))?;
        fs::write(
            root.join("grub/grub.cfg"),
            format!(
                "set timeout=0\nmenuentry e2e {{\n  linux ({dev})/{a}/vmlinuz {line}\n  \
                 initrd ({dev})/{a}/initrd.img\n}}\n"
            ),
        )?;
    }
    Ok(crate::nginx::config(
        &lab.dir,
        &format!("{server}:{HTTP_PORT}"),
        www,
        &format!(
            "tcp_nodelay on;\n  access_log {}/nginx-access.log;\n  \
             types {{ application/efi efi; text/plain ipxe cfg; }}\n  \
             default_type application/octet-stream;",
            lab.dir.display()
        ),
        "location /heartbeat/ { return 200 \"ok\\n\"; }",
    )?)
}

fn inventory(s: &Scenario, mac: &str, server: &str) -> String {
    let a = s.arch.debian();
    format!(
        r#"# cargo xtask e2e: one VM, scenario {name}
[profiles.e2e]
kernel = "{a}/vmlinuz"
initrd = "{a}/initrd.img"
cmdline = "{line}"
seed = "none"
vars = {{ grub_fetch = "{fetch}", grub_timeout = 0 }}

[[hosts]]
mac = "{mac}"
hostname = "e2e-{name}"
profile = "e2e"
"#,
        name = s.name,
        line = cmdline(s, &format!("http://{server}:{HTTP_PORT}/heartbeat")),
        fetch = grub_fetch(s),
    )
}

/// How GRUB fetches the kernel: over HTTP when it was itself HTTP-booted (an HTTP GRUB),
/// else over TFTP (Debian's signed network GRUB has no http module).
fn grub_fetch(s: &Scenario) -> &'static str {
    match s.chain {
        Chain::HttpBoot(_) => "http",
        _ => "tftp",
    }
}

/// dnsmasq as DHCP + TFTP server (port 0: no DNS), booting by option 93 / user class.
fn dnsmasq_conf(s: &Scenario, lab: &Bridge, tftp: &Path, dir: &Path) -> String {
    let ip = lab.server_ip;
    let efi_file = match s.chain {
        Chain::Ipxe(f) => f,
        Chain::ShimGrub | Chain::IpxeScript | Chain::HttpBoot(_) => "shimx64.efi",
    };
    let pxe = if let Chain::HttpBoot(file) = s.chain {
        // Only the HTTP boot request (arch 16/19) gets a boot file.
        format!(
            "dhcp-match=set:http,option:client-arch,16\n\
             dhcp-match=set:http,option:client-arch,19\n\
             dhcp-option-force=tag:http,60,HTTPClient\n\
             dhcp-boot=tag:!ipxe,tag:http,http://{ip}:{HTTP_PORT}/{file}\n"
        )
    } else if s.dhcp == Dhcp::Proxy {
        // Proxy offers carry PXE boot services, not dhcp-boot.
        format!(
            "pxe-service=tag:!ipxe,X86-64_EFI,\"e2e\",{efi_file}\n\
             pxe-service=tag:!ipxe,ARM64_EFI,\"e2e\",shimaa64.efi\n"
        )
    } else {
        format!(
            "dhcp-boot=tag:!ipxe,tag:efi-x86,{efi_file},,{ip}\n\
             dhcp-boot=tag:!ipxe,tag:efi-arm,shimaa64.efi,,{ip}\n"
        )
    };
    let range = match s.dhcp {
        Dhcp::Direct => "dhcp-range=198.18.0.100,198.18.0.200,255.255.255.0,1h\ndhcp-authoritative",
        Dhcp::Proxy => "dhcp-range=198.18.0.0,proxy,255.255.255.0",
    };
    format!(
        "port=0\ninterface={iface}\nbind-interfaces\nexcept-interface=lo\n{range}\n\
         dhcp-leasefile={dir}/leases\nlog-dhcp\n\
         enable-tftp\ntftp-root={tftp}\n\
         dhcp-userclass=set:ipxe,iPXE\ndhcp-match=set:ipxe,175\n\
         dhcp-match=set:efi-x86,option:client-arch,7\n\
         dhcp-match=set:efi-arm,option:client-arch,11\n\
         dhcp-option-force=tag:ipxe,175,b0:01:01\n\
         dhcp-boot=tag:ipxe,http://{ip}:{HTTP_PORT}/boot.ipxe\n{pxe}",
        iface = lab.iface,
        dir = dir.display(),
        tftp = tftp.display(),
    )
}

/// gb10-provision's flags for the scenario: DHCP range, and the x86 UEFI PXE boot file.
/// XDP and the guard keep their defaults (attached, enforce), as users run it.
fn daemon_args(s: &Scenario) -> Vec<String> {
    let efi = match s.chain {
        Chain::Ipxe(f) => f,
        Chain::ShimGrub | Chain::IpxeScript | Chain::HttpBoot(_) => "shimx64.efi",
    };
    let mut args: Vec<String> = ["--boot-uefi-x86", efi].map(String::from).to_vec();
    match s.dhcp {
        Dhcp::Direct => args.extend(["--dhcp-range".into(), "198.18.0.100-198.18.0.200".into()]),
        Dhcp::Proxy => args.extend(["--mode".into(), "proxy".into()]),
    }
    if let Chain::HttpBoot(file) = s.chain {
        let flag = match s.arch {
            Arch::Amd64 => "--boot-http-x86",
            Arch::Arm64 => "--boot-http-arm64",
        };
        args.extend([flag.into(), file.into()]);
    }
    args
}

/// The chart values that make its pod serve the scenario as [`daemon_args`] makes the
/// process serve it: a CI values file and `--set` pairs on top. XDP and the guard stay
/// as the values file has them (the chart's defaults), not off.
fn chart_values(s: &Scenario) -> (&'static str, Vec<(&'static str, String)>) {
    let efi = match s.chain {
        Chain::Ipxe(f) => f,
        Chain::ShimGrub | Chain::IpxeScript | Chain::HttpBoot(_) => "shimx64.efi",
    };
    let mut set = vec![
        ("httpPort", HTTP_PORT.to_string()),
        ("extraConfig.boot.uefi_x86", efi.to_owned()),
    ];
    let values = match s.dhcp {
        Dhcp::Direct => {
            set.push(("dhcpRange", "198.18.0.100-198.18.0.200".into()));
            "ci/direct-values.yaml"
        }
        Dhcp::Proxy => {
            set.push(("proxySubnet", "198.18.0.0/24".into()));
            "ci/proxy-values.yaml"
        }
    };
    if let Chain::HttpBoot(file) = s.chain {
        let key = match s.arch {
            Arch::Amd64 => "extraConfig.boot.http_x86",
            Arch::Arm64 => "extraConfig.boot.http_arm64",
        };
        set.push((key, file.to_owned()));
    }
    (values, set)
}

/// Whether the client record holds a boot file fetched over TFTP (HTTP paths start
/// with `/`, TFTP ones are relative to the TFTP root).
fn tftp_fetched(client: &str) -> bool {
    client
        .match_indices("\"event\":\"boot_file\",\"path\":\"")
        .any(|(i, m)| !client[i + m.len()..].starts_with('/'))
}

/// What a VM has beyond the scenario's firmware and NIC.
pub struct VmOptions<'a> {
    pub memory_mib: u32,
    /// vCPUs (QEMU's multi-threaded TCG runs one host thread each).
    pub cpus: u32,
    /// A virtio disk, second in the boot order after the NIC.
    pub disk: Option<&'a Path>,
    /// Let the guest reboot (installs); otherwise QEMU exits when it reboots.
    pub reboot: bool,
}

impl Default for VmOptions<'_> {
    fn default() -> Self {
        Self {
            memory_mib: 512,
            cpus: 1,
            disk: None,
            reboot: false,
        }
    }
}

/// QEMU for the scenario's firmware, serial console to `serial`.
pub fn qemu(
    s: &Scenario,
    lab: &Bridge,
    tap: &str,
    mac: &str,
    serial: &Path,
    vm: &VmOptions<'_>,
) -> anyhow::Result<Command> {
    let dir = &lab.dir;
    let (program, mut args): (&str, Vec<String>) = match s.firmware {
        Firmware::SeaBios => ("qemu-system-x86_64", vec!["-machine".into(), "pc".into()]),
        Firmware::Ovmf { secure } => {
            let (code, vars) = if secure {
                ("OVMF_CODE_4M.secboot.fd", "OVMF_VARS_4M.ms.fd")
            } else {
                ("OVMF_CODE_4M.fd", "OVMF_VARS_4M.fd")
            };
            copy(
                &Path::new("/usr/share/OVMF").join(vars),
                &dir.join("vars.fd"),
            )?;
            let mut a: Vec<String> = vec![
                "-machine".into(),
                if secure { "q35,smm=on" } else { "q35" }.into(),
            ];
            if secure {
                a.extend([
                    "-global".into(),
                    "driver=cfi.pflash01,property=secure,value=on".into(),
                ]);
            }
            a.extend(pflash(
                &Path::new("/usr/share/OVMF").join(code),
                &dir.join("vars.fd"),
            ));
            ("qemu-system-x86_64", a)
        }
        Firmware::Aavmf => {
            copy(
                Path::new("/usr/share/AAVMF/AAVMF_VARS.fd"),
                &dir.join("vars.fd"),
            )?;
            let mut a: Vec<String> = ["-machine", "virt", "-cpu", "cortex-a57"]
                .map(String::from)
                .to_vec();
            a.extend(pflash(
                Path::new("/usr/share/AAVMF/AAVMF_CODE.fd"),
                &dir.join("vars.fd"),
            ));
            ("qemu-system-aarch64", a)
        }
    };
    // UEFI: no option ROM, so the firmware's own PXE/HTTP stack boots (iPXE's EFI ROM
    // would take the NIC over). SeaBIOS: keep QEMU's default ROM (an explicit romfile=
    // skips the PCI-ID patch and SeaBIOS ignores it).
    if let Chain::HttpBoot(_) = s.chain {
        // A machine set up to boot over HTTP: the firmware's PXE entries (tried first
        // by default, and PXEv6 waits a minute for a DHCPv6 server the lab does not
        // have) are switched off through EDK2's fw_cfg knobs.
        for knob in ["IPv4PXESupport", "IPv6PXESupport"] {
            args.extend([
                "-fw_cfg".into(),
                format!("name=opt/org.tianocore/{knob},string=n"),
            ]);
        }
    }
    let rom = if s.firmware == Firmware::SeaBios {
        ""
    } else {
        ",romfile="
    };
    args.extend(
        [
            "-m",
            &vm.memory_mib.to_string(),
            "-smp",
            &vm.cpus.to_string(),
            "-nodefaults",
            "-display",
            "none",
            "-netdev",
            &format!("tap,id=n0,ifname={tap},script=no,downscript=no"),
            "-serial",
            &format!("file:{}", serial.display()),
        ]
        .map(String::from),
    );
    if !vm.reboot {
        args.push("-no-reboot".into());
    }
    match vm.disk {
        // Network first, then the disk: OVMF/AAVMF order their boot options by QEMU's
        // bootindex (the `bootorder` fw_cfg file), as a machine without a BMC is set up.
        Some(disk) => args.extend([
            "-device".into(),
            format!("virtio-net-pci,netdev=n0,mac={mac}{rom},bootindex=1"),
            "-drive".into(),
            // cache=unsafe: the guest's flushes stop at QEMU (the host file's durability
            // is not under test, and host fsyncs stall TCG on a busy machine).
            format!(
                "if=none,id=disk0,format=raw,cache=unsafe,file={}",
                disk.display()
            ),
            "-device".into(),
            "virtio-blk-pci,drive=disk0,bootindex=2".into(),
        ]),
        None => args.extend([
            "-boot".into(),
            "n".into(),
            "-device".into(),
            format!("virtio-net-pci,netdev=n0,mac={mac}{rom}"),
        ]),
    }
    let mut cmd = lab.ns.cmd(program);
    cmd.args(args).stdin(Stdio::null());
    Ok(cmd)
}

/// Printed when a stalled VM is started again.
pub const STALLED: &str = "firmware stalled before its first boot option (no '>>Start' on the \
                           console, no frame on the LAN): VM started again, once";

/// How long UEFI firmware may take from power-on to its first boot option under TCG
/// (8-11 s here, idle or loaded) before the VM counts as stalled.
const FIRMWARE_STALL: Duration = Duration::from_secs(60);

/// A UEFI VM that printed no `>>Start PXE`/`>>Start HTTP Boot` line and sent nothing the
/// servers saw in `FIRMWARE_STALL`: the firmware hung before any network step.
fn firmware_stalled(s: &Scenario, nothing_yet: bool, at: Duration, serial: &str) -> bool {
    s.firmware != Firmware::SeaBios
        && nothing_yet
        && at > FIRMWARE_STALL
        && !serial.contains(">>Start")
}

/// Watches one VM's boot for a firmware stall and allows one restart. Seen once in CI
/// (AAVMF under TCG on a loaded 2-core machine): the firmware printed its banner and
/// nothing after it for 150 s, so no frame ever reached the LAN. Nothing of ours ran
/// yet (the disk is untouched), so the VM is started again once, and says so.
#[derive(Default)]
pub struct StallWatch {
    /// The VM was started again.
    pub restarted: bool,
}

impl StallWatch {
    /// Whether the VM must be started again now: its firmware stalled (`nothing_yet`
    /// reached, `since_start` after power-on, `serial_text` from `serial`) and it was not
    /// restarted before. Prints the reason at `at` and clears `serial` for the new start;
    /// the caller kills the VM and starts it again.
    pub fn restart_now(
        &mut self,
        s: &Scenario,
        nothing_yet: bool,
        since_start: Duration,
        serial_text: &str,
        serial: &Path,
        at: Option<Duration>,
    ) -> bool {
        if self.restarted || !firmware_stalled(s, nothing_yet, since_start, serial_text) {
            return false;
        }
        self.restarted = true;
        if let Some(at) = at {
            println!("  [{:7.1} s] {STALLED}", at.as_secs_f64());
        }
        let _ = fs::remove_file(serial);
        true
    }
}

fn pflash(code: &Path, vars: &Path) -> Vec<String> {
    vec![
        "-drive".into(),
        format!(
            "if=pflash,format=raw,unit=0,readonly=on,file={}",
            code.display()
        ),
        "-drive".into(),
        format!("if=pflash,format=raw,unit=1,file={}", vars.display()),
    ]
}

/// Boots `s` once; the time to heartbeat, or everything seen when it failed.
pub fn boot(
    assets: &Assets,
    bin: &Path,
    s: &'static Scenario,
    stack: Stack,
    progress: &mut Progress,
    after: impl FnOnce(&Bridge, &str),
) -> Result<Outcome, Box<Failure>> {
    let fail = |stage: &str, why: String| Failure::early(s.name, stage, why);
    let lab = Bridge::new("e2e");
    let mac = mac_for(s, stack);
    let data = lab.dir.join("data");
    let (tftp, www) = (data.join("tftp"), data.join("www"));
    let gb10 = match stack {
        // The operator of the image lays out assets with the image's binary.
        Stack::Image(arch, build) => assets_in_image(arch, build, assets, &data),
        Stack::Gb10 | Stack::Reference => Ok(Command::new(bin)),
    };
    gb10.and_then(|gb10| populate(assets, gb10, &data, progress))
        .map_err(|e| fail("setup", format!("{e:#}")))?;
    fs::write(
        data.join("inventory.toml"),
        inventory(s, &mac, lab.server_ip),
    )
    .map_err(|e| fail("setup", e.to_string()))?;
    // The fleet view is watched where gb10-provision serves as a process.
    let fleet = s.fleet.filter(|_| stack == Stack::Gb10);
    if let Some(Fleet::Missing(path)) = fleet {
        fs::remove_file(data.join(path))
            .map_err(|e| fail("setup", format!("removing {path}: {e}")))?;
    }

    let daemon = match stack {
        Stack::Gb10 => {
            let bin = bin.to_str().unwrap_or_default();
            let args = daemon_args(s);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            Some(Server::Process(lab.start_daemon(bin, &args).map_err(
                |e| fail("setup", format!("gb10-provision: {e}")),
            )?))
        }
        Stack::Image(arch, build) => {
            let (values, set) = chart_values(s);
            Some(Server::Pod(
                crate::image::check::serve_bridge(arch, build, &lab, values, &set)
                    .map_err(|e| fail("setup", format!("gb10-provision's pod: {e:#}")))?,
            ))
        }
        Stack::Reference => None,
    };
    let access_log = lab.dir.join("nginx-access.log");
    let _nginx = match stack {
        Stack::Gb10 | Stack::Image(..) => None,
        Stack::Reference => {
            let conf = reference_files(s, &lab, &mac, &www, &tftp)
                .map_err(|e| fail("setup", format!("{e:#}")))?;
            Some(Guard(
                lab.ns
                    .cmd("nginx")
                    .arg("-c")
                    .arg(&conf)
                    .stdin(Stdio::null())
                    .spawn()
                    .map_err(|e| {
                        fail("setup", format!("nginx (apt-get install nginx-light): {e}"))
                    })?,
            ))
        }
    };
    let conf = lab.dir.join("dnsmasq.conf");
    let dnsmasq_log = lab.dir.join("dnsmasq.log");
    fs::write(&conf, dnsmasq_conf(s, &lab, &tftp, &lab.dir))
        .map_err(|e| fail("setup", e.to_string()))?;
    let _dnsmasq = (stack == Stack::Reference).then(|| {
        Guard(
            lab.ns
                .cmd("dnsmasq")
                .arg("-k")
                .arg(format!("--conf-file={}", conf.display()))
                .arg(format!("--log-facility={}", dnsmasq_log.display()))
                .arg(format!(
                    "--pid-file={}",
                    lab.dir.join("dnsmasq.pid").display()
                ))
                .stdin(Stdio::null())
                .spawn()
                .expect("spawning dnsmasq (apt-get install dnsmasq-base)"),
        )
    });

    // Proxy scenarios: the site's DHCP server is another host on the LAN.
    let site_log = lab.dir.join("site-dnsmasq.log");
    let _site = (s.dhcp == Dhcp::Proxy).then(|| {
        let (site, iface) = lab.add_site(SITE_DHCP);
        let dnsmasq = site.dnsmasq_dhcp(
            &iface,
            "198.18.0.100,198.18.0.200,255.255.255.0,1h",
            &lab.dir,
            &[
                "--log-dhcp",
                &format!("--log-facility={}", site_log.display()),
            ],
        );
        (dnsmasq, site)
    });
    // Opened before the VM starts, so the page sees every step.
    let mut watcher = match fleet {
        Some(expect) => Some(
            Watcher::start(&lab, s, &mac, expect, BOOT_TIMEOUT)
                .map_err(|e| fail("fleet view", format!("{e:#}")))?,
        ),
        None => None,
    };
    if let (Some(w), Progress::Lines) = (&watcher, &progress) {
        println!(
            "  fleet view live in headless Chromium after {:.1} s",
            w.ready.as_secs_f64()
        );
    }
    let tap = lab.add_tap();
    let serial = lab.dir.join("serial.log");
    let spawn_vm = || -> Result<Guard, Box<Failure>> {
        let mut cmd = qemu(s, &lab, &tap, &mac, &serial, &VmOptions::default())
            .map_err(|e| fail("setup", format!("{e:#}")))?;
        let qemu_log =
            fs::File::create(lab.dir.join("qemu.log")).map_err(|e| fail("setup", e.to_string()))?;
        cmd.stdout(qemu_log.try_clone().expect("fd"))
            .stderr(qemu_log);
        Ok(Guard(
            cmd.spawn()
                .map_err(|e| fail("setup", format!("qemu: {e}")))?,
        ))
    };
    let mut start = Instant::now();
    let mut vm = spawn_vm()?;
    let mut stall = StallWatch::default();

    let mut reached = Stage::Started;
    let mut stages = vec![(Stage::Started, Duration::ZERO)];
    let show = |stage: Stage, at: Duration, progress: &Progress| {
        if let Progress::Lines = progress {
            println!("  [{:6.1} s] {}", at.as_secs_f64(), stage.label());
        }
    };
    show(Stage::Started, Duration::ZERO, progress);
    let why = loop {
        std::thread::sleep(Duration::from_millis(250));
        let at = start.elapsed();
        let serial_text = fs::read_to_string(&serial).unwrap_or_default();
        let log = match &daemon {
            Some(d) => d.log(),
            None => fs::read_to_string(&dnsmasq_log).unwrap_or_default(),
        };
        // dnsmasq's log (the reference's, or the site's in proxy scenarios) acked the VM.
        let acked = |text: &str| {
            text.lines()
                .any(|l| l.contains("DHCPACK(") && l.contains(&mac))
        };
        let site_acked = fs::read_to_string(&site_log).is_ok_and(|l| acked(&l));
        let client = if daemon.is_some() {
            lab.http_admin(&format!("/clients/{mac}")).1
        } else {
            String::new()
        };
        let seen = [
            (
                Stage::Dhcp,
                client.contains("\"event\":\"leased\"") || site_acked || acked(&log),
            ),
            (
                Stage::Tftp,
                tftp_fetched(&client)
                    || log
                        .lines()
                        .any(|l| l.contains("dnsmasq-tftp") && l.contains(" sent ")),
            ),
            (
                Stage::Http,
                client.contains("\"path\":\"/ipxe/") || client.contains("\"event\":\"kernel\""),
            ),
            (Stage::Kernel, serial_text.contains("Linux version")),
            (Stage::Initramfs, serial_text.contains("e2e: initramfs up")),
            (Stage::Lease, serial_text.contains("e2e: lease")),
            (
                Stage::Heartbeat,
                client.contains("\"state\":\"onboarded\"")
                    || (daemon.is_none()
                        && fs::read_to_string(&access_log).is_ok_and(|l| {
                            l.lines().any(|l| {
                                l.contains(&format!("\"POST /heartbeat/{mac} "))
                                    && l.contains("\" 200 ")
                            })
                        })),
            ),
        ];
        for (stage, yes) in seen {
            if yes && stage > reached {
                // Stages a chain skips (no TFTP for the iPXE ROM) are not shown late.
                reached = stage;
                stages.push((stage, at));
                show(stage, at, progress);
            }
        }
        // A scenario made to stop ends when the page says why (or its watcher fails).
        let stopped =
            matches!(fleet, Some(Fleet::Missing(_))) && watcher.as_mut().is_some_and(Watcher::done);
        if reached == Stage::Heartbeat || stopped {
            let seen = match watcher.take().map(Watcher::finish) {
                Some(Ok(seen)) => Some(seen),
                Some(Err(e)) => break format!("{e:#}"),
                None => None,
            };
            if stopped && !client.contains("\"event\":\"failure\"") {
                break "the page said why it stopped, the client record has no failure".into();
            }
            if let (Some(seen), Progress::Lines) = (&seen, &progress) {
                println!("  [{:6.1} s] {}", at.as_secs_f64(), seen.summary());
            }
            after(&lab, &mac);
            return Ok(Outcome {
                heartbeat: at,
                stages,
                fleet: seen,
                restarted: stall.restarted,
            });
        }
        if let Ok(Some(status)) = vm.0.try_wait() {
            break format!("QEMU exited ({status}) before the heartbeat");
        }
        let shown = matches!(progress, Progress::Lines).then_some(at);
        if stall.restart_now(
            s,
            reached == Stage::Started,
            at,
            &serial_text,
            &serial,
            shown,
        ) {
            drop(vm);
            vm = spawn_vm()?;
            start = Instant::now();
            stages = vec![(Stage::Started, Duration::ZERO)];
            show(Stage::Started, Duration::ZERO, progress);
            continue;
        }
        if at > BOOT_TIMEOUT {
            break format!("no heartbeat within {} s", BOOT_TIMEOUT.as_secs());
        }
    };
    let after = start.elapsed();
    drop(vm);
    let mut log = match &daemon {
        Some(d) => d.log(),
        None => fs::read_to_string(&dnsmasq_log).unwrap_or_default(),
    };
    // Proxy scenarios: what the site's DHCP server said too.
    log.push_str(&fs::read_to_string(&site_log).unwrap_or_default());
    let qemu_err = fs::read_to_string(lab.dir.join("qemu.log")).unwrap_or_default();
    let mut serial_tail = tail(&qemu_err, 5);
    serial_tail.extend(tail(&fs::read_to_string(&serial).unwrap_or_default(), 30));
    Err(Box::new(Failure {
        scenario: s.name,
        stage: reached.label().into(),
        why,
        after,
        dhcp_tftp: last_lines(&log, 40, |l| {
            (l.contains(&mac)
                || l.to_ascii_lowercase().contains("tftp")
                || l.to_ascii_lowercase().contains("dhcp"))
                && !l.contains("available DHCP range")
        }),
        client: if daemon.is_some() {
            lab.http_admin(&format!("/clients/{mac}")).1
        } else {
            "(reference stack: no gb10-provision)".into()
        },
        serial_tail,
    }))
}
