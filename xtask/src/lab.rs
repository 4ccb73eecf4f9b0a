//! `cargo xtask lab`: gb10-provision on a virtual LAN (a bridge in a network namespace),
//! one real firmware VM through the whole life cycle with its progress shown live
//! (network boot, the install environment writing the lab's Debian image to an empty
//! disk, reboot, boot from that disk, Debian's cloud-init, onboarded, joined over SSH),
//! the daemon and the VM left up for poking until Ctrl-C, then torn down. `--once`, CI's
//! smoke run: a network boot to the initramfs's heartbeat, then torn down.
use std::path::Path;

use anyhow::bail;
use gb10_lab::{Bridge, HTTP_PORT};

use crate::e2e::{
    self,
    lab::{Progress, Stack},
};

/// The scenario `--once` boots: x86 UEFI PXE → shim → signed GRUB → kernel, the
/// quickest chain here (~18 s under TCG).
const LAB_SCENARIO: &str = "ovmf-shim-grub";

/// The life cycle the lab runs: Secure Boot, empty disk, network first, the lab's
/// Debian image installed and onboarded.
const LIFE_CYCLE: &str = "ovmf-image-install";

pub fn run(once: bool) -> anyhow::Result<()> {
    if !gb10_lab::require_root("cargo xtask lab") {
        bail!("the lab builds network namespaces, taps and VMs: run it as root");
    }
    crate::setup::e2e()?;
    let assets = e2e::assets::Assets::prepare()?;
    let bin = e2e::lab::build_daemon(false)?;
    let scenario = e2e::scenario::find(LAB_SCENARIO).expect("lab scenario in the table");

    // Block the stop signals before any thread starts, so sigwait below receives them
    // and Drop tears the lab down instead of the process dying mid-way.
    let signals = block_stop_signals();

    if !once {
        let s = e2e::scenario::find(LIFE_CYCLE).expect("life cycle scenario in the table");
        let install = s.install.expect("an install scenario");
        println!(
            "lab: one VM through the whole life cycle (builds the lab's Debian image and the \
             install environment from Debian packages when not cached; about 5 min under \
             TCG): {}",
            s.about
        );
        let mut hold = |lab: &Bridge, mac: &str| {
            show(lab, mac, &bin);
            println!("lab: running (the installed VM too); Ctrl-C tears it down");
            wait_for(&signals);
            println!("lab: tearing down");
        };
        return match e2e::install::run(&assets, &bin, s, install, false, Some(&mut hold)) {
            Ok(o) => {
                // `total` runs until the teardown, the time held included.
                match o
                    .stages
                    .iter()
                    .find(|(st, _)| *st == e2e::install::Stage::Onboarded)
                {
                    Some((_, at)) => {
                        println!("lab: VM start to onboarded {:.1} s", at.as_secs_f64());
                    }
                    None => println!("lab: torn down after {:.1} s", o.total.as_secs_f64()),
                }
                Ok(())
            }
            Err(failure) => {
                eprintln!("{failure}");
                bail!("the lab VM did not go through its life cycle")
            }
        };
    }

    println!("lab: booting one VM: {}", scenario.about);
    let outcome = e2e::lab::boot(
        &assets,
        &bin,
        scenario,
        Stack::Gb10,
        &mut Progress::Lines,
        |lab, mac| {
            show(lab, mac, &bin);
            println!("lab: tearing down");
        },
    );
    match outcome {
        Ok(o) => {
            println!(
                "lab: VM start to heartbeat {:.1} s",
                o.heartbeat.as_secs_f64()
            );
            Ok(())
        }
        Err(failure) => {
            eprintln!("{failure}");
            bail!("the lab VM did not onboard")
        }
    }
}

/// The client's record, the client count metrics and how to poke the running lab.
fn show(lab: &Bridge, mac: &str, bin: &Path) {
    let url = format!("http://{}:{HTTP_PORT}", lab.server_ip);
    println!(
        "lab: gb10-provision serves {} ({}/24) in namespace {}",
        lab.iface, lab.server_ip, lab.ns.name
    );
    let admin = format!("{url}/admin");
    let bin_text = bin.display().to_string();
    // The daemon made its admin token at start, in its data directory.
    let token_file = lab.dir.join("data/state/admin-token");
    let show = lab
        .ns
        .cmd(&bin_text)
        .args(["clients", "show", mac, "--server", &admin])
        .arg("--token-file")
        .arg(&token_file)
        .output();
    match show {
        Ok(o) if o.status.success() => {
            println!("lab: gb10-provision clients show {mac}:");
            for line in String::from_utf8_lossy(&o.stdout).lines() {
                println!("       {line}");
            }
        }
        _ => println!(
            "lab: /clients/{mac}: {}",
            lab.http_admin(&format!("/clients/{mac}")).1
        ),
    }
    let metrics = lab.http_admin("/metrics").1;
    for line in metrics.lines().filter(|l| {
        l.starts_with("gb10_clients{") || (l.starts_with("gb10_client_") && l.contains(mac))
    }) {
        println!("lab: metrics  {line}");
    }
    println!("lab: poke it (the admin API is under /admin on the LAN listener):");
    let ns = &lab.ns.name;
    for args in [
        "clients".to_owned(),
        format!("clients watch {mac}"),
        "hosts".into(),
    ] {
        println!(
            "       ip netns exec {ns} {bin_text} {args} --server {admin} --token-file {}",
            token_file.display()
        );
    }
    println!("       ip netns exec {ns} curl -s {url}/healthz");
    println!(
        "       ip netns exec {ns} curl -s -H \"Authorization: Bearer $(cat {})\" {url}/metrics",
        token_file.display()
    );
}

fn block_stop_signals() -> libc::sigset_t {
    // SAFETY: sigset operations on a set we own; pthread_sigmask on this thread.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

fn wait_for(set: &libc::sigset_t) {
    let mut sig = 0;
    // SAFETY: sigwait on a set whose signals this thread blocks.
    unsafe { libc::sigwait(set, &mut sig) };
}
