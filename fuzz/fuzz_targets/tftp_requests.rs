//! Fuzz target: see `vnet_fuzz_harness::tftp_requests`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vnet_fuzz_harness::tftp_requests(data));
