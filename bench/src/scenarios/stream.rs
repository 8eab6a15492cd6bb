//! Scenario 5, the QEMU stream transport: the bench's plug relays a namespace's tap to a
//! QEMU-style stream socket, so vnet (`--listen stream:unix:`) and passt are driven the
//! same way, as QEMU would drive them. Bulk TCP both ways through each one's gateway
//! mapping to the host's loopback.

use anyhow::Result;

use super::{iperf3_both_ways, Bench};
use crate::backend::{Backend, IpVersion};

pub fn run(bench: &mut Bench) -> Result<()> {
    let scenario = "QEMU stream transport (tap ↔ stream socket plug), iperf3";
    iperf3_both_ways(bench, scenario, &[Backend::VnetStream, Backend::Passt], IpVersion::V4)
}
