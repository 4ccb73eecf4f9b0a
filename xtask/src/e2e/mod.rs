//! `cargo xtask e2e`: real firmware in QEMU network-boots through gb10-provision.
pub mod assets;
pub mod fleet;
pub mod install;
pub mod lab;
pub mod report;
pub mod scenario;

use anyhow::bail;

use self::scenario::{SCENARIOS, Scenario};

/// The scenarios `cargo xtask test` runs (CI): UEFI iPXE (with the fleet view watched
/// live in Chromium, and once with its kernel removed, where the view must say why it
/// stopped), the arm64 GB10 path over PXE and over UEFI HTTP boot, proxy DHCP, the whole
/// x86 life cycle with Secure Boot (see [`CI_REBUILDS`]; its PXE stage is the Secure Boot
/// network chain: shim, GRUB and Debian's signed kernel over TFTP), and a BIOS install of
/// the marker image to its first boot from disk (SeaBIOS's iPXE ROM to the disk's MBR,
/// about 1 min after the 40 s build of the install environment). `ovmf-shim-grub-sb`,
/// the arm64 image install and the other installs are left to --all.
pub const CI: &[&str] = &[
    "ovmf-ipxe",
    "ovmf-ipxe-missing-kernel",
    "aavmf-shim-grub",
    "aavmf-httpboot",
    "ovmf-ipxe-proxy",
    "ovmf-image-install",
    "seabios-local",
];

/// CI's scenarios that also run their rebuild round: the lab's Debian image from an empty
/// disk to `onboarded` and host ready after booting that disk through Debian's signed
/// shim, then a rebuild through the API and all of it again (about 4 min a round after
/// the 1.5 min image build). CI's other installs stop at their first boot from disk.
pub const CI_REBUILDS: &[&str] = &["ovmf-image-install"];

/// Boots scenario `name` once, served by the pod of `arch`'s `build` image (loaded by
/// the image check), and prints its stages.
pub fn boot_in_container(
    arch: assets::Arch,
    build: crate::image::Build,
    name: &str,
) -> anyhow::Result<()> {
    crate::setup::e2e()?;
    let s = scenario::find(name).ok_or_else(|| anyhow::anyhow!("no scenario `{name}`"))?;
    let assets = assets::Assets::prepare()?;
    println!(
        "e2e in the {} container: {} — {}",
        build.label(arch),
        s.name,
        s.about
    );
    // The image serves; the binary path is unused by this stack.
    let bin = std::path::PathBuf::new();
    match lab::boot(
        &assets,
        &bin,
        s,
        lab::Stack::Image(arch, build),
        &mut lab::Progress::Lines,
        |_, _| {},
    ) {
        Ok(o) => {
            println!(
                "e2e in the {} container: {} heartbeat after {:.1} s",
                build.label(arch),
                s.name,
                o.heartbeat.as_secs_f64()
            );
            Ok(())
        }
        Err(f) => {
            eprintln!("{f}");
            bail!(
                "{} failed in the {} container at {}",
                s.name,
                build.label(arch),
                f.stage
            )
        }
    }
}

/// Runs the named scenarios (all with `all`, else the CI set when none are named) and
/// prints one line per scenario; fails when any failed.
pub fn run(all: bool, compare: bool, names: &[String]) -> anyhow::Result<()> {
    crate::setup::e2e()?;
    let chosen: Vec<&Scenario> = if all {
        SCENARIOS.iter().collect()
    } else if names.is_empty() {
        CI.iter().filter_map(|n| scenario::find(n)).collect()
    } else {
        let mut v = Vec::new();
        for n in names {
            match scenario::find(n) {
                Some(s) => v.push(s),
                None => bail!(
                    "no scenario `{n}`; known: {}",
                    SCENARIOS
                        .iter()
                        .map(|s| s.name)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }
        }
        v
    };
    let assets = assets::Assets::prepare()?;
    let bin = lab::build_daemon(compare)?;
    let mut results = Vec::new();
    let mut installs = Vec::new();
    for s in &chosen {
        println!("e2e: {} — {}", s.name, s.about);
        if let Some(install) = s.install {
            // Named runs, --all and CI's full life cycle go on to the rebuild and the
            // second install; CI's other installs stop at the first boot from disk.
            let rebuild = all || !names.is_empty() || CI_REBUILDS.contains(&s.name);
            installs.push((*s, install::run(&assets, &bin, s, install, rebuild, None)));
            continue;
        }
        let ours = lab::boot(
            &assets,
            &bin,
            s,
            lab::Stack::Gb10,
            &mut lab::Progress::Lines,
            |_, _| {},
        );
        let reference = compare.then(|| {
            lab::boot(
                &assets,
                &bin,
                s,
                lab::Stack::Reference,
                &mut lab::Progress::Quiet,
                |_, _| {},
            )
        });
        results.push((s, ours, reference));
    }
    println!("\ne2e summary (time from VM start to heartbeat; TCG):");
    let mut failed = 0;
    for (s, ours, reference) in &results {
        let fmt = |r: &Result<lab::Outcome, Box<report::Failure>>| match r {
            Ok(o) => format!(
                "{:6.1} s ({})",
                o.heartbeat.as_secs_f64(),
                stage_times(o.stages.iter().map(|(st, at)| (st.short(), *at)))
            ),
            Err(f) => format!("FAILED at {}", f.stage),
        };
        let refs = reference
            .as_ref()
            .map(|r| format!("   reference (dnsmasq + nginx): {}", fmt(r)))
            .unwrap_or_default();
        println!("  {:<20} gb10-provision: {}{refs}", s.name, fmt(ours));
        match ours {
            Ok(o) => {
                if o.restarted {
                    println!(
                        "  {:<20}   the firmware stalled before its first boot option; \
                         the VM was started again once (times from the second start)",
                        ""
                    );
                }
                if let Some(seen) = &o.fleet {
                    println!("  {:<20}   {}", "", seen.summary());
                }
            }
            Err(f) => {
                failed += 1;
                eprintln!("{f}");
            }
        }
    }
    if !installs.is_empty() {
        println!("\ne2e image installs (stage times from VM start; TCG):");
    }
    for (s, r) in &installs {
        match r {
            Ok(o) => {
                println!(
                    "  {:<24} {:6.1} s: {}",
                    s.name,
                    o.total.as_secs_f64(),
                    stage_times(o.stages.iter().map(|(st, at)| (st.short(), *at)))
                );
                for n in &o.notes {
                    println!("  {:<24}   {n}", "");
                }
            }
            Err(f) => {
                failed += 1;
                println!("  {:<24} FAILED at {}", s.name, f.stage);
                eprintln!("{f}");
            }
        }
    }
    let ran: Vec<&str> = results
        .iter()
        .map(|(s, ..)| s.name)
        .chain(installs.iter().map(|(s, _)| s.name))
        .collect();
    println!("e2e: ran {} ({} failed)", ran.join(", "), failed);
    if failed > 0 {
        bail!("{failed} e2e scenarios failed");
    }
    Ok(())
}

/// "dhcp 8.7, tftp 9.0, …": each stage after the first with its time from VM start.
fn stage_times(stages: impl Iterator<Item = (&'static str, std::time::Duration)>) -> String {
    stages
        .skip(1)
        .map(|(name, at)| format!("{name} {:.1}", at.as_secs_f64()))
        .collect::<Vec<_>>()
        .join(", ")
}
