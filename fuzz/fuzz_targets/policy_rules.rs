//! Fuzz target: see `vnet_fuzz_harness::policy_rules`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vnet_fuzz_harness::policy_rules(data));
