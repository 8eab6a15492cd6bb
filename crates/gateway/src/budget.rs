//! Per-guest budgets: how many flows of each kind one guest may hold, how many of its
//! TCP connections may still be in their handshake, and how many flows all the guests
//! of one switch port may hold together. The [`Ledger`] charges each flow to the guest
//! that opened it and gives the charge back when the flow ends, so one guest at its
//! limit is refused while the others are not even slowed down.
//!
//! Nothing here knows what a flow carries, how a refusal is answered (RST, ICMP,
//! SERVFAIL: the protocol files decide), or what a port is beyond its number.

use foldhash::HashMap;

use crate::guest::Guest;

/// What a flow is, for its guest's budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowKind {
    /// A TCP connection.
    Tcp,
    /// A UDP flow.
    Udp,
    /// Pings with one identifier.
    Icmp,
    /// A DNS query waiting for an upstream.
    Dns,
}

impl FlowKind {
    /// Every kind, in counter order.
    pub const ALL: [FlowKind; 4] = [FlowKind::Tcp, FlowKind::Udp, FlowKind::Icmp, FlowKind::Dns];

    /// Lower-case name, as in tables and metrics.
    pub fn name(self) -> &'static str {
        match self {
            FlowKind::Tcp => "tcp",
            FlowKind::Udp => "udp",
            FlowKind::Icmp => "icmp",
            FlowKind::Dns => "dns",
        }
    }
}

/// The limits of one guest, and of one port's guests together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budgets {
    /// Most TCP connections one guest holds (`guest-max-tcp=`).
    pub tcp: usize,
    /// Most UDP flows one guest holds (`guest-max-udp=`).
    pub udp: usize,
    /// Most ping flows one guest holds (`guest-max-icmp=`).
    pub icmp: usize,
    /// Most DNS queries of one guest in flight (`guest-max-dns=`).
    pub dns: usize,
    /// Most TCP connections of one guest still in their handshake
    /// (`guest-max-half-open=`).
    pub half_open: usize,
    /// Most flows of every kind that all the guests of one port hold together
    /// (`port-max-flows=`).
    pub port_flows: usize,
}

impl Budgets {
    /// The limit of `kind` for one guest.
    pub fn of(&self, kind: FlowKind) -> usize {
        match kind {
            FlowKind::Tcp => self.tcp,
            FlowKind::Udp => self.udp,
            FlowKind::Icmp => self.icmp,
            FlowKind::Dns => self.dns,
        }
    }
}

/// Why a guest's new flow was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The guest holds as many flows of this kind as it may.
    OverGuestBudget(FlowKind),
    /// The guest has as many TCP handshakes under way as it may.
    TooManyHandshakes,
    /// The guests of its port together hold as many flows as they may.
    OverPortBudget,
}

/// What one guest holds now, and how often it was refused while it held anything.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GuestUsage {
    /// Flows held, by [`FlowKind`] in [`FlowKind::ALL`] order.
    pub held: [usize; 4],
    /// TCP connections still in their handshake.
    pub half_open: usize,
    /// New flows refused, by [`FlowKind`].
    pub refused: [u64; 4],
}

impl GuestUsage {
    fn is_empty(&self) -> bool {
        self.held.iter().all(|held| *held == 0)
    }
}

/// One flow's charge: whose it is, of what kind, and whether it is a handshake still.
#[derive(Debug, Clone, Copy)]
struct Charge {
    guest: Guest,
    kind: FlowKind,
    half_open: bool,
}

/// Who holds which flow, and how much each guest and port holds. Flows are found by
/// their slot index, which the caller hands out.
#[derive(Debug)]
pub(crate) struct Ledger {
    budgets: Budgets,
    guests: HashMap<Guest, GuestUsage>,
    ports: HashMap<u32, usize>,
    charges: Vec<Option<Charge>>,
}

impl Ledger {
    pub fn new(budgets: Budgets) -> Self {
        Self { budgets, guests: HashMap::default(), ports: HashMap::default(), charges: Vec::new() }
    }

    /// Whether `guest` may open one more flow of `kind`; a refusal is counted against it.
    pub fn admit(&mut self, guest: Guest, kind: FlowKind) -> Result<(), Refusal> {
        let usage = self.guests.get(&guest).copied().unwrap_or_default();
        let port_held = self.ports.get(&guest.port).copied().unwrap_or(0);
        let refusal = if usage.held[kind as usize] >= self.budgets.of(kind) {
            Some(Refusal::OverGuestBudget(kind))
        } else if kind == FlowKind::Tcp && usage.half_open >= self.budgets.half_open {
            Some(Refusal::TooManyHandshakes)
        } else if port_held >= self.budgets.port_flows {
            Some(Refusal::OverPortBudget)
        } else {
            None
        };
        match refusal {
            None => Ok(()),
            Some(refusal) => {
                if let Some(usage) = self.guests.get_mut(&guest) {
                    usage.refused[kind as usize] += 1;
                }
                Err(refusal)
            }
        }
    }

    /// Charges the flow in slot `index` to `guest`; a TCP connection starts half-open.
    pub fn charge(&mut self, index: usize, guest: Guest, kind: FlowKind) {
        if self.charges.len() <= index {
            self.charges.resize(index + 1, None);
        }
        let half_open = kind == FlowKind::Tcp;
        let usage = self.guests.entry(guest).or_default();
        usage.held[kind as usize] += 1;
        usage.half_open += usize::from(half_open);
        *self.ports.entry(guest.port).or_default() += 1;
        self.charges[index] = Some(Charge { guest, kind, half_open });
    }

    /// The TCP connection in slot `index` finished its handshake.
    pub fn handshake_done(&mut self, index: usize) {
        let Some(Some(charge)) = self.charges.get_mut(index) else {
            return;
        };
        if std::mem::take(&mut charge.half_open) {
            if let Some(usage) = self.guests.get_mut(&charge.guest) {
                usage.half_open -= 1;
            }
        }
    }

    /// The flow in slot `index` ended: its guest and port get its charge back.
    pub fn discharge(&mut self, index: usize) {
        let Some(charge) = self.charges.get_mut(index).and_then(Option::take) else {
            return;
        };
        if let Some(usage) = self.guests.get_mut(&charge.guest) {
            usage.held[charge.kind as usize] -= 1;
            usage.half_open -= usize::from(charge.half_open);
            if usage.is_empty() {
                self.guests.remove(&charge.guest);
            }
        }
        if let Some(held) = self.ports.get_mut(&charge.guest.port) {
            *held -= 1;
            if *held == 0 {
                self.ports.remove(&charge.guest.port);
            }
        }
    }

    /// Whether any guest holds a flow.
    pub fn holds_any(&self) -> bool {
        !self.ports.is_empty()
    }

    /// The ports whose guests hold flows.
    pub fn ports(&self) -> impl Iterator<Item = u32> + '_ {
        self.ports.keys().copied()
    }

    /// The slots and kinds of the flows held by the guests of the ports `picked` chooses.
    pub fn flows_of_ports<'a>(
        &'a self,
        picked: impl Fn(u32) -> bool + 'a,
    ) -> impl Iterator<Item = (usize, FlowKind)> + 'a {
        self.charges.iter().enumerate().filter_map(move |(index, charge)| {
            charge.filter(|charge| picked(charge.guest.port)).map(|charge| (index, charge.kind))
        })
    }

    /// The limits in force.
    pub fn budgets(&self) -> Budgets {
        self.budgets
    }

    /// Every guest that holds a flow, with what it holds.
    pub fn guests(&self) -> impl Iterator<Item = (Guest, &GuestUsage)> {
        self.guests.iter().map(|(guest, usage)| (*guest, usage))
    }
}

#[cfg(test)]
mod tests {
    use vnet_wire::MacAddress;

    use super::*;

    const BUDGETS: Budgets = Budgets { tcp: 3, udp: 2, icmp: 1, dns: 1, half_open: 2, port_flows: 4 };

    fn guest(port: u32, last: u8) -> Guest {
        Guest { port, mac: MacAddress([0x52, 0x54, 0, 0, 0, last]) }
    }

    #[test]
    fn a_guest_at_its_limit_is_refused_and_another_guest_is_not() {
        let mut ledger = Ledger::new(BUDGETS);
        let (greedy, other) = (guest(1, 1), guest(2, 2));
        for index in 0..2 {
            ledger.admit(greedy, FlowKind::Udp).unwrap();
            ledger.charge(index, greedy, FlowKind::Udp);
        }
        assert_eq!(ledger.admit(greedy, FlowKind::Udp), Err(Refusal::OverGuestBudget(FlowKind::Udp)));
        assert_eq!(ledger.admit(other, FlowKind::Udp), Ok(()));
        assert_eq!(ledger.admit(greedy, FlowKind::Icmp), Ok(()), "each kind has its own limit");
        let usage = ledger.guests().find(|(g, _)| *g == greedy).unwrap().1;
        assert_eq!((usage.held[FlowKind::Udp as usize], usage.refused[FlowKind::Udp as usize]), (2, 1));
        ledger.discharge(0);
        assert_eq!(ledger.admit(greedy, FlowKind::Udp), Ok(()), "an ended flow gives its charge back");
        ledger.discharge(1);
        assert_eq!(ledger.guests().count(), 0, "a guest that holds nothing costs nothing");
    }

    #[test]
    fn handshakes_are_limited_until_they_finish() {
        let mut ledger = Ledger::new(BUDGETS);
        let g = guest(1, 1);
        ledger.charge(0, g, FlowKind::Tcp);
        ledger.charge(1, g, FlowKind::Tcp);
        assert_eq!(ledger.admit(g, FlowKind::Tcp), Err(Refusal::TooManyHandshakes));
        ledger.handshake_done(0);
        ledger.handshake_done(0);
        assert_eq!(ledger.admit(g, FlowKind::Tcp), Ok(()), "a finished handshake counts once");
        ledger.discharge(1);
        ledger.discharge(0);
        assert_eq!(ledger.guests().count(), 0);
    }

    #[test]
    fn the_guests_of_one_port_share_its_limit_and_a_made_up_mac_gains_nothing() {
        let mut ledger = Ledger::new(BUDGETS);
        for (index, last) in (0..4).zip(10..) {
            let made_up = guest(1, last);
            ledger.admit(made_up, FlowKind::Icmp).unwrap();
            ledger.charge(index, made_up, FlowKind::Icmp);
        }
        assert_eq!(ledger.admit(guest(1, 99), FlowKind::Icmp), Err(Refusal::OverPortBudget));
        assert_eq!(ledger.admit(guest(2, 10), FlowKind::Icmp), Ok(()), "the same MAC on another port");
        ledger.discharge(4);
        ledger.discharge(3);
        assert_eq!(ledger.admit(guest(1, 99), FlowKind::Icmp), Ok(()));
    }
}
