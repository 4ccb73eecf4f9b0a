//! `cargo xtask lab`: gb10-provision on a virtual LAN of network namespaces, a client
//! served through it, the daemon left up for poking until Ctrl-C, then torn down.
use anyhow::{Context as _, bail};
use gb10_lab::{HTTP_PORT, Lab, format_mac};

use crate::{cargo, exec, root};

pub fn run(once: bool) -> anyhow::Result<()> {
    if !gb10_lab::require_root("cargo xtask lab") {
        bail!("the lab builds network namespaces and attaches XDP: run it as root");
    }
    run_build()?;
    let bin = root().join("target/debug/gb10-provision").canonicalize()?;
    let bin = bin.to_str().context("non-UTF-8 path")?;

    // Block the stop signals before any thread starts, so sigwait below receives them
    // and Drop tears the lab down instead of the process dying mid-way.
    let signals = block_stop_signals();

    let lab = Lab::bare("lab");
    println!(
        "lab: namespaces {} (server) and {} (client), LAN {}/24 on {}",
        lab.server.name, lab.client.name, lab.server_ip, lab.server_if
    );
    let daemon = lab.start_daemon(bin, &[]);
    println!(
        "lab: gb10-provision up (pid {}), log {}",
        daemon.pid(),
        daemon.log_path.display()
    );

    let mac = format_mac(&lab.client_mac());
    println!("lab: client {mac} asks for an address (udhcpc)…");
    let dhcp = lab
        .client
        .cmd("udhcpc")
        .args([
            "-i",
            &lab.client_if,
            "-n",
            "-q",
            "-f",
            "-t",
            "3",
            "-T",
            "1",
            "-s",
            "/bin/true",
        ])
        .output()
        .context("running udhcpc (apt-get install udhcpc)")?;
    let text =
        String::from_utf8_lossy(&dhcp.stderr).into_owned() + &String::from_utf8_lossy(&dhcp.stdout);
    match text.lines().find(|l| l.contains("lease of")) {
        Some(line) => println!("lab: DHCP   {}", line.trim()),
        None => println!("lab: DHCP   no lease (the DHCP responder did not answer)"),
    }
    let metrics = lab.metrics();
    let seen = |kind: &str| {
        metrics.value(
            "gb10_client_packets_total",
            &[("mac", &mac), ("kind", kind)],
        )
    };
    println!(
        "lab: XDP    attached={} frames from {mac}: dhcp={} tftp={} other={}",
        metrics.value("gb10_xdp_attached", &[]),
        seen("dhcp"),
        seen("tftp"),
        seen("other")
    );
    let url = format!("http://{}:{HTTP_PORT}", lab.server_ip);
    println!("lab: poke it from the client namespace:");
    for path in ["/metrics", "/healthz"] {
        println!(
            "       ip netns exec {} curl -s {url}{path}",
            lab.client.name
        );
    }
    if once {
        return Ok(());
    }
    println!("lab: running; Ctrl-C tears it down");
    wait_for(&signals);
    println!("lab: tearing down");
    Ok(())
}

fn run_build() -> anyhow::Result<()> {
    exec(cargo().args([
        "build",
        "--quiet",
        "-p",
        "gb10-userspace",
        "--bin",
        "gb10-provision",
    ]))
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
