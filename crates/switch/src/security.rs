//! Port security: what one port's peer may send into the switch besides VLAN rules. A
//! port learns at most so many source addresses (or, locked, only its first one), and
//! sends at most so many flooded frames (broadcast, multicast, unknown unicast) per
//! second, so one peer can neither fill the MAC table nor drown the others in floods.
//! This module counts addresses and frames; it knows no protocol and no queue.

use std::fmt;
use std::time::{Duration, Instant};

use vnet_wire::{Frame, MacAddress};

use crate::PortDropReason;

/// Flooded frames a port may send per second unless its spec says otherwise.
pub const DEFAULT_STORM_PPS: u32 = 1000;
/// Source addresses one port may use at once unless the switch is told otherwise.
pub const DEFAULT_PORT_STATIONS: usize = 64;

/// What a port lets in, set per spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortSecurity {
    /// Only the first source address the peer sends from is let in, for the life of the
    /// port (`,lock=on`).
    pub lock: bool,
    /// Most flooded frames per second (`,storm=PPS`); None for no limit (`,storm=off`).
    pub storm_pps: Option<u32>,
}

impl Default for PortSecurity {
    fn default() -> Self {
        Self { lock: false, storm_pps: Some(DEFAULT_STORM_PPS) }
    }
}

/// A check that frames from every port but its owner's must pass, set up by whoever
/// knows the protocols the switch does not: the gateway refuses ARP that claims its
/// addresses. A refused frame is dropped and counted as [`PortDropReason::Guarded`].
pub trait IngressGuard: fmt::Debug {
    /// Whether `frame` (untagged, as the switch carries it) may go on.
    fn admits(&self, frame: &Frame) -> bool;
}

/// One frame's worth of flood allowance, in millionths, so the bucket refills smoothly.
const FRAME_COST: u64 = 1_000_000;

/// The state port security keeps for one port.
#[derive(Debug)]
pub(crate) struct PortGuard {
    security: PortSecurity,
    /// Source addresses in use, with when each was last seen.
    stations: Vec<(MacAddress, Instant)>,
    /// Flooded frames the port may still send, in millionths of a frame.
    flood_allowance: u64,
    refilled: Option<Instant>,
}

impl PortGuard {
    pub fn new(security: PortSecurity) -> Self {
        let flood_allowance = security.storm_pps.map_or(0, |pps| u64::from(pps) * FRAME_COST);
        Self { security, stations: Vec::new(), flood_allowance, refilled: None }
    }

    pub fn security(&self) -> PortSecurity {
        self.security
    }

    /// Whether the peer may send from `source` now: an address it uses already, or a new
    /// one while it uses fewer than `limit` (one when locked). An address unseen for
    /// `aging` makes room, except on a locked port.
    pub fn admit_source(
        &mut self,
        source: MacAddress,
        now: Instant,
        limit: usize,
        aging: Duration,
    ) -> Result<(), PortDropReason> {
        if let Some((_, seen)) = self.stations.iter_mut().find(|(mac, _)| *mac == source) {
            *seen = now;
            return Ok(());
        }
        if self.security.lock {
            if !self.stations.is_empty() {
                return Err(PortDropReason::Locked);
            }
        } else if self.stations.len() >= limit {
            self.stations.retain(|(_, seen)| now.saturating_duration_since(*seen) < aging);
            if self.stations.len() >= limit {
                return Err(PortDropReason::StationLimit);
            }
        }
        self.stations.push((source, now));
        Ok(())
    }

    /// Whether the peer may send one more flooded frame now.
    pub fn admit_flood(&mut self, now: Instant) -> bool {
        let Some(pps) = self.security.storm_pps else {
            return true;
        };
        let burst = u64::from(pps) * FRAME_COST;
        let elapsed =
            self.refilled.map_or(Duration::ZERO, |refilled| now.saturating_duration_since(refilled));
        let earned = (elapsed.as_micros() as u64).saturating_mul(u64::from(pps));
        self.flood_allowance = self.flood_allowance.saturating_add(earned).min(burst);
        self.refilled = Some(now);
        match self.flood_allowance.checked_sub(FRAME_COST) {
            Some(left) => {
                self.flood_allowance = left;
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(last: u8) -> MacAddress {
        MacAddress([0x02, 0, 0, 0, 0, last])
    }

    #[test]
    fn a_port_uses_at_most_its_limit_of_addresses_until_one_ages_out() {
        let now = Instant::now();
        let aging = Duration::from_secs(300);
        let mut guard = PortGuard::new(PortSecurity::default());
        assert_eq!(guard.admit_source(mac(1), now, 2, aging), Ok(()));
        assert_eq!(guard.admit_source(mac(2), now, 2, aging), Ok(()));
        assert_eq!(guard.admit_source(mac(3), now, 2, aging), Err(PortDropReason::StationLimit));
        assert_eq!(guard.admit_source(mac(1), now + aging, 2, aging), Ok(()), "a known one still passes");
        assert_eq!(guard.admit_source(mac(3), now + aging, 2, aging), Ok(()), "mac 2 aged out");
    }

    #[test]
    fn a_locked_port_keeps_its_first_address_for_good() {
        let now = Instant::now();
        let mut guard = PortGuard::new(PortSecurity { lock: true, ..PortSecurity::default() });
        assert_eq!(guard.admit_source(mac(1), now, 64, Duration::from_secs(1)), Ok(()));
        let much_later = now + Duration::from_secs(3600);
        assert_eq!(
            guard.admit_source(mac(2), much_later, 64, Duration::from_secs(1)),
            Err(PortDropReason::Locked)
        );
        assert_eq!(guard.admit_source(mac(1), much_later, 64, Duration::from_secs(1)), Ok(()));
    }

    #[test]
    fn floods_are_held_to_the_rate_with_a_burst_of_one_second() {
        let now = Instant::now();
        let mut guard = PortGuard::new(PortSecurity { lock: false, storm_pps: Some(100) });
        let passed = (0..1000).filter(|_| guard.admit_flood(now)).count();
        assert_eq!(passed, 100, "one second's worth at once");
        let later = now + Duration::from_millis(500);
        let passed = (0..1000).filter(|_| guard.admit_flood(later)).count();
        assert_eq!(passed, 50, "then the rate");
        let mut unlimited = PortGuard::new(PortSecurity { lock: false, storm_pps: None });
        assert!((0..100_000).all(|_| unlimited.admit_flood(now)));
    }
}
