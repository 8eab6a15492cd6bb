//! Counters of events outside any port: connections accepted, connections ended for bad
//! input, datagrams no port could take. Endpoints name their events; the runtime only
//! adds them up, so it needs to know none of them.

/// Event counts by name, in the order each name was first counted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventCounters {
    counts: Vec<(&'static str, u64)>,
}

impl EventCounters {
    /// Adds one to the event `name`.
    pub fn add(&mut self, name: &'static str) {
        self.add_many(name, 1);
    }

    /// Adds `n` to the event `name`.
    pub fn add_many(&mut self, name: &'static str, n: u64) {
        match self.counts.iter_mut().find(|(known, _)| *known == name) {
            Some((_, count)) => *count += n,
            None => self.counts.push((name, n)),
        }
    }

    /// How often `name` happened.
    pub fn get(&self, name: &str) -> u64 {
        self.counts.iter().find(|(known, _)| *known == name).map_or(0, |(_, count)| *count)
    }

    /// Every event counted at least once, with its count.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        self.counts.iter().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_counted_by_name() {
        let mut events = EventCounters::default();
        events.add("accepted");
        events.add("bad_frame_length");
        events.add("accepted");
        events.add_many("bad_frame_length", 0);
        assert_eq!(events.get("accepted"), 2);
        assert_eq!(events.get("bad_frame_length"), 1);
        assert_eq!(events.get("never"), 0);
        assert_eq!(events.iter().collect::<Vec<_>>(), vec![("accepted", 2), ("bad_frame_length", 1)]);
    }
}
