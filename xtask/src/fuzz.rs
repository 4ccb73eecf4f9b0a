//! `cargo xtask fuzz`: the libFuzzer targets in `fuzz/`, each for a bounded time, built
//! with a nightly toolchain (coverage instrumentation needs `-Z` flags) the way
//! cargo-fuzz builds them, without needing cargo-fuzz. Where there is no nightly it says
//! so and stops: `cargo test` replays every corpus entry on stable either way.
use std::{process::Command, time::Instant};

use anyhow::{Context as _, bail};

use crate::root;

/// Every target in `fuzz/Cargo.toml`, as `gb10_provision::fuzz::TARGETS` lists them.
pub const TARGETS: &[&str] = &[
    "dhcp_message",
    "tftp_request",
    "http_request",
    "config",
    "inventory",
    "lease_record",
    "client_record",
];

/// The toolchain the targets build with.
const NIGHTLY: &str = "nightly";

/// What cargo-fuzz passes for libFuzzer's coverage feedback (no sanitizer: the code
/// under test has no `unsafe`, so a panic is what there is to find).
const COVERAGE_FLAGS: &str = "-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
    -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
    -Cllvm-args=-sanitizer-coverage-pc-table -Cllvm-args=-sanitizer-coverage-trace-compares \
    --cfg fuzzing -Cdebug-assertions -Coverflow-checks";

/// Whether a nightly toolchain that can build for this machine is installed.
fn nightly() -> Option<String> {
    let out = Command::new("rustup")
        .args(["run", NIGHTLY, "rustc", "-vV"])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let host = text.lines().find_map(|l| l.strip_prefix("host: "))?;
    (out.status.success() && host.starts_with(std::env::consts::ARCH)).then(|| host.to_owned())
}

/// Runs `targets` (every one when empty) for `seconds` each. Without a nightly toolchain
/// prints a SKIP line and succeeds: the corpus replay in `cargo test` still runs.
pub fn run(targets: &[String], seconds: u64) -> anyhow::Result<()> {
    let chosen: Vec<&str> = if targets.is_empty() {
        TARGETS.to_vec()
    } else {
        for t in targets {
            if !TARGETS.contains(&t.as_str()) {
                bail!("no fuzz target {t:?}; targets: {}", TARGETS.join(", "));
            }
        }
        targets.iter().map(String::as_str).collect()
    };
    let Some(host) = nightly() else {
        println!(
            "SKIP fuzz: no `{NIGHTLY}` toolchain for {} (rustup cannot download one here); \
             `cargo test` replays the corpus in fuzz/corpus on stable",
            std::env::consts::ARCH
        );
        return Ok(());
    };
    let target_dir = root().join("target/fuzz");
    let started = Instant::now();
    // `--target` keeps the instrumentation off build scripts and proc macros.
    let status = Command::new("rustup")
        .args(["run", NIGHTLY, "cargo", "build", "--release", "--bins"])
        .args(["--manifest-path", "fuzz/Cargo.toml", "--target", &host])
        .env("RUSTFLAGS", COVERAGE_FLAGS)
        .env("CARGO_TARGET_DIR", &target_dir)
        // The targets need the daemon's library, not its eBPF object.
        .env("AYA_BUILD_SKIP", "1")
        .current_dir(root())
        .status()
        .context("spawning the fuzz build")?;
    if !status.success() {
        bail!("building the fuzz targets failed ({status})");
    }
    println!(
        "fuzz: targets built in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    let mut crashed = Vec::new();
    for target in chosen {
        let bin = target_dir.join(&host).join("release").join(target);
        let scratch = target_dir.join("corpus").join(target);
        let artifacts = target_dir.join("artifacts").join(target);
        std::fs::create_dir_all(&scratch)?;
        std::fs::create_dir_all(&artifacts)?;
        let seeds = root().join("fuzz/corpus").join(target);
        let out = Command::new(&bin)
            .arg(format!("-max_total_time={seconds}"))
            .args(["-rss_limit_mb=2048", "-timeout=10", "-print_final_stats=1"])
            .arg(format!("-artifact_prefix={}/", artifacts.display()))
            // New inputs go to the scratch corpus; the committed one is only read.
            .arg(&scratch)
            .arg(&seeds)
            .current_dir(root())
            .output()
            .with_context(|| format!("running {}", bin.display()))?;
        let log = String::from_utf8_lossy(&out.stderr);
        let runs = stat(&log, "stat::number_of_executed_units:");
        let cov = log
            .lines()
            .rev()
            .find_map(|l| l.split_once(" cov: "))
            .and_then(|(_, r)| r.split_whitespace().next())
            .unwrap_or("?");
        if out.status.success() {
            println!("fuzz {target}: {runs} inputs in {seconds} s, coverage {cov}, no crash");
        } else {
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            for line in tail.into_iter().rev() {
                eprintln!("  {line}");
            }
            println!(
                "fuzz {target}: FAILED after {runs} inputs; the input is in {} \
                 (copy it into fuzz/corpus/{target}/ so `cargo test` replays it)",
                artifacts.display()
            );
            crashed.push(target);
        }
    }
    if !crashed.is_empty() {
        bail!("fuzz targets failed: {}", crashed.join(", "));
    }
    Ok(())
}

/// A `-print_final_stats` value.
fn stat(log: &str, key: &str) -> String {
    log.lines()
        .find_map(|l| l.strip_prefix(key))
        .map_or_else(|| "?".into(), |v| v.trim().to_owned())
}
