//! Fuzzes a DHCP datagram through the strict parser, the direct and proxy handlers and
//! the reply encoder (`cargo fuzz run dhcp_message`; the corpus is replayed by
//! `cargo test -p gb10-userspace --lib dhcp::fuzz`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    gb10_provision::dhcp::fuzz::exercise(data);
});
