//! `cargo xtask`: install what the project needs, build the eBPF object, run every test,
//! run the lab.
mod bench;
mod e2e;
mod fuzz;
mod image;
mod images;
mod lab;
mod nginx;
mod setup;
mod storm;

use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

#[path = "../../gb10-userspace/ebpf_toolchain.rs"]
mod ebpf_toolchain;

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what is missing: Debian packages (eBPF toolchain, test peers), bpf-linker,
    /// the `gb10-ebpf` rustup toolchain.
    Setup,
    /// Build the eBPF object alone (the daemon's build embeds the same object).
    BuildEbpf {
        #[arg(long, hide = true)]
        inner: bool,
    },
    /// Install what is missing, then run formatting and lint checks and every test.
    Test {
        /// Skip `cargo fmt --check` and clippy.
        #[arg(long)]
        no_lint: bool,
        /// Also the heavier scenarios CI leaves out: every e2e scenario, lab tests that
        /// check for `GB10_TEST_ALL=1`, and the release image (this machine's and arm64)
        /// checked in place of CI's check image of the debug daemon.
        #[arg(long)]
        all: bool,
        /// Extra arguments for `cargo test` (after `--`).
        #[arg(last = true)]
        cargo_args: Vec<String>,
    },
    /// Run the fuzz targets in fuzz/ under libFuzzer (needs a nightly toolchain; says so
    /// and stops without one): every target, or those named, each for `--seconds`.
    Fuzz {
        /// How long each target runs.
        #[arg(long, default_value_t = 300)]
        seconds: u64,
        /// Target names (default: all).
        targets: Vec<String>,
    },
    /// Measurements, side by side, reported (never asserted): `flood`.
    Bench {
        #[arg(value_enum)]
        what: BenchKind,
        /// `storm`: how many machines boot at once, one storm per size.
        #[arg(long, value_delimiter = ',', default_values_t = [100, 500, 1000])]
        machines: Vec<usize>,
        /// `image`: how many clients pull at once, one run per count.
        #[arg(long, value_delimiter = ',', default_values_t = [16, 64])]
        clients: Vec<usize>,
        /// `dhcp`, `storm`: the receive buffer every socket opened during the run gets by
        /// default (`net.core.rmem_default`, bytes; restored after), e.g. 4194304, the
        /// size our DHCP socket asks for itself. Default: the machine's (212992 here),
        /// at which the references and perfdhcp drop datagrams under a burst.
        #[arg(long)]
        receive_buffer: Option<u64>,
        /// `http`, `image`: rounds per file or client count, both servers back to back in
        /// each, ours first in odd rounds (the ratio is the median of the rounds' ratios:
        /// one run of either server swings by a third to 2x here between runs).
        #[arg(long, default_value_t = 5)]
        rounds: usize,
    },
    /// Start gb10-provision on a virtual LAN (network namespaces), show a client being
    /// served, and keep it up until Ctrl-C.
    Lab {
        /// Show the client being served, then tear down instead of waiting for Ctrl-C.
        #[arg(long)]
        once: bool,
    },
    /// The container image, offline from Debian packages: target/image/
    /// gb10-provision-<version>-<arch>.tar (`podman load`, `k3s ctr images import`).
    Image {
        /// The image's architecture (default: this machine's).
        #[arg(long, value_enum)]
        arch: Option<e2e::assets::Arch>,
        /// A check image instead of the release artifact: the debug daemon `cargo build`
        /// makes of this tree (the tests' binary; this machine's architecture), tagged
        /// `<version>-check` in target/image/gb10-provision-<version>-check-<arch>.tar.
        /// For CI's `cargo xtask test`; never to ship.
        #[arg(long)]
        debug: bool,
        /// Then run it as the chart does and check it (root): see xtask/src/image/check.rs.
        #[arg(long)]
        check: bool,
        /// With --check: also network-boot this e2e scenario through the container.
        #[arg(long, requires = "check")]
        boot: Option<String>,
    },
    /// Real firmware in QEMU network-boots through gb10-provision (the CI set unless
    /// scenarios are named or `--all`).
    E2e {
        /// Every scenario.
        #[arg(long)]
        all: bool,
        /// Boot each scenario also through the reference stack (dnsmasq + nginx) and
        /// print both times; the daemon is then a release build, as the reference is.
        #[arg(long)]
        compare: bool,
        /// Scenario names (see `--all` output).
        scenarios: Vec<String>,
    },
    /// Build the install environment (kernel + initramfs with NIC drivers, DHCP, the
    /// installer's tools) from Debian packages: target/images/<arch>/installer.
    Installer {
        #[command(flatten)]
        build: ImageArgs,
    },
    /// Build the lab's OS image (Debian, cloud-init NoCloud, signed shim + GRUB, GPT with
    /// ESP + root), raw, gzip and zstd with SHA256SUMS: target/images/<arch>/os.
    OsImage {
        #[command(flatten)]
        build: ImageArgs,
    },
}

#[derive(clap::Args)]
struct ImageArgs {
    /// The architecture to build for.
    #[arg(long, value_enum, default_value = "amd64")]
    arch: ArchArg,
    /// Use only the package cache of an earlier build (target/images/cache/<arch>):
    /// nothing is downloaded.
    #[arg(long)]
    offline: bool,
    /// A Debian mirror to use instead of deb.debian.org (e.g. a local one).
    #[arg(long)]
    mirror: Option<String>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ArchArg {
    Amd64,
    Arm64,
}

impl ImageArgs {
    fn arch(&self) -> e2e::assets::Arch {
        match self.arch {
            ArchArg::Amd64 => e2e::assets::Arch::Amd64,
            ArchArg::Arm64 => e2e::assets::Arch::Arm64,
        }
    }

    fn source(&self) -> images::Source {
        images::Source::new(self.mirror.as_deref(), self.offline)
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum BenchKind {
    /// A random-MAC DHCP flood with the guard enforcing and off.
    Flood,
    /// perfdhcp against gb10-provision, dnsmasq and kea-dhcp4.
    Dhcp,
    /// wrk against gb10-provision and nginx.
    Http,
    /// atftp against gb10-provision, tftpd-hpa, dnsmasq and atftpd.
    Tftp,
    /// A rack booting at once (DHCP, TFTP, HTTP) against dnsmasq + nginx.
    Storm,
    /// Many clients pulling one 1 GiB image over HTTP, against nginx.
    Image,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Task::Setup => setup::run(),
        Task::BuildEbpf { inner: false } => build_ebpf(),
        Task::BuildEbpf { inner: true } => build_ebpf_inner(),
        Task::Test {
            no_lint,
            all,
            cargo_args,
        } => test(no_lint, all, &cargo_args),
        Task::Fuzz { seconds, targets } => fuzz::run(&targets, seconds),
        Task::Bench {
            what,
            machines,
            clients,
            receive_buffer,
            rounds,
        } => {
            if matches!(what, BenchKind::Storm | BenchKind::Image) && cfg!(debug_assertions) {
                // The load generator runs in this process: a debug build would measure
                // itself. Run again as a release build.
                let list =
                    |v: &[usize]| v.iter().map(usize::to_string).collect::<Vec<_>>().join(",");
                let what = if matches!(what, BenchKind::Storm) {
                    "storm"
                } else {
                    "image"
                };
                return exec(
                    cargo()
                        .args([
                            "run",
                            "--release",
                            "--quiet",
                            "-p",
                            "xtask",
                            "--",
                            "bench",
                            what,
                        ])
                        .args(["--machines", &list(&machines), "--clients", &list(&clients)])
                        .args(["--rounds", &rounds.to_string()])
                        .args(
                            receive_buffer
                                .map(|b| vec!["--receive-buffer".to_owned(), b.to_string()])
                                .unwrap_or_default(),
                        ),
                );
            }
            setup::run()?;
            setup::bench()?;
            let _buffers = receive_buffer
                .map(bench::ReceiveBuffers::raise)
                .transpose()?;
            match what {
                BenchKind::Flood => bench::flood(),
                BenchKind::Dhcp => bench::dhcp(),
                BenchKind::Http => bench::http(rounds.max(1)),
                BenchKind::Tftp => bench::tftp(),
                BenchKind::Storm => storm::run(&machines),
                BenchKind::Image => storm::image(&clients, rounds.max(1)),
            }
        }
        Task::Lab { once } => {
            setup::run()?;
            lab::run(once)
        }
        Task::Image {
            arch,
            debug,
            check,
            boot,
        } => {
            let build = if debug {
                image::Build::Check
            } else {
                image::Build::Release
            };
            let image = image::build(arch.unwrap_or_else(e2e::assets::Arch::host), build)?;
            if check {
                image::check::run(&image, boot.as_deref())?;
            }
            Ok(())
        }
        Task::E2e {
            all,
            compare,
            scenarios,
        } => e2e::run(all, compare, &scenarios),
        Task::Installer { build } => {
            setup::images()?;
            let i = images::installer::build(build.arch(), &build.source())?;
            println!(
                "kernel: {}\ninitrd: {}",
                i.kernel.display(),
                i.initrd.display()
            );
            Ok(())
        }
        Task::OsImage { build } => {
            setup::images()?;
            let i = images::os_image::build(build.arch(), &build.source())?;
            for f in [&i.raw, &i.gzip, &i.zstd] {
                println!("{}  {}", i.sha256(f)?, f.display());
            }
            Ok(())
        }
    }
}

/// The workspace root (xtask lives one level below it), without a `..`: paths under it
/// are bind-mounted into containers at the same path, where `xtask/..` would not
/// resolve (the container has no `xtask` directory).
fn root() -> PathBuf {
    let xtask = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    xtask.parent().unwrap_or(xtask).to_path_buf()
}

/// Runs a command from the workspace root, failing with its name when it fails.
fn exec(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd
        .current_dir(root())
        .status()
        .with_context(|| format!("spawning {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

/// aya-build reads the build-script environment; give it one in a child of ourselves
/// rather than mutating our own environment.
fn build_ebpf() -> anyhow::Result<()> {
    setup::ebpf()?;
    let out = root().join("target/ebpf");
    std::fs::create_dir_all(&out)?;
    let arch = std::env::consts::ARCH;
    // aya-build speaks to cargo (`cargo:warning=…`); outside a build script, print plainly.
    let output = Command::new(std::env::current_exe()?)
        .args(["build-ebpf", "--inner"])
        .env("OUT_DIR", &out)
        .env("CARGO_CFG_TARGET_ENDIAN", "little")
        .env("CARGO_CFG_TARGET_ARCH", arch)
        .current_dir(root())
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("spawning the eBPF build")?;
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let line = line.strip_prefix("cargo:warning=").unwrap_or(line);
        if !line.starts_with("cargo:") {
            println!("{line}");
        }
    }
    if !output.status.success() {
        bail!("the eBPF build failed ({})", output.status);
    }
    let object = out.join("gb10-ebpf");
    let size = std::fs::metadata(&object)
        .with_context(|| format!("{}", object.display()))?
        .len();
    println!(
        "eBPF object: {} ({size} bytes)",
        object.canonicalize()?.display()
    );
    Ok(())
}

fn build_ebpf_inner() -> anyhow::Result<()> {
    let toolchain = ebpf_toolchain::pick()
        .with_context(|| format!("no eBPF toolchain: {}", ebpf_toolchain::SETUP_HINT))?;
    let root_dir = root().join("gb10-ebpf").canonicalize()?;
    let root_dir = root_dir.to_str().context("non-UTF-8 path")?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "gb10-ebpf",
            root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(toolchain.leak()),
    )
}

/// Seconds per fuzz target in `cargo xtask test --all`. CI runs no fuzzing: building
/// the instrumented targets takes 6–7 min on two cores (the daemon's whole dependency
/// tree under coverage flags), which CI spends on the OS image install instead; `cargo
/// test` replays every corpus entry on stable in CI either way.
const FUZZ_ALL_SECONDS: u64 = 60;

/// The e2e scenario the host image serves in `cargo xtask test`: the quickest UEFI one.
const IMAGE_BOOT: &str = "ovmf-ipxe";

fn test(no_lint: bool, all: bool, cargo_args: &[String]) -> anyhow::Result<()> {
    setup::run()?;
    if !no_lint {
        exec(cargo().args(["fmt", "--all", "--", "--check"]))?;
        exec(cargo().args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;
    }
    let (passed, failed) = cargo_test(all, cargo_args)?;
    if failed == 0 {
        // Every fuzz target for a minute where a nightly toolchain exists (a SKIP line
        // otherwise; `cargo test` has replayed the corpus on stable already).
        if all {
            fuzz::run(&[], FUZZ_ALL_SECONDS)?;
        } else {
            println!(
                "fuzz: not in CI (the corpus was replayed by `cargo test`); \
                 `cargo xtask test --all` or `cargo xtask fuzz` runs the targets"
            );
        }
        // The main job: the README's first command must keep working.
        lab::run(true)?;
        // Real firmware through the daemon: the CI set, or every scenario with --all.
        if !all {
            println!("e2e: CI scenarios {}", e2e::CI.join(", "));
        }
        e2e::run(all, false, &[])?;
        // The deployable artifact: the image built offline and run as the chart runs
        // it, serving a firmware boot. CI checks a check image of the debug daemon it
        // has just tested, the same source (about 2 min: 16 s for the image from a cold
        // base, 1.6 min for the checks and the boot; the release build would be 28
        // CPU-minutes, about 14 min at best on CI's two cores, and nothing else in CI
        // builds release); --all checks the release artifact itself, for this machine
        // and for arm64 (under qemu-user).
        let host = e2e::assets::Arch::host();
        let release = image::Build::Release;
        if all {
            image::check::run(&image::build(host, release)?, Some(IMAGE_BOOT))?;
            // No firmware boot: under qemu-user the daemon refuses to serve files (no
            // openat2 in Debian 12's qemu 7.2), which the check shows instead.
            let arm64 = e2e::assets::Arch::Arm64;
            image::check::run(&image::build(arm64, release)?, None)?;
        } else {
            let check = image::Build::Check;
            image::check::run(&image::build(host, check)?, Some(IMAGE_BOOT))?;
        }
    }
    // The closing line, last: cargo's own final `test result` belongs to whichever binary
    // ran last, often an empty doctest run.
    println!("tests: {passed} passed, {failed} failed");
    if failed > 0 {
        bail!("{failed} tests failed");
    }
    Ok(())
}

/// Runs `cargo test`, echoing its output, and sums its `test result` lines.
fn cargo_test(all: bool, cargo_args: &[String]) -> anyhow::Result<(u64, u64)> {
    use std::io::{BufRead as _, BufReader};
    // Setup installed every peer and tool: a test that would skip is a failure here.
    // SAFETY: geteuid has no preconditions.
    let as_root = unsafe { libc::geteuid() } == 0;
    // Privileged lab tests run one at a time: load tests (perfdhcp, floods, TFTP under
    // netem) measure what they see and must not share two cores with each other.
    let mut args: Vec<String> = cargo_args.to_vec();
    if !args.iter().any(|a| a == "--") {
        args.push("--".into());
    }
    if !args.iter().any(|a| a.starts_with("--test-threads")) {
        args.push("--test-threads=1".into());
    }
    let mut child = cargo()
        .arg("test")
        .args(&args)
        .env("GB10_NO_SKIP", if as_root { "1" } else { "0" })
        .env("GB10_TEST_ALL", if all { "1" } else { "0" })
        .current_dir(root())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("spawning cargo test")?;
    let (mut passed, mut failed) = (0, 0);
    for line in BufReader::new(child.stdout.take().context("cargo test stdout")?).lines() {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            let count = |word: &str| {
                rest.split(';')
                    .find_map(|part| {
                        part.trim()
                            .strip_suffix(word)?
                            .trim()
                            .rsplit(' ')
                            .next()?
                            .parse::<u64>()
                            .ok()
                    })
                    .unwrap_or(0)
            };
            passed += count(" passed");
            failed += count(" failed");
        }
    }
    let status = child.wait()?;
    if !status.success() && failed == 0 {
        bail!("cargo test failed ({status}) before running every test");
    }
    Ok((passed, failed))
}
