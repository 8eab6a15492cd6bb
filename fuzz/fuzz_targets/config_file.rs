//! Fuzz target: see `vnet_fuzz_harness::config_file`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vnet_fuzz_harness::config_file(data));
