//! Fuzz target: see `vnet_fuzz_harness::ipv6_packets`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vnet_fuzz_harness::ipv6_packets(data));
