//! Flow ids and the tables they index. A [`FlowId`] is a slot index and the generation
//! of that slot's use: [`FlowIds`] hands out the lowest free slots again once their flows
//! are released, and a [`FlowMap`] finds a flow's value by index, never by hashing,
//! while the generation keeps a late event of a closed flow from reaching the flow that
//! took its slot. Each flow a guest opens is charged to that guest's budget
//! (`budget.rs`) until it is released. Nothing here knows what a flow carries.

use crate::budget::{Budgets, FlowKind, Ledger, Refusal};
use crate::guest::Guest;

/// Identifies one host socket the gateway asked for: a slot (the low 32 bits) and the
/// generation of its use (the high 32 bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowId(pub u64);

impl FlowId {
    fn new(index: u32, generation: u32) -> Self {
        FlowId(u64::from(generation) << 32 | u64::from(index))
    }

    /// The slot: small, dense, and shared with no live flow.
    pub fn index(self) -> usize {
        (self.0 & u64::from(u32::MAX)) as usize
    }

    fn generation(self) -> u32 {
        (self.0 >> 32) as u32
    }
}

/// Hands out flow ids: a free slot in a new generation, so an id is never handed out
/// twice while slots are reused. Ids that guests open are charged to their budgets.
#[derive(Debug)]
pub(crate) struct FlowIds {
    /// The generation each slot is in now.
    generations: Vec<u32>,
    free: Vec<u32>,
    ledger: Ledger,
}

impl FlowIds {
    /// No ids handed out yet; guests' flows are held to `budgets`.
    pub fn new(budgets: Budgets) -> Self {
        Self { generations: Vec::new(), free: Vec::new(), ledger: Ledger::new(budgets) }
    }

    /// A fresh id for a flow of `kind` that `guest` opens, if its budget allows one more.
    pub fn open(&mut self, guest: Guest, kind: FlowKind) -> Result<FlowId, Refusal> {
        self.ledger.admit(guest, kind)?;
        let id = self.next();
        self.ledger.charge(id.index(), guest, kind);
        Ok(id)
    }

    /// The TCP connection `id` finished its handshake: it no longer counts as half-open.
    pub fn handshake_done(&mut self, id: FlowId) {
        if self.is_current(id) {
            self.ledger.handshake_done(id.index());
        }
    }

    /// The budgets, and what each guest holds.
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// The flows held by the guests of the switch ports that `gone` picks, with their
    /// kinds, found in one pass.
    pub fn flows_of_ports(&self, gone: impl Fn(u32) -> bool) -> Vec<(FlowId, FlowKind)> {
        self.ledger
            .flows_of_ports(gone)
            .map(|(index, kind)| (FlowId::new(index as u32, self.generations[index]), kind))
            .collect()
    }

    /// A fresh id for a flow no guest opened (a host client of a forward), charged to
    /// no budget.
    pub fn next(&mut self) -> FlowId {
        match self.free.pop() {
            Some(index) => FlowId::new(index, self.generations[index as usize]),
            None => {
                let index = self.generations.len() as u32;
                self.generations.push(0);
                FlowId::new(index, 0)
            }
        }
    }

    /// `id`'s flow is gone: its slot may serve another. Releasing an id twice, or one
    /// whose slot moved on, does nothing.
    pub fn release(&mut self, id: FlowId) {
        if self.is_current(id) {
            self.generations[id.index()] = id.generation().wrapping_add(1);
            self.free.push(id.index() as u32);
            self.ledger.discharge(id.index());
        }
    }

    /// Whether `id` is the live use of its slot.
    fn is_current(&self, id: FlowId) -> bool {
        self.generations.get(id.index()) == Some(&id.generation())
    }

    /// Slots ever handed out: what the flow tables may grow to.
    #[cfg(test)]
    pub fn slots(&self) -> usize {
        self.generations.len()
    }
}

/// Values by flow id, one slot per id index.
#[derive(Debug)]
pub struct FlowMap<T> {
    slots: Vec<Option<(FlowId, T)>>,
    len: usize,
}

impl<T> Default for FlowMap<T> {
    fn default() -> Self {
        Self { slots: Vec::new(), len: 0 }
    }
}

impl<T> FlowMap<T> {
    /// Puts `value` at `id`, in place of what the slot held.
    pub fn insert(&mut self, id: FlowId, value: T) {
        if self.slots.len() <= id.index() {
            self.slots.resize_with(id.index() + 1, || None);
        }
        if self.slots[id.index()].replace((id, value)).is_none() {
            self.len += 1;
        }
    }

    /// The value of `id`, if it is there (and not a successor's).
    pub fn get(&self, id: FlowId) -> Option<&T> {
        match self.slots.get(id.index())? {
            Some((held, value)) if *held == id => Some(value),
            _ => None,
        }
    }

    /// The value of `id`, to change.
    pub fn get_mut(&mut self, id: FlowId) -> Option<&mut T> {
        match self.slots.get_mut(id.index())? {
            Some((held, value)) if *held == id => Some(value),
            _ => None,
        }
    }

    /// Whether `id` has a value.
    pub fn contains(&self, id: FlowId) -> bool {
        self.get(id).is_some()
    }

    /// Takes `id`'s value out.
    pub fn remove(&mut self, id: FlowId) -> Option<T> {
        let slot = self.slots.get_mut(id.index())?;
        if slot.as_ref().is_some_and(|(held, _)| *held == id) {
            self.len -= 1;
            return slot.take().map(|(_, value)| value);
        }
        None
    }

    /// How many values there are.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The values, in no particular order.
    pub fn values(&self) -> impl Iterator<Item = &T> {
        self.slots.iter().flatten().map(|(_, value)| value)
    }

    /// The ids and values, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (FlowId, &T)> {
        self.slots.iter().flatten().map(|(id, value)| (*id, value))
    }

    /// Drops every value.
    pub fn clear(&mut self) {
        self.slots.clear();
        self.len = 0;
    }
}

#[cfg(test)]
mod tests {
    use vnet_wire::MacAddress;

    use super::{FlowIds, FlowMap};
    use crate::budget::{Budgets, FlowKind, Refusal};
    use crate::guest::Guest;

    const BUDGETS: Budgets = Budgets { tcp: 1, udp: 1, icmp: 1, dns: 1, half_open: 1, port_flows: 8 };

    #[test]
    fn slots_are_reused_in_a_new_generation_and_a_stale_id_finds_nothing() {
        let mut ids = FlowIds::new(BUDGETS);
        let mut map = FlowMap::default();
        let first = ids.next();
        map.insert(first, "first");
        assert_eq!(map.get(first), Some(&"first"));
        assert_eq!(map.remove(first), Some("first"));
        ids.release(first);
        ids.release(first);
        let second = ids.next();
        assert_eq!(second.index(), first.index(), "the slot is used again");
        assert_ne!(second, first);
        map.insert(second, "second");
        assert_eq!(map.get(first), None, "a closed flow's id does not reach its successor");
        assert_eq!(map.remove(first), None);
        assert_eq!((map.get(second), map.len()), (Some(&"second"), 1));
        assert_ne!(ids.next(), second, "a released id was pushed once, not twice");
        assert_eq!(ids.slots(), 2);
    }

    #[test]
    fn a_released_id_gives_its_guest_the_charge_back_once() {
        let mut ids = FlowIds::new(BUDGETS);
        let guest = Guest { port: 1, mac: MacAddress([0x52, 0x54, 0, 0, 0, 1]) };
        let first = ids.open(guest, FlowKind::Udp).unwrap();
        assert_eq!(ids.open(guest, FlowKind::Udp), Err(Refusal::OverGuestBudget(FlowKind::Udp)));
        ids.release(first);
        let second = ids.open(guest, FlowKind::Udp).unwrap();
        ids.release(first);
        assert_eq!(
            ids.open(guest, FlowKind::Udp),
            Err(Refusal::OverGuestBudget(FlowKind::Udp)),
            "a stale release does not discharge its slot's new flow"
        );
        ids.release(second);
        assert_eq!(ids.ledger().guests().count(), 0);
    }
}
