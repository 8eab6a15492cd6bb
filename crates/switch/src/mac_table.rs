//! The MAC address table: which port a station was last seen on (and, behind a port
//! that reaches several remote peers, which of them), and for how long that stays true.
//!
//! It knows addresses, ports and time, nothing about frames or queues. Time is passed in,
//! so aging is tested without sleeping.

use foldhash::{HashMap, HashMapExt};
use std::time::{Duration, Instant};

use vnet_wire::MacAddress;

use crate::{PortId, RemoteId, Vlan};

/// Default time an entry lives without being refreshed, as in most hardware switches.
pub const DEFAULT_AGING: Duration = Duration::from_secs(300);

/// Upper bound on learned stations, so a guest sending from random source addresses
/// cannot grow vnet's memory without limit.
pub const DEFAULT_CAPACITY: usize = 65536;

/// How often a full table looks for aged entries to make room, so a flood of new source
/// addresses costs one sweep per interval, not one per frame.
const FULL_SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// What learning a source address did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Learned {
    /// A station not in the table (or aged out) is now on this port.
    New,
    /// Already known on this port; its age was reset.
    Refreshed,
    /// The station moved here from another port.
    Moved {
        /// The port it was on before.
        from: PortId,
    },
    /// The table is full; the station was not learned and its frames will be flooded.
    TableFull,
}

/// A station the table knows: where it was seen and how long ago.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Station {
    /// The VLAN it was seen on.
    pub vlan: Vlan,
    /// The station's address.
    pub mac: MacAddress,
    /// The port it was last seen on.
    pub port: PortId,
    /// The remote peer behind that port it was seen behind, if the port has several.
    pub remote: Option<RemoteId>,
    /// How long since it was last seen.
    pub age: Duration,
}

/// Where a station was seen, and until when that holds: kept as the expiry, so that a
/// lookup on every frame compares two times instead of subtracting them.
#[derive(Debug, Clone, Copy)]
struct Entry {
    port: PortId,
    remote: Option<RemoteId>,
    expires: Instant,
}

/// Station address to port, with aging.
#[derive(Debug)]
pub struct MacTable {
    entries: HashMap<(Vlan, MacAddress), Entry>,
    aging: Duration,
    capacity: usize,
    next_full_sweep: Option<Instant>,
}

impl MacTable {
    /// An empty table whose entries expire after `aging` and which holds at most
    /// `capacity` stations.
    pub fn new(aging: Duration, capacity: usize) -> Self {
        Self { entries: HashMap::new(), aging, capacity, next_full_sweep: None }
    }

    /// Records that `mac` was seen on VLAN `vlan` of `port` at `now`.
    pub fn learn(&mut self, vlan: Vlan, mac: MacAddress, port: PortId, now: Instant) -> Learned {
        self.learn_behind(vlan, mac, port, None, now)
    }

    /// Records that `mac` was seen on VLAN `vlan` of `port`, behind `remote` if the port
    /// reaches several peers, at `now`. A station that changes remotes on one port is
    /// refreshed, not moved.
    pub fn learn_behind(
        &mut self,
        vlan: Vlan,
        mac: MacAddress,
        port: PortId,
        remote: Option<RemoteId>,
        now: Instant,
    ) -> Learned {
        let expires = now + self.aging;
        let fresh = Entry { port, remote, expires };
        if let Some(entry) = self.entries.get_mut(&(vlan, mac)) {
            let was_live = now < entry.expires;
            let previous = entry.port;
            *entry = fresh;
            return match (was_live, previous == port) {
                (false, _) => Learned::New,
                (true, true) => Learned::Refreshed,
                (true, false) => Learned::Moved { from: previous },
            };
        }
        if self.entries.len() >= self.capacity {
            if self.next_full_sweep.is_none_or(|due| now >= due) {
                self.expire(now);
                self.next_full_sweep = Some(now + FULL_SWEEP_INTERVAL);
            }
            if self.entries.len() >= self.capacity {
                return Learned::TableFull;
            }
        }
        self.entries.insert((vlan, mac), fresh);
        Learned::New
    }

    /// The port `mac` was last seen on in `vlan`, unless that was longer ago than the
    /// aging time.
    pub fn lookup(&self, vlan: Vlan, mac: MacAddress, now: Instant) -> Option<PortId> {
        self.entries.get(&(vlan, mac)).filter(|entry| now < entry.expires).map(|entry| entry.port)
    }

    /// The remote peer behind its port that `mac` was last seen behind in `vlan`, unless
    /// that was longer ago than the aging time or its port has no remotes.
    pub fn remote_of(&self, vlan: Vlan, mac: MacAddress, now: Instant) -> Option<RemoteId> {
        self.entries.get(&(vlan, mac)).filter(|entry| now < entry.expires).and_then(|entry| entry.remote)
    }

    /// Forgets every station on `port`, for when the port goes away.
    pub fn forget_port(&mut self, port: PortId) {
        self.entries.retain(|_, entry| entry.port != port);
    }

    /// Drops entries older than the aging time and returns how many went.
    pub fn expire(&mut self, now: Instant) -> usize {
        let before = self.entries.len();
        self.entries.retain(|_, entry| now < entry.expires);
        before - self.entries.len()
    }

    /// The stations not yet aged out at `now`, in no particular order.
    pub fn stations(&self, now: Instant) -> impl Iterator<Item = Station> + '_ {
        self.entries.iter().filter_map(move |((vlan, mac), entry)| {
            let left = entry.expires.checked_duration_since(now).filter(|left| !left.is_zero())?;
            let age = self.aging.saturating_sub(left);
            Some(Station { vlan: *vlan, mac: *mac, port: entry.port, remote: entry.remote, age })
        })
    }

    /// Number of stations currently held, aged or not.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no station is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The configured aging time.
    pub fn aging(&self) -> Duration {
        self.aging
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: MacAddress = MacAddress([0x52, 0x54, 0, 0, 0, 0xa]);
    const B: MacAddress = MacAddress([0x52, 0x54, 0, 0, 0, 0xb]);

    #[test]
    fn learned_station_is_found_until_it_ages_out() {
        let t0 = Instant::now();
        let mut table = MacTable::new(Duration::from_secs(300), 16);
        assert_eq!(table.learn(None, A, PortId(1), t0), Learned::New);
        assert_eq!(table.lookup(None, A, t0 + Duration::from_secs(299)), Some(PortId(1)));
        assert_eq!(table.lookup(None, A, t0 + Duration::from_secs(300)), None);
        assert_eq!(table.expire(t0 + Duration::from_secs(300)), 1);
        assert!(table.is_empty());
    }

    #[test]
    fn refreshing_restarts_the_age() {
        let t0 = Instant::now();
        let mut table = MacTable::new(Duration::from_secs(10), 16);
        table.learn(None, A, PortId(1), t0);
        let t1 = t0 + Duration::from_secs(8);
        assert_eq!(table.learn(None, A, PortId(1), t1), Learned::Refreshed);
        assert_eq!(table.lookup(None, A, t1 + Duration::from_secs(8)), Some(PortId(1)));
    }

    #[test]
    fn station_move_updates_the_port() {
        let t0 = Instant::now();
        let mut table = MacTable::new(DEFAULT_AGING, 16);
        table.learn(None, A, PortId(1), t0);
        assert_eq!(table.learn(None, A, PortId(2), t0), Learned::Moved { from: PortId(1) });
        assert_eq!(table.lookup(None, A, t0), Some(PortId(2)));
    }

    #[test]
    fn an_aged_entry_relearned_elsewhere_is_new_not_a_move() {
        let t0 = Instant::now();
        let mut table = MacTable::new(Duration::from_secs(10), 16);
        table.learn(None, A, PortId(1), t0);
        assert_eq!(table.learn(None, A, PortId(2), t0 + Duration::from_secs(11)), Learned::New);
    }

    #[test]
    fn a_station_behind_a_remote_is_found_there_and_follows_it() {
        let t0 = Instant::now();
        let mut table = MacTable::new(Duration::from_secs(10), 16);
        table.learn_behind(None, A, PortId(1), Some(RemoteId(2)), t0);
        assert_eq!(table.remote_of(None, A, t0), Some(RemoteId(2)));
        assert_eq!(table.learn_behind(None, A, PortId(1), Some(RemoteId(3)), t0), Learned::Refreshed);
        assert_eq!(table.remote_of(None, A, t0), Some(RemoteId(3)));
        assert_eq!(table.stations(t0).next().map(|s| s.remote), Some(Some(RemoteId(3))));
        assert_eq!(table.remote_of(None, A, t0 + Duration::from_secs(10)), None, "aged like any entry");
        table.learn(None, B, PortId(2), t0);
        assert_eq!(table.remote_of(None, B, t0), None);
    }

    #[test]
    fn forgetting_a_port_drops_only_its_stations() {
        let t0 = Instant::now();
        let mut table = MacTable::new(DEFAULT_AGING, 16);
        table.learn(None, A, PortId(1), t0);
        table.learn(None, B, PortId(2), t0);
        table.forget_port(PortId(1));
        assert_eq!(table.lookup(None, A, t0), None);
        assert_eq!(table.lookup(None, B, t0), Some(PortId(2)));
    }

    #[test]
    fn a_full_table_refuses_new_stations_but_reclaims_aged_ones() {
        let t0 = Instant::now();
        let mut table = MacTable::new(Duration::from_secs(10), 1);
        table.learn(None, A, PortId(1), t0);
        assert_eq!(table.learn(None, B, PortId(2), t0), Learned::TableFull);
        assert_eq!(table.lookup(None, B, t0), None);
        assert_eq!(table.learn(None, B, PortId(2), t0 + Duration::from_secs(10)), Learned::New);
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn a_full_table_sweeps_at_most_once_a_second() {
        let t0 = Instant::now();
        let mut table = MacTable::new(Duration::from_millis(1500), 1);
        table.learn(None, A, PortId(1), t0);
        assert_eq!(table.learn(None, B, PortId(2), t0 + Duration::from_millis(1000)), Learned::TableFull);
        let after_aging = t0 + Duration::from_millis(1600);
        assert_eq!(table.learn(None, B, PortId(2), after_aging), Learned::TableFull, "swept 0.6 s ago");
        assert_eq!(table.learn(None, B, PortId(2), t0 + Duration::from_millis(2000)), Learned::New);
    }
}
