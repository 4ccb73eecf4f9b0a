//! Builds the eBPF programs with aya-build and leaves the object in OUT_DIR for
//! `include_bytes_aligned!`. The build-dependency on gb10-ebpf plus aya-build's
//! rerun-if-changed on its sources make a stale object impossible.
use anyhow::{Context as _, bail};
use aya_build::{Package, Toolchain};

#[path = "ebpf_toolchain.rs"]
mod ebpf_toolchain;

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
    let Some(toolchain) = ebpf_toolchain::pick() else {
        bail!(
            "no toolchain can build the eBPF programs (they need core's sources for -Z build-std): {}",
            ebpf_toolchain::SETUP_HINT
        );
    };
    let package = Package {
        name: "gb10-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../gb10-ebpf"),
        ..Default::default()
    };
    aya_build::build_ebpf([package], Toolchain::Custom(toolchain.leak())).with_context(|| {
        format!(
            "building the eBPF programs failed; if a tool is missing, {}",
            ebpf_toolchain::SETUP_HINT
        )
    })
}
