//! Fuzz target: see `vnet_fuzz_harness::api_request`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vnet_fuzz_harness::api_request(data));
