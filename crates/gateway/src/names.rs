//! Guests by name: what the gateway's DNS answers itself, ahead of the upstreams. The
//! names live under the network's domain (`domainname=`, [`DEFAULT_DOMAIN`] without
//! it): each guest's DHCP host name, `host.DOMAIN` (the gateway's address that leads to
//! the host) and static records (`dns-record=NAME=ADDR`). Their addresses answer PTR
//! queries too. A name under the domain that nobody holds is NXDOMAIN, said with
//! authority; every other name goes upstream.
//!
//! This file knows DNS messages and names. Which guest holds which name is the DHCP
//! server's to say, and which addresses a guest has is the gateway's.

use std::net::IpAddr;

/// The domain guests' names live under when `domainname=` is not given.
pub const DEFAULT_DOMAIN: &str = "vnet.internal";
/// The name under the domain that stands for the host: the gateway's address that
/// leads to it.
pub const HOST_LABEL: &str = "host";
/// How long resolvers may keep an answer: short, as leases come and go.
const TTL: u32 = 60;
const HEADER_LEN: usize = 12;
const TYPE_A: u16 = 1;
const TYPE_PTR: u16 = 12;
const TYPE_AAAA: u16 = 28;
const TYPE_ANY: u16 = 255;
const CLASS_IN: u16 = 1;
const RCODE_NXDOMAIN: u8 = 3;

/// The one question of a query, its name in lower case without the final dot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Question {
    /// The name asked for.
    pub name: String,
    /// The record type asked for.
    pub kind: u16,
    class: u16,
    /// Where the question ends in the query.
    end: usize,
}

/// Reads the question of a standard query with exactly one, uncompressed question.
pub fn question(query: &[u8]) -> Option<Question> {
    let header = query.get(..HEADER_LEN)?;
    let is_standard_query = header[2] & 0xf8 == 0;
    if !is_standard_query || u16::from_be_bytes([header[4], header[5]]) != 1 {
        return None;
    }
    let (name, at) = read_name(query, HEADER_LEN)?;
    let fields = query.get(at..at + 4)?;
    Some(Question {
        name,
        kind: u16::from_be_bytes([fields[0], fields[1]]),
        class: u16::from_be_bytes([fields[2], fields[3]]),
        end: at + 4,
    })
}

/// Reads the uncompressed name at `at` of a DNS message: in lower case, without the
/// final dot, and where it ends.
pub(crate) fn read_name(message: &[u8], mut at: usize) -> Option<(String, usize)> {
    let mut labels = Vec::new();
    loop {
        let len = usize::from(*message.get(at)?);
        at += 1;
        if len == 0 {
            return Some((labels.join("."), at));
        }
        if len > 63 {
            return None;
        }
        labels.push(std::str::from_utf8(message.get(at..at + len)?).ok()?.to_ascii_lowercase());
        at += len;
    }
}

/// What the gateway knows of a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Known {
    /// The name's addresses (perhaps none of the type asked for).
    Addresses(Vec<IpAddr>),
    /// The name an address (a PTR query) stands for.
    Pointer(String),
    /// Under the domain, and nobody's.
    NoSuchName,
}

/// Which local name `question` asks about: a name of the form `LABEL.DOMAIN`, or a
/// reverse name; None when it is for the upstreams.
pub enum Asked<'a> {
    /// `LABEL.DOMAIN`: a guest's, a static record's, or `host`.
    Name(&'a str),
    /// A name deeper under the domain, which nobody holds.
    Deeper,
    /// The reverse name of an address.
    Reverse(IpAddr),
}

/// What `question` asks of the gateway's names under `domain`.
pub fn asked<'a>(question: &'a Question, domain: &str) -> Option<Asked<'a>> {
    if question.class != CLASS_IN {
        return None;
    }
    if let Some(ip) = reverse_address(&question.name) {
        return Some(Asked::Reverse(ip));
    }
    let under = question.name.strip_suffix(domain)?.strip_suffix('.')?;
    if under.contains('.') {
        return Some(Asked::Deeper);
    }
    Some(Asked::Name(under))
}

/// The address a reverse name (`4.3.2.1.in-addr.arpa`, or the 32 nibbles of
/// `ip6.arpa`) stands for.
fn reverse_address(name: &str) -> Option<IpAddr> {
    if let Some(octets) = name.strip_suffix(".in-addr.arpa") {
        let mut parts: Vec<u8> = octets.split('.').map(|part| part.parse().ok()).collect::<Option<_>>()?;
        if parts.len() != 4 {
            return None;
        }
        parts.reverse();
        return Some(IpAddr::from([parts[0], parts[1], parts[2], parts[3]]));
    }
    let nibbles = name.strip_suffix(".ip6.arpa")?;
    let digits: Vec<u8> = nibbles
        .split('.')
        .map(|n| u8::from_str_radix(n, 16).ok().filter(|_| n.len() == 1))
        .collect::<Option<_>>()?;
    if digits.len() != 32 {
        return None;
    }
    let mut octets = [0u8; 16];
    for (i, pair) in digits.rchunks(2).enumerate() {
        octets[i] = pair[1] << 4 | pair[0];
    }
    Some(IpAddr::from(octets))
}

/// Whether `name` may be a guest's name: one DNS label of letters, digits and hyphens,
/// not starting or ending with a hyphen.
pub fn is_valid_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// The response to `query` (whose question is `question`) from what is `known`.
pub fn answer(query: &[u8], question: &Question, known: &Known) -> Vec<u8> {
    let mut response = query[..question.end].to_vec();
    response[2] = 0x84 | (query[2] & 0x01); // QR, AA; RD as asked
    response[3] = 0x80; // RA
    response[6..12].fill(0);
    let mut count = 0u16;
    let mut record = |response: &mut Vec<u8>, kind: u16, data: &[u8]| {
        response.extend_from_slice(&[0xc0, HEADER_LEN as u8]);
        response.extend_from_slice(&kind.to_be_bytes());
        response.extend_from_slice(&CLASS_IN.to_be_bytes());
        response.extend_from_slice(&TTL.to_be_bytes());
        response.extend_from_slice(&(data.len() as u16).to_be_bytes());
        response.extend_from_slice(data);
        count += 1;
    };
    let wants = |kind: u16| question.kind == kind || question.kind == TYPE_ANY;
    match known {
        Known::NoSuchName => response[3] |= RCODE_NXDOMAIN,
        Known::Addresses(addresses) => {
            for address in addresses {
                match address {
                    IpAddr::V4(v4) if wants(TYPE_A) => record(&mut response, TYPE_A, &v4.octets()),
                    IpAddr::V6(v6) if wants(TYPE_AAAA) => record(&mut response, TYPE_AAAA, &v6.octets()),
                    _ => {}
                }
            }
        }
        Known::Pointer(name) if wants(TYPE_PTR) => {
            let mut wire = Vec::new();
            for label in name.split('.') {
                wire.push(label.len() as u8);
                wire.extend_from_slice(label.as_bytes());
            }
            wire.push(0);
            record(&mut response, TYPE_PTR, &wire);
        }
        Known::Pointer(_) => {}
    }
    response[6..8].copy_from_slice(&count.to_be_bytes());
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &str, kind: u16) -> Vec<u8> {
        let mut q = vec![0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for label in name.split('.') {
            q.push(label.len() as u8);
            q.extend_from_slice(label.as_bytes());
        }
        q.push(0);
        q.extend_from_slice(&kind.to_be_bytes());
        q.extend_from_slice(&CLASS_IN.to_be_bytes());
        q
    }

    #[test]
    fn questions_under_the_domain_and_reverse_names_are_local_and_others_go_upstream() {
        let ask = |name: &str| {
            let question = question(&query(name, TYPE_A)).unwrap();
            match asked(&question, DEFAULT_DOMAIN) {
                Some(Asked::Name(label)) => format!("name {label}"),
                Some(Asked::Deeper) => "deeper".to_owned(),
                Some(Asked::Reverse(ip)) => format!("reverse {ip}"),
                None => "upstream".to_owned(),
            }
        };
        assert_eq!(ask("Alpha.VNET.internal"), "name alpha");
        assert_eq!(ask("a.b.vnet.internal"), "deeper");
        assert_eq!(ask("example.org"), "upstream");
        assert_eq!(ask("notvnet.internal"), "upstream");
        assert_eq!(ask("15.2.0.10.in-addr.arpa"), "reverse 10.0.2.15");
        let nibbles = "f.1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.c.e.f.ip6.arpa";
        assert_eq!(ask(nibbles), "reverse fec0::1f");
        assert_eq!(ask("1.2.3.in-addr.arpa"), "upstream");
    }

    #[test]
    fn answers_carry_the_records_of_the_type_asked_and_nxdomain_has_authority() {
        let addresses = Known::Addresses(vec!["10.0.2.15".parse().unwrap(), "fec0::15".parse().unwrap()]);
        let a = query("alpha.vnet.internal", TYPE_A);
        let response = answer(&a, &question(&a).unwrap(), &addresses);
        assert_eq!(&response[..2], &[0xab, 0xcd]);
        assert_eq!(response[2] & 0x84, 0x84, "a response with authority");
        assert_eq!(u16::from_be_bytes([response[6], response[7]]), 1);
        assert!(response.ends_with(&[0, 4, 10, 0, 2, 15]));
        let aaaa = query("alpha.vnet.internal", TYPE_AAAA);
        let response = answer(&aaaa, &question(&aaaa).unwrap(), &addresses);
        assert_eq!(u16::from_be_bytes([response[6], response[7]]), 1);
        assert_eq!(response[response.len() - 18..response.len() - 16], [0, 16]);
        let missing = answer(&a, &question(&a).unwrap(), &Known::NoSuchName);
        assert_eq!((missing[3] & 0x0f, missing[7]), (RCODE_NXDOMAIN, 0));
        let ptr = query("15.2.0.10.in-addr.arpa", TYPE_PTR);
        let response = answer(&ptr, &question(&ptr).unwrap(), &Known::Pointer("alpha.vnet.internal".into()));
        assert!(response.ends_with(b"\x05alpha\x04vnet\x08internal\x00"));
    }

    #[test]
    fn only_plain_labels_are_names() {
        for good in ["alpha", "web-1", "a"] {
            assert!(is_valid_label(good), "{good}");
        }
        for bad in ["", "-a", "a-", "a.b", "a b", "ünï", &"x".repeat(64)] {
            assert!(!is_valid_label(bad), "{bad}");
        }
    }

    #[test]
    fn questions_that_are_not_one_plain_question_are_not_read() {
        let mut two = query("alpha.vnet.internal", TYPE_A);
        two[5] = 2;
        assert_eq!(question(&two), None);
        let mut response = query("alpha.vnet.internal", TYPE_A);
        response[2] |= 0x80;
        assert_eq!(question(&response), None);
        assert_eq!(
            question(b"\x00\x01\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xc0\x0c\x00\x01\x00\x01"),
            None
        );
        assert_eq!(question(&[0; 5]), None);
    }
}
