//! Fuzzes inventory.toml (parse and validate): `cargo xtask fuzz inventory`. Its corpus is replayed by
//! `cargo test -p gb10-userspace --lib fuzz`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    gb10_provision::fuzz::inventory(data);
});
