//! Fuzzes a lease row as the store loader reads it: `cargo xtask fuzz lease_record`. Its corpus is replayed by
//! `cargo test -p gb10-userspace --lib fuzz`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    gb10_provision::fuzz::lease_record(data);
});
