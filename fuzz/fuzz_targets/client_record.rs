//! Fuzzes a client row as the store loader reads it: `cargo xtask fuzz client_record`. Its corpus is replayed by
//! `cargo test -p gb10-userspace --lib fuzz`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    gb10_provision::fuzz::client_record(data);
});
