//! Host-side stub: the programs live in the `gb10-ebpf` binary target (`main.rs`).
//! This library exists so gb10-userspace can build-depend on the package and be
//! rebuilt whenever the programs or gb10-common change.
#![no_std]
