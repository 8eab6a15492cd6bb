//! When flows want attention next, in a heap, so that a timer wake-up costs what
//! expires rather than the number of flows.
//!
//! A flow table schedules a flow when it gains a deadline and pops it when that time
//! comes; it then looks at the flow itself to see whether anything is really due (an idle
//! flow may have been used since) and schedules it again if not. Entries of flows that
//! are gone are dropped as they come out. Nothing here knows what a flow is.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

/// Deadlines of flows keyed by `K`, earliest first.
#[derive(Debug)]
pub(crate) struct Deadlines<K> {
    heap: BinaryHeap<Reverse<(Instant, K)>>,
}

impl<K: Ord + Copy> Default for Deadlines<K> {
    fn default() -> Self {
        Self { heap: BinaryHeap::new() }
    }
}

impl<K: Ord + Copy> Deadlines<K> {
    /// Asks for `key` to come out of [`Deadlines::pop_due`] at `at`.
    pub fn schedule(&mut self, at: Instant, key: K) {
        self.heap.push(Reverse((at, key)));
    }

    /// The earliest scheduled time. It may belong to a flow that has gone or moved on,
    /// which costs one early wake-up unless [`Deadlines::drop_stale`] took it out.
    pub fn next(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _))| *at)
    }

    /// Takes entries off the front that `live` says no longer stand (their flow is gone
    /// or wants another time), so that the earliest time is one a flow wants.
    pub fn drop_stale(&mut self, live: impl Fn(Instant, K) -> bool) {
        while let Some(Reverse((at, key))) = self.heap.peek() {
            if live(*at, *key) {
                return;
            }
            self.heap.pop();
        }
    }

    /// Removes and returns the next key whose flow has been idle for `timeout` by `now`,
    /// as `last_used` tells (None for a flow that is gone, whose key is dropped). A flow
    /// used since it was scheduled is scheduled again for when it will have been idle
    /// that long.
    pub fn pop_idle(
        &mut self,
        now: Instant,
        timeout: Duration,
        last_used: impl Fn(K) -> Option<Instant>,
    ) -> Option<K> {
        while let Some((_, key)) = self.pop_due(now) {
            let Some(last_used) = last_used(key) else {
                continue;
            };
            if last_used + timeout <= now {
                return Some(key);
            }
            self.schedule(last_used + timeout, key);
        }
        None
    }

    /// Removes and returns a key scheduled at or before `now`, with the time it was
    /// scheduled for.
    pub fn pop_due(&mut self, now: Instant) -> Option<(Instant, K)> {
        if self.next()? > now {
            return None;
        }
        self.heap.pop().map(|Reverse(entry)| entry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_come_out_when_due_earliest_first() {
        let start = Instant::now();
        let mut deadlines = Deadlines::default();
        deadlines.schedule(start + Duration::from_secs(3), 'c');
        deadlines.schedule(start + Duration::from_secs(1), 'a');
        deadlines.schedule(start + Duration::from_secs(2), 'b');
        assert_eq!(deadlines.next(), Some(start + Duration::from_secs(1)));
        assert_eq!(deadlines.pop_due(start), None);
        let now = start + Duration::from_secs(2);
        assert_eq!(deadlines.pop_due(now), Some((start + Duration::from_secs(1), 'a')));
        assert_eq!(deadlines.pop_due(now), Some((start + Duration::from_secs(2), 'b')));
        assert_eq!(deadlines.pop_due(now), None);
        assert_eq!(deadlines.next(), Some(start + Duration::from_secs(3)));
    }

    #[test]
    fn only_flows_idle_for_the_timeout_come_out_and_used_ones_wait_again() {
        let start = Instant::now();
        let timeout = Duration::from_secs(10);
        let mut deadlines = Deadlines::default();
        for key in [1, 2, 3] {
            deadlines.schedule(start + timeout, key);
        }
        // Flow 2 was used 5 s in; flow 3 is gone.
        let last_used = |key: u32| match key {
            1 => Some(start),
            2 => Some(start + Duration::from_secs(5)),
            _ => None,
        };
        let now = start + timeout;
        assert_eq!(deadlines.pop_idle(now, timeout, last_used), Some(1));
        assert_eq!(deadlines.pop_idle(now, timeout, last_used), None);
        assert_eq!(deadlines.next(), Some(start + Duration::from_secs(15)), "flow 2 waits again");
    }
}
