//! Fuzzes the TFTP request path: parse, options, negotiation, OACK, name cleaning.
//! Run: `AYA_BUILD_SKIP=1 cargo fuzz run tftp_request` (in `fuzz/`). The corpus in
//! `corpus/tftp_request` is replayed by gb10-userspace's unit tests.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    gb10_provision::tftp::exercise_request(data);
});
