//! `cargo xtask bench`: measurements reported side by side, never asserted.
use std::time::Duration;

use anyhow::{Context as _, bail};
use gb10_lab::{Lab, flood, format_mac};

use crate::{cargo, exec, root};

/// The flood benchmark: the same bounded random-MAC DISCOVER flood with the guard in
/// enforce mode and off, one run, a release build; what the generator reached, whether
/// the known client got its lease, and the daemon's CPU.
pub fn flood() -> anyhow::Result<()> {
    if !gb10_lab::require_root("cargo xtask bench flood") {
        bail!("the benchmark builds network namespaces and attaches XDP: run it as root");
    }
    exec(cargo().args([
        "build",
        "--release",
        "--quiet",
        "-p",
        "gb10-userspace",
        "--bin",
        "gb10-provision",
    ]))?;
    let bin = root()
        .join("target/release/gb10-provision")
        .canonicalize()?;
    let bin = bin.to_str().context("non-UTF-8 path")?;
    let budget = flood::Budget {
        frames: 5_000_000,
        time: Duration::from_secs(10),
    };
    println!(
        "flood: random-MAC DISCOVERs, at most {} frames or {:?} per run",
        budget.frames, budget.time
    );
    println!(
        "{:<8} {:>12} {:>10} {:>14} {:>12} {:>10} {:>16}",
        "guard", "sent", "rate/s", "limited", "to daemon", "CPU %", "known client"
    );
    let mut rows = Vec::new();
    for mode in ["enforce", "off"] {
        let lab = Lab::bare("bflood");
        gb10_lab::write_file(
            &lab.dir.join("data/inventory.toml"),
            &format!(
                "[[hosts]]\nmac = \"{}\"\nip = \"198.18.0.50\"\n",
                format_mac(&lab.client_mac())
            ),
        );
        let daemon = lab.start_daemon(bin, &["--xdp", "required", "--guard", mode]);
        std::thread::sleep(Duration::from_millis(600));
        let r = flood::run(&lab, &daemon, budget);
        println!(
            "{mode:<8} {:>12} {:>10.0} {:>14} {:>12} {:>10.1} {:>16}",
            r.sent,
            r.rate(),
            r.limited,
            r.daemon_messages,
            r.daemon_cpu * 100.0,
            r.leased.as_deref().unwrap_or("none")
        );
        rows.push(r);
    }
    if let [on, off] = &rows[..] {
        println!(
            "guard enforce vs off: daemon CPU {:.1} % vs {:.1} %, messages reaching the daemon {:.0} vs {:.0}",
            on.daemon_cpu * 100.0,
            off.daemon_cpu * 100.0,
            on.daemon_messages,
            off.daemon_messages
        );
    }
    Ok(())
}
