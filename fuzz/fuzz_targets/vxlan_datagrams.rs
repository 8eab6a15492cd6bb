//! Fuzz target: see `vnet_fuzz_harness::vxlan_datagrams`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vnet_fuzz_harness::vxlan_datagrams(data));
