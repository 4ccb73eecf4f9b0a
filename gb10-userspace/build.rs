//! Builds the eBPF programs with aya-build and leaves the object in OUT_DIR for
//! `include_bytes_aligned!`. The build-dependency on gb10-ebpf plus aya-build's
//! rerun-if-changed on its sources make a stale object impossible.
use std::process::Command;

use anyhow::{Context as _, bail};
use aya_build::{Package, Toolchain};

/// The rustup toolchain `cargo xtask setup` links over Debian's rustc-web.
const LINKED_TOOLCHAIN: &str = "gb10-ebpf";
const SETUP_HINT: &str = "run `cargo xtask setup` (it installs Debian's rustc-web, rust-web-src \
     and llvm-22-dev, builds bpf-linker 0.13 against LLVM 22 and links the `gb10-ebpf` rustup \
     toolchain), or install a nightly toolchain with rust-src \
     (`rustup toolchain install nightly --component rust-src`)";

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=GB10_EBPF_TOOLCHAIN");
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    if std::env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true")) {
        // A build without programs (quick iteration on userspace code): the daemon sees
        // an empty object and reports XDP as unavailable, never a stale program.
        let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("gb10-ebpf");
        std::fs::write(&out, []).with_context(|| format!("writing {}", out.display()))?;
        println!(
            "cargo:warning=AYA_BUILD_SKIP set: gb10-provision is built without its eBPF programs"
        );
        return Ok(());
    }
    let toolchain = pick_toolchain()?;
    let package = Package {
        name: "gb10-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../gb10-ebpf"),
        ..Default::default()
    };
    aya_build::build_ebpf([package], toolchain).with_context(|| {
        format!("building the eBPF programs failed; if a tool is missing, {SETUP_HINT}")
    })
}

/// GB10_EBPF_TOOLCHAIN wins; then a nightly that has rust-src; then the linked Debian one.
fn pick_toolchain() -> anyhow::Result<Toolchain<'static>> {
    if let Ok(name) = std::env::var("GB10_EBPF_TOOLCHAIN") {
        return Ok(Toolchain::Custom(name.leak()));
    }
    if has_rust_src("nightly") {
        return Ok(Toolchain::Nightly);
    }
    if has_rust_src(LINKED_TOOLCHAIN) {
        return Ok(Toolchain::Custom(LINKED_TOOLCHAIN));
    }
    bail!(
        "no toolchain can build the eBPF programs (need build-std sources for core): {SETUP_HINT}"
    )
}

fn has_rust_src(toolchain: &str) -> bool {
    let Ok(out) = Command::new("rustup")
        .args(["run", toolchain, "rustc", "--print", "sysroot"])
        .output()
    else {
        return false;
    };
    let sysroot = String::from_utf8_lossy(&out.stdout);
    out.status.success()
        && std::path::Path::new(sysroot.trim())
            .join("lib/rustlib/src/rust/library/core")
            .is_dir()
}
