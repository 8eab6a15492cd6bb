//! Scenario 1, bulk TCP: one iperf3 stream from the guest namespace to the host's
//! loopback and back, through each backend's gateway mapping, at MTU 65520 and 1500,
//! over IPv4 (to 127.0.0.1) and, as a scenario of its own, over IPv6 (to ::1, or for the
//! veth pair to the host side's address). The veth pair is the limit.

use anyhow::Result;

use super::{iperf3_both_ways, Bench};
use crate::backend::{Backend, IpVersion};

const BACKENDS: [Backend; 4] = [Backend::Vnet, Backend::Slirp4netns, Backend::Pasta, Backend::Veth];

pub fn run(bench: &mut Bench) -> Result<()> {
    iperf3_both_ways(bench, "Bulk TCP (iperf3, one stream)", &BACKENDS, IpVersion::V4)
}

pub fn run_ipv6(bench: &mut Bench) -> Result<()> {
    iperf3_both_ways(bench, "Bulk TCP over IPv6 (iperf3, one stream)", &BACKENDS, IpVersion::V6)
}
