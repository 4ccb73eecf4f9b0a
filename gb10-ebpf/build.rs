//! Rebuild the eBPF object when the linker changes (a new bpf-linker or LLVM).
fn main() {
    // Building for the host (clippy, the userspace build-dependency) needs no linker.
    if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() != Ok("bpf") {
        return;
    }
    match which::which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(err) => panic!(
            "bpf-linker not found ({err}): install it with `cargo xtask setup`, or \
             `LLVM_PREFIX=/usr/lib/llvm-22 cargo install bpf-linker --version 0.13.0 \
             --no-default-features --features llvm-22`"
        ),
    }
}
