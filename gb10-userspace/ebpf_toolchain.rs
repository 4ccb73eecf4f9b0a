//! Which rustup toolchain builds the eBPF programs; shared by build.rs and xtask.
use std::{path::Path, process::Command};

/// The rustup toolchain `cargo xtask setup` links over Debian's rustc-web.
pub const LINKED_TOOLCHAIN: &str = "gb10-ebpf";

/// What to do when no toolchain fits.
pub const SETUP_HINT: &str = "run `cargo xtask setup` (it installs Debian's rustc-web, cargo-web, \
     rust-web-src and llvm-22-dev, builds bpf-linker 0.13 against LLVM 22 and links the \
     `gb10-ebpf` rustup toolchain), or install a nightly toolchain with rust-src \
     (`rustup toolchain install nightly --component rust-src`)";

/// GB10_EBPF_TOOLCHAIN wins; then a nightly that has rust-src; then the linked Debian one.
pub fn pick() -> Option<String> {
    if let Ok(name) = std::env::var("GB10_EBPF_TOOLCHAIN") {
        return Some(name);
    }
    ["nightly", LINKED_TOOLCHAIN]
        .into_iter()
        .find(|t| has_rust_src(t))
        .map(str::to_owned)
}

/// Whether `rustup run TOOLCHAIN` works and its sysroot holds core's sources (for
/// `-Z build-std=core`).
pub fn has_rust_src(toolchain: &str) -> bool {
    let Ok(out) = Command::new("rustup")
        .args(["run", toolchain, "rustc", "--print", "sysroot"])
        .output()
    else {
        return false;
    };
    let sysroot = String::from_utf8_lossy(&out.stdout);
    out.status.success()
        && Path::new(sysroot.trim())
            .join("lib/rustlib/src/rust/library/core")
            .is_dir()
}
