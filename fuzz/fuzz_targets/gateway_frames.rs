//! Fuzz target: see `vnet_fuzz_harness::gateway_frames`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vnet_fuzz_harness::gateway_frames(data));
