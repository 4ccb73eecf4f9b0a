//! Image install scenarios: from an empty virtual disk with the network first in the boot
//! order, the firmware network-boots the install environment, which streams the OS
//! image to disk; the VM reboots, network-boots again and is sent to its disk, boots
//! Debian through its signed shim and GRUB, and the real cloud-init reads its NoCloud
//! seed from gb10-provision and onboards. Failure cases check `failed` and a wiped disk.
//!
//! The daemon renders the install script (`/install/<mac>`, profile `seed = "image"`)
//! with the install's token; a successful install is then rebuilt through the API (no
//! BMC: the scenario power-cycles the VM) and must onboard again with a new instance id.
use std::{
    fs,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use gb10_lab::{Bridge, Guard, HTTP_PORT};
use serde_json::Value;

use super::{
    assets::{Arch, Assets},
    lab::{self, Stack},
    report::{Failure, last_lines, tail},
    scenario::{Case, Chain, Format, Install, Scenario},
};
use crate::images::{self, installer::Installer, os_image::OsImage};

/// What an install scenario passes through, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    Started,
    /// The firmware got an address and fetched the install environment's kernel.
    Pxe,
    /// The install environment's first heartbeat.
    InstallerUp,
    /// The image is on the disk and verified.
    ImageWritten,
    /// The installer reported `installed`.
    Installed,
    /// The firmware network-booted again after the reboot.
    Reboot,
    /// The installed kernel runs (from the disk).
    DiskBoot,
    /// cloud-init fetched its seed from the daemon.
    CloudInit,
    Onboarded,
    /// Failure scenarios end here.
    Failed,
}

impl Stage {
    fn label(self) -> &'static str {
        match self {
            Self::Started => "VM started (empty disk, network first)",
            Self::Pxe => "PXE: install environment kernel fetched",
            Self::InstallerUp => "installer up (heartbeat installing)",
            Self::ImageWritten => "image written and verified",
            Self::Installed => "installed reported; rebooting",
            Self::Reboot => "reboot: firmware network-boots again, sent to disk",
            Self::DiskBoot => "disk boot: the installed kernel (or the marker image's GRUB) runs",
            Self::CloudInit => "cloud-init fetched its NoCloud seed",
            Self::Onboarded => "heartbeat: client onboarded",
            Self::Failed => "installer reported failed",
        }
    }

    pub fn short(self) -> &'static str {
        match self {
            Self::Started => "start",
            Self::Pxe => "pxe",
            Self::InstallerUp => "installer",
            Self::ImageWritten => "written",
            Self::Installed => "installed",
            Self::Reboot => "reboot",
            Self::DiskBoot => "disk-boot",
            Self::CloudInit => "cloud-init",
            Self::Onboarded => "onboarded",
            Self::Failed => "failed",
        }
    }
}

pub struct Outcome {
    pub total: Duration,
    pub stages: Vec<(Stage, Duration)>,
    /// What the scenario proved beyond the stages (write rate, failure reason, disk).
    pub notes: Vec<String>,
}

/// The longest an install scenario may take under TCG (seen here on a loaded 2-core
/// machine: x86 about 20 minutes).
fn budget(s: &Scenario) -> Duration {
    match s.arch {
        Arch::Amd64 => Duration::from_secs(40 * 60),
        Arch::Arm64 => Duration::from_secs(90 * 60),
    }
}

/// Builds (or finds cached) what install scenarios need for `arch`: the install
/// environment, and the OS image for a scenario that onboards, else the marker image
/// (what boots from the disk is all that differs, see [`images::marker`]).
pub fn prepare(arch: Arch, case: Case, assets: &Assets) -> anyhow::Result<(Installer, OsImage)> {
    crate::setup::images()?;
    let source = images::Source::default();
    let installer = images::installer::build(arch, &source)?;
    let image = match case {
        Case::Onboard => images::os_image::build(arch, &source)?,
        Case::WrongChecksum | Case::Truncated | Case::LocalBoot => {
            let tree = match arch {
                Arch::Amd64 => &assets.amd64.tree,
                Arch::Arm64 => &assets.arm64.tree,
            };
            images::marker::build(arch, tree)?
        }
    };
    Ok((installer, image))
}

/// Hard-links `from` to `to` (same filesystem), else copies.
fn link(from: &Path, to: &Path) -> anyhow::Result<()> {
    if let Some(d) = to.parent() {
        fs::create_dir_all(d)?;
    }
    let _ = fs::remove_file(to);
    if fs::hard_link(from, to).is_err() {
        fs::copy(from, to)?;
    }
    Ok(())
}

fn image_file(image: &OsImage, format: Format) -> &Path {
    match format {
        Format::Gzip => &image.gzip,
        Format::Zstd => &image.zstd,
    }
}

#[cfg(test)]
/// Renders `templates/install.sh.j2` as the daemon does (minijinja, strict undefined,
/// no auto-escape) with the variables phase 2 has the daemon supply.
pub fn render_install_script(vars: &[(&str, Value)]) -> anyhow::Result<String> {
    let source = fs::read_to_string(crate::root().join("gb10-userspace/templates/install.sh.j2"))?;
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
    env.set_syntax(
        minijinja::syntax::SyntaxConfig::builder()
            .keep_trailing_newline(true)
            .build()?,
    );
    env.add_template("install.sh.j2", &source)?;
    let ctx: serde_json::Map<String, Value> = vars
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect();
    Ok(env
        .get_template("install.sh.j2")?
        .render(minijinja::Value::from(minijinja::value::Serde(ctx)))?)
}

/// A one-connection-at-a-time HTTP server that answers every GET with the full
/// Content-Length of `file` and closes the connection after half the body or 24 MiB,
/// whichever comes first: a download cut short on the wire. Runs in the lab namespace; its port.
fn cutting_server(lab: &Bridge, file: &Path) -> anyhow::Result<(Guard, u16)> {
    // Bound inside the namespace by a tiny Python server (python3 is on every Debian).
    let port = 8081;
    let script = r#"
import os, socket, sys
path, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
size = os.path.getsize(path)
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((host, port)); s.listen(4)
for _ in range(20):
    c, _ = s.accept()
    try:
        if not c.recv(65536):
            continue
        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nContent-Type: application/octet-stream\r\n\r\n" % size)
        with open(path, "rb") as f:
            left = min(size // 2, 24 << 20)
            while left > 0:
                b = f.read(min(left, 1 << 20)); c.sendall(b); left -= len(b)
    except OSError:
        pass
    finally:
        c.close()
"#;
    let child = lab
        .ns
        .cmd("python3")
        .arg("-c")
        .arg(script)
        .arg(file)
        .arg(lab.server_ip)
        .arg(port.to_string())
        .stdin(Stdio::null())
        .spawn()?;
    // Wait until it listens.
    let guard = Guard(child);
    let ok = gb10_lab::wait_until(Duration::from_secs(10), || {
        // bash's /dev/tcp connects and closes without a request.
        lab.ns
            .cmd("bash")
            .arg("-c")
            .arg(format!("exec 3<>/dev/tcp/{}/{port}", lab.server_ip))
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    if ok.is_none() {
        anyhow::bail!("the cutting server did not listen on {port}");
    }
    Ok((guard, port))
}

/// The inventory: one host whose profile is an image install (`seed = "image"`): the
/// daemon renders `/install/<mac>` from it, strictly, with the install's token.
fn inventory(s: &Scenario, mac: &str, image: &str, sha256: &str) -> String {
    let a = s.arch.debian();
    let console = match s.arch {
        Arch::Amd64 => "console=ttyS0,115200n8",
        Arch::Arm64 => "console=ttyAMA0",
    };
    format!(
        r#"# cargo xtask e2e: image install, scenario {name}
[profiles.install]
kernel = "{a}/installer/vmlinuz"
initrd = "{a}/installer/initrd.img"
cmdline = "{console} panic=10 no_timer_check gb10.mac={{{{ mac }}}} gb10.server={{{{ server }}}}"
seed = "image"
vars = {{ image = "{image}", image_sha256 = "{sha256}", progress_interval = 5, grub_fetch = "tftp", grub_timeout = 0, username = "gb10", join_user = "gb10", ssh_authorized_keys = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGb10e2eLabKeyOnlyForTheE2eScenarioXXXXXXXXXX e2e"], heartbeat_interval = 5 }}

[[hosts]]
mac = "{mac}"
hostname = "e2e-{name}"
profile = "install"
"#,
        name = s.name,
    )
}

/// A VM's QEMU command line for an install: the scenario's firmware with a disk, the
/// NIC first and the disk second in the boot order, reboots allowed. `keep_nvram`: a
/// power cycle of the same machine (its UEFI variables stay as they were).
fn qemu(
    s: &Scenario,
    lab: &Bridge,
    tap: &str,
    mac: &str,
    disk: &Path,
    serial: &Path,
    keep_nvram: bool,
) -> anyhow::Result<Command> {
    let vars = lab.dir.join("vars.fd");
    let saved = if keep_nvram {
        fs::read(&vars).ok()
    } else {
        None
    };
    let mut cmd = lab::qemu(
        s,
        lab,
        tap,
        mac,
        serial,
        &lab::VmOptions {
            memory_mib: 1024,
            // Two vCPUs (two TCG threads): the install's download | hash | decompress |
            // disk pipeline and the installed system's boot run in parallel. Both kernels
            // run with `no_timer_check`: a loaded host's TCG is slow enough for the
            // IO-APIC timer check to panic with more than one vCPU.
            cpus: 2,
            disk: Some(disk),
            reboot: true,
        },
    )?;
    if let Some(bytes) = saved {
        fs::write(&vars, bytes)?;
    }
    // A machine set up to network-boot over IPv4 only, as a provisioning LAN's are: with
    // IPv6 network boot on, each boot that is sent to the disk first spends a minute in
    // the PXEv6 and HTTPv6 entries soliciting a DHCPv6 server the lab does not have (64 s
    // for HTTPv6 in OVMF's serial log). `IPv6Support` (EDK2's fw_cfg knob, honoured by
    // Debian 12's OVMF) drops both entries.
    cmd.args(["-fw_cfg", "name=opt/org.tianocore/IPv6Support,string=n"]);
    cmd.stdin(Stdio::null());
    Ok(cmd)
}

/// A progress beat's bar, `[#####...............]  25% `, or nothing when it carries
/// no total: bytes written of the image's size.
fn bar(progress: Option<&Value>) -> String {
    let p = progress.and_then(|p| p.get("progress"));
    let num = |k: &str| p.and_then(|p| p.get(k)).and_then(Value::as_u64);
    match (num("written"), num("total")) {
        (Some(w), Some(t)) if t > 0 => {
            let share = (w.min(t) * 100 / t) as usize;
            let filled = share / 5;
            format!(
                "[{}{}] {share:>3}% ",
                "#".repeat(filled),
                ".".repeat(20 - filled)
            )
        }
        _ => String::new(),
    }
}

/// The client record's timeline entries as JSON values.
fn timeline(client: &str) -> Vec<Value> {
    serde_json::from_str::<Value>(client)
        .ok()
        .and_then(|v| v.get("timeline").and_then(Value::as_array).cloned())
        .unwrap_or_default()
}

/// Whether a timeline event is a fetch of the install environment (its kernel or
/// initrd, over TFTP as a boot file or over HTTP).
fn fetched_installer(e: &Value) -> bool {
    matches!(field(e, "event"), "kernel" | "boot_file") && field(e, "path").contains("installer/")
}

fn field<'a>(e: &'a Value, k: &str) -> &'a str {
    e.get(k).and_then(Value::as_str).unwrap_or("")
}

fn at_ms(e: &Value) -> u64 {
    e.get("at_ms").and_then(Value::as_u64).unwrap_or(0)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// One scenario's lab: the daemon, the VM's disk and NIC, what a failure report needs.
struct Rig<'a> {
    s: &'static Scenario,
    lab: &'a Bridge,
    mac: String,
    tap: String,
    disk: std::path::PathBuf,
    daemon: &'a gb10_lab::Daemon,
}

/// What one boot-to-goal round saw.
struct Round {
    stages: Vec<(Stage, Duration)>,
    notes: Vec<String>,
    vm: Guard,
    serial: std::path::PathBuf,
}

impl Rig<'_> {
    fn failure(&self, reached: Stage, why: String, after: Duration, serial: &Path) -> Box<Failure> {
        let log = self.daemon.log();
        let qemu_err = fs::read_to_string(self.lab.dir.join("qemu.log")).unwrap_or_default();
        let mut serial_tail = tail(&qemu_err, 5);
        serial_tail.extend(tail(&fs::read_to_string(serial).unwrap_or_default(), 40));
        let mac = &self.mac;
        Box::new(Failure {
            scenario: self.s.name,
            stage: reached.label().into(),
            why,
            after,
            dhcp_tftp: last_lines(&log, 40, |l| {
                l.contains(mac.as_str()) || l.contains("WARN") || l.contains("ERROR")
            }),
            client: self.lab.http_admin(&format!("/clients/{mac}")).1,
            serial_tail,
        })
    }

    /// The host record from the admin API (on the LAN listener: no admin address).
    fn host(&self) -> Value {
        serde_json::from_str(
            &self
                .lab
                .http_admin(&format!("/admin/api/hosts/{}", self.mac))
                .1,
        )
        .unwrap_or(Value::Null)
    }

    /// Starts the VM (`round` 1: a new machine; later: a power cycle of the same one)
    /// and follows the client's timeline from `since_ms` until `goal`, printing stages.
    fn round(
        &self,
        round: u32,
        install: Install,
        since_ms: u64,
        start: Instant,
    ) -> Result<Round, Box<Failure>> {
        let s = self.s;
        let serial = self.lab.dir.join(format!("serial{round}.log"));
        let fail = |stage: &str, why: String| Failure::early(s.name, stage, why);
        let spawn_vm = || -> Result<Guard, Box<Failure>> {
            let mut cmd = qemu(
                s,
                self.lab,
                &self.tap,
                &self.mac,
                &self.disk,
                &serial,
                round > 1,
            )
            .map_err(|e| fail("setup", format!("{e:#}")))?;
            let qemu_log = fs::File::create(self.lab.dir.join("qemu.log"))
                .map_err(|e| fail("setup", format!("{e}")))?;
            cmd.stdout(qemu_log.try_clone().expect("fd"))
                .stderr(qemu_log);
            Ok(Guard(
                cmd.spawn()
                    .map_err(|e| fail("setup", format!("qemu: {e}")))?,
            ))
        };
        let mut vm = Some(spawn_vm()?);
        let mut stall = lab::StallWatch::default();
        let mut round_start = start.elapsed();
        let mut reached = Stage::Started;
        let mut stages = vec![(Stage::Started, round_start)];
        let mut notes = Vec::new();
        println!(
            "  [{:7.1} s] {}{}",
            round_start.as_secs_f64(),
            Stage::Started.label(),
            if round > 1 {
                " — rebuild, power cycle"
            } else {
                ""
            }
        );
        let mut last_progress = String::new();
        let (success, goal) = match install.case {
            Case::Onboard => (true, Stage::Onboarded),
            Case::LocalBoot => (true, Stage::DiskBoot),
            Case::WrongChecksum | Case::Truncated => (false, Stage::Failed),
        };
        let mac = &self.mac;
        let why = loop {
            std::thread::sleep(Duration::from_millis(500));
            let at = start.elapsed();
            let client = self.lab.http_admin(&format!("/clients/{mac}")).1;
            let events: Vec<Value> = timeline(&client)
                .into_iter()
                .filter(|e| at_ms(e) >= since_ms)
                .collect();
            let serial_text = fs::read_to_string(&serial).unwrap_or_default();
            let beats: Vec<&Value> = events
                .iter()
                .filter(|e| field(e, "event") == "heartbeat" && field(e, "proof") != "refused")
                .collect();
            let installed_at = beats
                .iter()
                .find(|e| field(e, "phase") == "installed")
                .map(|e| at_ms(e));
            let after_installed = |pred: &dyn Fn(&Value) -> bool| {
                installed_at.is_some_and(|t| events.iter().any(|e| at_ms(e) > t && pred(e)))
            };
            let state = serde_json::from_str::<Value>(&client)
                .ok()
                .and_then(|v| v.get("state").and_then(Value::as_str).map(str::to_owned))
                .unwrap_or_default();
            // Progress: the client record keeps the latest progress beat.
            let progress = serde_json::from_str::<Value>(&client)
                .ok()
                .and_then(|v| v.get("progress").cloned())
                .filter(|p| at_ms(p) >= since_ms);
            if let Some(m) = progress
                .as_ref()
                .and_then(|p| p.get("message").and_then(Value::as_str))
                .map(str::to_owned)
                .or_else(|| {
                    beats
                        .iter()
                        .rev()
                        .find(|e| field(e, "phase") == "installing")
                        .map(|e| field(e, "message").to_owned())
                })
                && m != last_progress
            {
                println!(
                    "  [{:7.1} s]   installer: {}{m}",
                    at.as_secs_f64(),
                    bar(progress
                        .as_ref()
                        .filter(|_| !m.starts_with("image written")))
                );
                last_progress = m;
            }
            let state_now = installed_at.is_some() && state == "onboarded";
            let seen = [
                (Stage::Pxe, events.iter().any(fetched_installer)),
                (
                    Stage::InstallerUp,
                    beats.iter().any(|e| field(e, "phase") == "installing"),
                ),
                (
                    Stage::ImageWritten,
                    last_progress.starts_with("image written and verified")
                        || beats
                            .iter()
                            .any(|e| field(e, "message").starts_with("image written and verified")),
                ),
                (Stage::Installed, installed_at.is_some()),
                (
                    Stage::Reboot,
                    after_installed(&|e| {
                        matches!(field(e, "event"), "discover" | "leased" | "local_boot")
                    }),
                ),
                (
                    Stage::DiskBoot,
                    installed_at.is_some()
                        && serial_text.lines().any(|l| {
                            (l.contains("Linux version") && l.contains("cloud-"))
                                // Its last line: the config it prints is complete
                                // (a BIOS GRUB's serial output can trail the first).
                                || l.contains(images::marker::END)
                        }),
                ),
                (
                    Stage::CloudInit,
                    after_installed(&|e| {
                        field(e, "event") == "seed" && field(e, "path").contains("/cloud-init/")
                    }),
                ),
                (Stage::Onboarded, success && state_now),
                (Stage::Failed, !success && state == "failed"),
            ];
            for (stage, yes) in seen {
                if yes && stage > reached {
                    reached = stage;
                    stages.push((stage, at));
                    println!("  [{:7.1} s] {}", at.as_secs_f64(), stage.label());
                }
            }
            // Never a second install: no install-environment kernel after `installed`.
            if after_installed(&fetched_installer) {
                break "the installed host network-booted the installer again (boot loop)".into();
            }
            if !success && installed_at.is_some() {
                break "the installer reported installed for an image that must fail".into();
            }
            if reached == goal {
                if let Some(m) = [last_progress.as_str()]
                    .into_iter()
                    .chain(beats.iter().map(|e| field(e, "message")))
                    .find(|m| m.starts_with("image written and verified"))
                {
                    notes.push(m.to_owned());
                }
                if !success {
                    let reason = beats
                        .iter()
                        .rev()
                        .find(|e| field(e, "phase") == "failed")
                        .map(|e| field(e, "message").to_owned())
                        .unwrap_or_default();
                    notes.push(format!("failed: {reason}"));
                    let expect = match install.case {
                        Case::WrongChecksum => "sha256 mismatch",
                        Case::Truncated => "download truncated",
                        Case::Onboard | Case::LocalBoot => "",
                    };
                    if !reason.contains(expect) {
                        break format!("failed for another reason than `{expect}`: {reason}");
                    }
                    // The installer reports after wiping; stop the VM and read the disk.
                    drop(vm.take());
                    match disk_is_blank(&self.disk) {
                        Ok(note) => notes.push(note),
                        Err(e) => break format!("{e:#}"),
                    }
                } else {
                    let mut local = events
                        .iter()
                        .filter(|e| field(e, "event") == "local_boot")
                        .map(|e| field(e, "path").to_owned())
                        .collect::<Vec<_>>();
                    // Firmware retries its DHCP: one `local_boot` per DISCOVER.
                    local.dedup();
                    if local.is_empty() {
                        break "booted from disk without a recorded local_boot".into();
                    }
                    if install.case == Case::LocalBoot {
                        // The marker disk's GRUB prints the config the installer left
                        // for cloud-init: the write reached the disk that booted.
                        let Some(seed) = serial_text
                            .lines()
                            .find(|l| l.contains("seedfrom:"))
                            .map(str::trim)
                        else {
                            break "the disk booted without the installer's cloud-init config"
                                .into();
                        };
                        notes.push(format!(
                            "the disk's GRUB printed the installer's cloud-init config: {seed}"
                        ));
                    }
                    notes.push(format!(
                        "no second install: after `installed` the firmware network-booted and was sent to its disk (local_boot: {})",
                        local.join(", ")
                    ));
                }
                return Ok(Round {
                    stages,
                    notes,
                    vm: vm
                        .take()
                        .unwrap_or_else(|| Guard(Command::new("true").spawn().expect("true"))),
                    serial,
                });
            }
            if success && state == "failed" {
                break "the installer reported failed".into();
            }
            if stall.restart_now(
                s,
                reached == Stage::Started,
                at.saturating_sub(round_start),
                &serial_text,
                &serial,
                Some(at),
            ) {
                drop(vm.take());
                vm = Some(spawn_vm()?);
                round_start = start.elapsed();
                notes.push(format!("round {round}: {}", lab::STALLED));
                continue;
            }
            if let Some(v) = vm.as_mut()
                && let Ok(Some(status)) = v.0.try_wait()
            {
                break format!("QEMU exited ({status})");
            }
            if at > budget(s) {
                break format!("not done within {} s", budget(s).as_secs());
            }
        };
        let after = start.elapsed();
        drop(vm);
        Err(self.failure(reached, why, after, &serial))
    }

    /// Waits (bounded) for the host life cycle to reach `want` after onboarding: the
    /// join step ran over SSH into the installed VM with the install's pinned host key.
    fn wait_host(&self, want: &str, within: Duration) -> Result<Value, String> {
        let mut last = Value::Null;
        let ok = gb10_lab::wait_until(within, || {
            last = self.host();
            last.get("state").and_then(Value::as_str) == Some(want)
        });
        match ok {
            Some(_) => Ok(last),
            None => Err(format!("host never reached `{want}`: {last}")),
        }
    }
}

/// What [`run`] calls with the lab and the VM's MAC once the install reached its goal.
pub type Hold<'a> = dyn FnMut(&Bridge, &str) + 'a;

/// Runs install scenario `s` once: install to `onboarded` (and the host `ready`, joined
/// over SSH), or the marker's disk boot; `hold`, when given, is then called with the
/// lab and the VM's MAC while the VM and the daemon still run (`cargo xtask lab` waits
/// there for Ctrl-C); for a successful install, with `rebuild`, then a rebuild without a
/// BMC (the API, a power cycle by hand) to the same goal again with a new instance id,
/// on the same VM and disk.
pub fn run(
    assets: &Assets,
    bin: &Path,
    s: &'static Scenario,
    install: Install,
    rebuild: bool,
    hold: Option<&mut Hold<'_>>,
) -> Result<Outcome, Box<Failure>> {
    let fail = |stage: &str, why: String| Failure::early(s.name, stage, why);
    let setup = |e: anyhow::Error| fail("setup", format!("{e:#}"));
    let (installer, image) = prepare(s.arch, install.case, assets).map_err(setup)?;
    let lab = Bridge::new("e2e");
    let mac = lab::mac_for(s, Stack::Gb10);
    let data = lab.dir.join("data");
    let (tftp, www) = (data.join("tftp"), data.join("www"));
    lab::populate(assets, Command::new(bin), &data, &lab::Progress::Quiet).map_err(setup)?;
    let a = s.arch.debian();
    for root in [&tftp, &www] {
        link(&installer.kernel, &root.join(a).join("installer/vmlinuz")).map_err(setup)?;
        link(
            &installer.initrd,
            &root.join(a).join("installer/initrd.img"),
        )
        .map_err(setup)?;
    }
    let file = image_file(&image, install.format);
    let file_name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    link(file, &www.join("images").join(&file_name)).map_err(setup)?;
    let real_sha = image.sha256(file).map_err(setup)?;
    // The truncated case serves the image from a server that cuts the body halfway.
    let cutter = match install.case {
        Case::Truncated => Some(cutting_server(&lab, file).map_err(setup)?),
        _ => None,
    };
    let image_ref = match &cutter {
        Some((_, port)) => format!("http://{}:{port}/images/{file_name}", lab.server_ip),
        None => format!("images/{file_name}"),
    };
    let sha = match install.case {
        // The sha256 of something else: the image streams to disk in full, then fails.
        Case::WrongChecksum => {
            let mut wrong = real_sha.clone().into_bytes();
            wrong[0] = if wrong[0] == b'0' { b'1' } else { b'0' };
            String::from_utf8(wrong).unwrap_or_default()
        }
        _ => real_sha.clone(),
    };
    fs::write(
        data.join("inventory.toml"),
        inventory(s, &mac, &image_ref, &sha),
    )
    .map_err(|e| setup(e.into()))?;

    // The daemon as users run it: XDP attached, guard enforcing, and its own admin token
    // (generated in its state dir): a rebuild is a state-changing call, refused without it.
    let mut args = vec!["--dhcp-range", "198.18.0.100-198.18.0.200"];
    if let Some(setting) = install.to_disk {
        args.extend(["--boot-installed", setting]);
    }
    if s.arch == Arch::Amd64 {
        let efi = match s.chain {
            Chain::Ipxe(file) => file,
            _ => "shimx64.efi",
        };
        args.extend(["--boot-uefi-x86", efi]);
    }
    let daemon = lab
        .start_daemon(bin.to_str().unwrap_or_default(), &args)
        .map_err(|e| fail("setup", format!("gb10-provision: {e}")))?;

    // An empty disk (sparse): the installer must find nothing on it.
    let disk = lab.dir.join("disk.img");
    let disk_size = (image.raw.metadata().map(|m| m.len()).unwrap_or(0) / (1 << 20) + 1024) << 20;
    fs::File::create(&disk)
        .and_then(|f| f.set_len(disk_size))
        .map_err(|e| setup(e.into()))?;
    let rig = Rig {
        s,
        tap: lab.add_tap(),
        lab: &lab,
        mac: mac.clone(),
        disk,
        daemon: &daemon,
    };
    let start = Instant::now();
    let first = rig.round(1, install, 0, start)?;
    let stages = first.stages;
    let mut notes = first.notes;
    drop(cutter);
    let host_fail =
        |why: String| rig.failure(Stage::Onboarded, why, start.elapsed(), &first.serial);
    let host = if install.case == Case::Onboard {
        let host = rig
            .wait_host("ready", Duration::from_secs(180))
            .map_err(host_fail)?;
        let note = format!(
            "host ready: the join step logged in over SSH to the installed VM, pinned to the install's host key (instance {})",
            host["install"]["instance_id"].as_str().unwrap_or_default()
        );
        println!("  [{:7.1} s] {note}", start.elapsed().as_secs_f64());
        notes.push(note);
        host
    } else {
        // The marker image runs no cloud-init: no onboarding, no join.
        rig.host()
    };
    if let Some(hold) = hold {
        hold(&lab, &mac);
    }
    if rebuild && matches!(install.case, Case::Onboard | Case::LocalBoot) {
        let id1 = host["install"]["instance_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        // Rebuild without a BMC: the API marks it, an operator power-cycles the machine.
        let since = now_ms();
        let (code, body) = curl_post(
            &lab,
            &format!("/admin/api/hosts/{mac}/rebuild"),
            &gb10_lab::admin_token(&lab.dir),
        );
        if code != 200 {
            return Err(host_fail(format!("rebuild: HTTP {code}: {body}")));
        }
        drop(first.vm);
        let rebuilt_at = start.elapsed();
        let second = rig.round(2, install, since, start)?;
        drop(second.vm);
        let host = rig.host();
        let id2 = host["install"]["instance_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if id2.is_empty() || id2 == id1 {
            return Err(rig.failure(
                Stage::Onboarded,
                format!("the rebuild did not start a new install: instance {id1} then {id2:?}"),
                start.elapsed(),
                &second.serial,
            ));
        }
        notes.extend(second.notes.into_iter().map(|n| format!("rebuild: {n}")));
        notes.push(format!(
            "rebuild at {:.1} s: {}; instance id {id1} → {id2}",
            rebuilt_at.as_secs_f64(),
            second
                .stages
                .iter()
                .skip(1)
                .map(|(st, at)| format!("{} {:.1}", st.short(), (*at - rebuilt_at).as_secs_f64()))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    // The daemon ran with XDP attached: the VM's per-client counters.
    let metrics = lab.http_admin("/metrics").1;
    notes.extend(
        metrics
            .lines()
            .filter(|l| l.starts_with("gb10_client_") && l.contains(&mac))
            .map(|l| format!("metrics: {l}")),
    );
    Ok(Outcome {
        total: start.elapsed(),
        stages,
        notes,
    })
}

/// POSTs to the daemon's admin API with its token from the lab namespace: (status, body).
fn curl_post(lab: &Bridge, path: &str, token: &str) -> (u16, String) {
    let out = lab
        .ns
        .cmd("curl")
        .args([
            "-sS",
            "-m",
            "60",
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
            "-X",
            "POST",
        ])
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .arg(format!("http://{}:{HTTP_PORT}{path}", lab.server_ip))
        .output();
    let Ok(out) = out else {
        return (0, String::new());
    };
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

/// After a failed install: no partition table or filesystem signature anywhere the
/// firmware looks (`blkid -p` finds nothing, `sgdisk` finds no GPT) and the first 8 MiB
/// are zeros.
fn disk_is_blank(disk: &Path) -> anyhow::Result<String> {
    let blkid = Command::new("blkid").arg("-p").arg(disk).output()?;
    if blkid.status.code() != Some(2) {
        anyhow::bail!(
            "the disk still holds a signature after the failure: {}",
            String::from_utf8_lossy(&blkid.stdout).trim()
        );
    }
    let mut head = vec![0u8; 8 << 20];
    let mut f = fs::File::open(disk)?;
    std::io::Read::read_exact(&mut f, &mut head)?;
    if head.iter().any(|b| *b != 0) {
        anyhow::bail!("the first 8 MiB of the disk are not zero after the failure");
    }
    let sgdisk = Command::new("sgdisk").arg("-p").arg(disk).output()?;
    let text = String::from_utf8_lossy(&sgdisk.stdout);
    if text.contains("Number  Start") && text.lines().any(|l| l.trim_start().starts_with('1')) {
        anyhow::bail!("sgdisk still finds partitions after the failure:\n{text}");
    }
    Ok("disk after the failure: blkid -p finds no signature, sgdisk no partition, the first 8 MiB are zero".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> Vec<(&'static str, Value)> {
        vec![
            ("server", "198.18.0.1:8080".into()),
            ("mac", "52:54:00:e2:00:01".into()),
            ("hostname", "h1".into()),
            (
                "image_url",
                "http://198.18.0.1:8080/images/it's.raw.zst".into(),
            ),
            ("image_sha256", "ab".repeat(32).into()),
            ("image_format", "zstd".into()),
            (
                "seed_url",
                "http://198.18.0.1:8080/cloud-init/52:54:00:e2:00:01/".into(),
            ),
            ("install_token", "t0k3n".into()),
        ]
    }

    #[test]
    fn install_script_renders_quoted_and_parses() {
        let text = render_install_script(&vars()).unwrap();
        // A quote in a value cannot end the shell string.
        assert!(text.contains(r"IMAGE_URL='http://198.18.0.1:8080/images/it'\''s.raw.zst'"));
        assert!(text.contains("OVERWRITE='false'"), "{text}");
        assert!(text.contains("TARGET_DISK=''"));
        let path = std::env::temp_dir().join(format!("install-{}.sh", std::process::id()));
        fs::write(&path, &text).unwrap();
        let check = Command::new("sh").arg("-n").arg(&path).output().unwrap();
        let _ = fs::remove_file(&path);
        assert!(
            check.status.success(),
            "{}",
            String::from_utf8_lossy(&check.stderr)
        );
    }

    #[test]
    fn install_script_needs_the_checksum() {
        let v: Vec<_> = vars()
            .into_iter()
            .filter(|(k, _)| *k != "image_sha256")
            .collect();
        let err = render_install_script(&v).unwrap_err();
        assert!(format!("{err:#}").contains("undefined"), "{err:#}");
    }
}
