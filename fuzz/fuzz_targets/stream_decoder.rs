//! Fuzz target: see `vnet_fuzz_harness::stream_decoder`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vnet_fuzz_harness::stream_decoder(data));
