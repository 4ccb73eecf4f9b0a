//! Fuzzes the config file (TOML, schema and validation): `cargo xtask fuzz config`. Its corpus is replayed by
//! `cargo test -p gb10-userspace --lib fuzz`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    gb10_provision::fuzz::config(data);
});
