//! Fuzzes an HTTP request path, Range and If-None-Match: `cargo xtask fuzz http_request`. Its corpus is replayed by
//! `cargo test -p gb10-userspace --lib fuzz`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    gb10_provision::fuzz::http_request(data);
});
