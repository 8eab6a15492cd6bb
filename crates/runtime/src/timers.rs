//! When each endpoint wants to run its timer work next, kept in a heap so that a wake-up
//! costs what expires, not the number of endpoints.
//!
//! Entries are never removed from the middle. A deadline that moves earlier is added
//! again, and the old entry is recognised as stale (it no longer matches the armed
//! deadline) and skipped when it reaches the top. A deadline that moves later, or goes
//! away, adds nothing: the armed entry comes out as before, and the caller finds that
//! nothing is due yet. So the heap holds about one entry per endpoint however often
//! deadlines move. Nothing here knows what an endpoint is.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

/// A deadline heap over small integer keys.
#[derive(Debug, Default)]
pub(crate) struct Timers {
    heap: BinaryHeap<Reverse<(Instant, usize)>>,
}

impl Timers {
    /// Makes sure `key` comes out no later than `deadline`, where `armed` is what is
    /// armed for it (updated in place). Only an earlier deadline costs a heap entry.
    pub fn arm(&mut self, key: usize, deadline: Option<Instant>, armed: &mut Option<Instant>) {
        let Some(deadline) = deadline else {
            return;
        };
        if armed.is_none_or(|armed| deadline < armed) {
            *armed = Some(deadline);
            self.heap.push(Reverse((deadline, key)));
        }
    }

    /// The earliest deadline still armed, dropping stale entries on the way;
    /// `armed_of(key)` says what is armed for a key now.
    pub fn next(&mut self, armed_of: impl Fn(usize) -> Option<Instant>) -> Option<Instant> {
        while let Some(Reverse((deadline, key))) = self.heap.peek().copied() {
            if armed_of(key) == Some(deadline) {
                return Some(deadline);
            }
            self.heap.pop();
        }
        None
    }

    /// Removes and returns a key whose armed deadline is at or before `now`.
    pub fn pop_due(&mut self, now: Instant, armed_of: impl Fn(usize) -> Option<Instant>) -> Option<usize> {
        let deadline = self.next(&armed_of)?;
        if deadline > now {
            return None;
        }
        self.heap.pop().map(|Reverse((_, key))| key)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn due_keys_come_out_in_deadline_order_and_moved_deadlines_are_skipped() {
        let start = Instant::now();
        let mut timers = Timers::default();
        let mut armed = [None; 3];
        timers.arm(0, Some(start + Duration::from_secs(3)), &mut armed[0]);
        timers.arm(1, Some(start + Duration::from_secs(1)), &mut armed[1]);
        timers.arm(2, Some(start + Duration::from_secs(2)), &mut armed[2]);
        // Key 2 moves earlier: its first entry is stale. Key 1 moving later adds nothing.
        timers.arm(2, Some(start + Duration::from_millis(500)), &mut armed[2]);
        timers.arm(1, Some(start + Duration::from_secs(5)), &mut armed[1]);
        assert_eq!(timers.next(|key| armed[key]), Some(start + Duration::from_millis(500)));
        let now = start + Duration::from_secs(4);
        let mut due = Vec::new();
        while let Some(key) = timers.pop_due(now, |key| armed[key]) {
            armed[key] = None;
            due.push(key);
        }
        assert_eq!(due, vec![2, 1, 0], "key 1 comes out at its old time, for its owner to look");
        assert_eq!(timers.next(|key| armed[key]), None);
    }

    #[test]
    fn a_key_whose_armed_time_was_taken_never_comes_out_again() {
        let start = Instant::now();
        let mut timers = Timers::default();
        let mut armed = None;
        timers.arm(7, Some(start), &mut armed);
        armed = None;
        assert_eq!(timers.pop_due(start + Duration::from_secs(1), |_| armed), None);
    }
}
