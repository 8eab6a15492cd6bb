//! Scenario 9, the host's tap: a namespace bridged by vnet (no gateway) to a tap of the
//! bench host that has an address on it, the classic tap setup without root in QEMU.
//! One iperf3 stream each way at both MTUs; the veth pair is the limit.

use anyhow::Result;

use super::{iperf3_both_ways, Bench};
use crate::backend::{Backend, IpVersion};

pub fn run(bench: &mut Bench) -> Result<()> {
    iperf3_both_ways(
        bench,
        "Tap: a namespace through vnet to the host's tap",
        &[Backend::VnetTap, Backend::Veth],
        IpVersion::V4,
    )
}
