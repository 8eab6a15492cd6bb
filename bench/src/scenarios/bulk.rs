//! Scenario 1, bulk TCP: one iperf3 stream from the guest namespace to the host's
//! loopback and back, through each backend's gateway mapping, at MTU 65520 and 1500.
//! The veth pair is the limit.

use anyhow::Result;

use super::{iperf3_both_ways, Bench};
use crate::backend::Backend;

pub fn run(bench: &mut Bench) -> Result<()> {
    let backends = [Backend::Vnet, Backend::Slirp4netns, Backend::Pasta, Backend::Veth];
    iperf3_both_ways(bench, "Bulk TCP (iperf3, one stream)", &backends)
}
