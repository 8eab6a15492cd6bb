//! The addresses the gateway's DNS handed each guest, by the name asked, for the egress
//! policy's name rules (`to:host:NAME`): a guest may reach what it was told a name
//! stands for, for as long as the answer lives (at least a minute, at most an hour).
//!
//! Answers are read from the upstreams' replies as they pass to the guest: the question
//! and the A and AAAA records of the answer section, whatever names the records carry
//! (a CNAME chain's addresses belong to the name asked). Memory is bounded per guest and
//! in all. This file knows DNS replies, not the policy's rules.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::names::read_name;

/// An answer is kept at least this long, so a connection made right after a short TTL
/// ran out still matches.
const MIN_LIFE: Duration = Duration::from_secs(60);
/// And at most this long.
const MAX_LIFE: Duration = Duration::from_secs(3600);
/// Most addresses kept per guest, and in all (each with a name of up to 253 bytes).
const MAX_PER_GUEST: usize = 256;
const MAX_ANSWERS: usize = 16384;
const HEADER_LEN: usize = 12;
const TYPE_A: u16 = 1;
const TYPE_AAAA: u16 = 28;

/// One address a guest was given for a name, until when.
#[derive(Debug, Clone)]
struct Answer {
    name: String,
    address: IpAddr,
    until: Instant,
}

/// What each guest (by its address) was told.
#[derive(Debug, Default)]
pub struct Resolved {
    by_guest: HashMap<IpAddr, Vec<Answer>>,
    /// Answers kept in all guests' lists.
    kept: usize,
}

impl Resolved {
    /// Records the addresses of `reply`, a DNS response on its way to `guest`.
    pub fn record(&mut self, guest: IpAddr, reply: &[u8], now: Instant) {
        let Some((name, answers)) = read_reply(reply) else {
            return;
        };
        if answers.is_empty() {
            return;
        }
        if self.kept + answers.len() > MAX_ANSWERS {
            self.forget_expired(now);
        }
        let kept = self.by_guest.entry(guest).or_default();
        let before = kept.len();
        kept.retain(|answer| {
            answer.until > now && !(answer.name == name && answers.iter().any(|(a, _)| *a == answer.address))
        });
        for (address, ttl) in answers {
            if kept.len() >= MAX_PER_GUEST {
                kept.remove(0);
            } else if self.kept + kept.len() - before >= MAX_ANSWERS {
                break;
            }
            let life = Duration::from_secs(u64::from(ttl)).clamp(MIN_LIFE, MAX_LIFE);
            kept.push(Answer { name: name.clone(), address, until: now + life });
        }
        self.kept = self.kept + kept.len() - before;
        if kept.is_empty() {
            self.by_guest.remove(&guest);
        }
    }

    /// Drops the answers that have run out, and the guests left with none.
    fn forget_expired(&mut self, now: Instant) {
        self.by_guest.retain(|_, kept| {
            kept.retain(|answer| answer.until > now);
            !kept.is_empty()
        });
        self.kept = self.by_guest.values().map(Vec::len).sum();
    }

    /// Whether `guest` was told, and may still believe, that `name` (or a name under it)
    /// stands for `address`.
    pub fn was_told(&self, guest: IpAddr, name: &str, address: IpAddr, now: Instant) -> bool {
        self.by_guest.get(&guest).is_some_and(|kept| {
            kept.iter().any(|answer| {
                answer.address == address
                    && answer.until > now
                    && (answer.name == name
                        || answer.name.strip_suffix(name).is_some_and(|head| head.ends_with('.')))
            })
        })
    }
}

/// The name asked in a DNS response, lower case without the final dot, and the A and
/// AAAA records of its answer section with their TTLs.
fn read_reply(reply: &[u8]) -> Option<(String, Vec<(IpAddr, u32)>)> {
    let header = reply.get(..HEADER_LEN)?;
    let is_response = header[2] & 0x80 != 0;
    let questions = u16::from_be_bytes([header[4], header[5]]);
    let answers = u16::from_be_bytes([header[6], header[7]]);
    if !is_response || questions != 1 || header[3] & 0x0f != 0 {
        return None;
    }
    let (name, mut at) = read_name(reply, HEADER_LEN)?;
    at += 4;
    let mut found = Vec::new();
    for _ in 0..answers.min(64) {
        at = skip_name(reply, at)?;
        let fields = reply.get(at..at + 10)?;
        let kind = u16::from_be_bytes([fields[0], fields[1]]);
        let ttl = u32::from_be_bytes([fields[4], fields[5], fields[6], fields[7]]);
        let len = usize::from(u16::from_be_bytes([fields[8], fields[9]]));
        let data = reply.get(at + 10..at + 10 + len)?;
        match (kind, len) {
            (TYPE_A, 4) => found.push((IpAddr::from(<[u8; 4]>::try_from(data).ok()?), ttl)),
            (TYPE_AAAA, 16) => found.push((IpAddr::from(<[u8; 16]>::try_from(data).ok()?), ttl)),
            _ => {}
        }
        at += 10 + len;
    }
    Some((name, found))
}

/// Where the (possibly compressed) name at `at` ends.
fn skip_name(message: &[u8], mut at: usize) -> Option<usize> {
    for _ in 0..128 {
        let len = *message.get(at)?;
        match len {
            0 => return Some(at + 1),
            len if len & 0xc0 == 0xc0 => return Some(at + 2).filter(|end| *end <= message.len()),
            len if len <= 63 => at += 1 + usize::from(len),
            _ => return None,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A response to `name` with a CNAME to `alias` and then the A records `addresses`
    /// (each named by a pointer to the alias), TTL `ttl`.
    fn reply(name: &str, addresses: &[[u8; 4]], ttl: u32) -> Vec<u8> {
        let mut message = vec![0x12, 0x34, 0x81, 0x80, 0, 1, 0, 1 + addresses.len() as u8, 0, 0, 0, 0];
        for label in name.split('.') {
            message.push(label.len() as u8);
            message.extend_from_slice(label.as_bytes());
        }
        message.extend_from_slice(&[0, 0, 1, 0, 1]);
        let alias_at = message.len() + 12;
        message.extend_from_slice(&[0xc0, 12, 0, 5, 0, 1]);
        message.extend_from_slice(&ttl.to_be_bytes());
        message.extend_from_slice(&[0, 6, 3, b'c', b'd', b'n', 0xc0, 12]);
        for address in addresses {
            message.extend_from_slice(&[0xc0, alias_at as u8, 0, 1, 0, 1]);
            message.extend_from_slice(&ttl.to_be_bytes());
            message.extend_from_slice(&[0, 4]);
            message.extend_from_slice(address);
        }
        message
    }

    #[test]
    fn a_guest_may_reach_what_it_was_told_a_name_stands_for_while_the_answer_lives() {
        let now = Instant::now();
        let guest: IpAddr = "10.0.2.15".parse().unwrap();
        let mut resolved = Resolved::default();
        resolved.record(guest, &reply("www.Example.org", &[[192, 0, 2, 7], [192, 0, 2, 8]], 30), now);
        let told = |name: &str, address: &str, at: Instant| {
            resolved.was_told(guest, name, address.parse().unwrap(), at)
        };
        assert!(told("www.example.org", "192.0.2.8", now), "through the CNAME");
        assert!(told("example.org", "192.0.2.7", now), "a name under the rule's");
        assert!(!told("ample.org", "192.0.2.7", now), "not a mere suffix");
        assert!(!told("www.example.org", "192.0.2.9", now));
        assert!(!resolved.was_told(
            "10.0.2.16".parse().unwrap(),
            "www.example.org",
            "192.0.2.7".parse().unwrap(),
            now
        ));
        assert!(told("www.example.org", "192.0.2.7", now + Duration::from_secs(59)), "a minute at least");
        assert!(!told("www.example.org", "192.0.2.7", now + MIN_LIFE), "then it is gone");
    }

    #[test]
    fn answers_kept_in_all_are_bounded_whatever_addresses_guests_send_from() {
        let now = Instant::now();
        let mut resolved = Resolved::default();
        for guest in 0..u32::try_from(MAX_ANSWERS / 4 + 100).unwrap() {
            let addresses: Vec<[u8; 4]> = (0..8).map(|n| [192, 0, 2, n]).collect();
            resolved.record(IpAddr::from(guest.to_be_bytes()), &reply("example.org", &addresses, 300), now);
        }
        assert_eq!(resolved.kept, MAX_ANSWERS);
        assert_eq!(resolved.by_guest.values().map(Vec::len).sum::<usize>(), MAX_ANSWERS);
        let later = now + MAX_LIFE;
        resolved.record("10.0.2.15".parse().unwrap(), &reply("example.org", &[[192, 0, 2, 1]], 300), later);
        assert_eq!(resolved.kept, 1, "the expired ones made room");
    }

    #[test]
    fn queries_errors_and_truncated_replies_record_nothing() {
        let now = Instant::now();
        let guest: IpAddr = "10.0.2.15".parse().unwrap();
        let mut resolved = Resolved::default();
        let good = reply("example.org", &[[192, 0, 2, 7]], 300);
        let mut query = good.clone();
        query[2] = 0x01;
        let mut failed = good.clone();
        failed[3] = 0x83;
        for bad in [query, failed, good[..good.len() - 2].to_vec(), vec![0; 5]] {
            resolved.record(guest, &bad, now);
        }
        assert!(resolved.by_guest.is_empty());
    }
}
