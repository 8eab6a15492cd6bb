//! IEEE 802.1Q VLAN tags: which VLAN a frame's tag names, and taking a tag off or
//! putting one on. A frame's offloads move with its bytes: a partial checksum's start
//! shifts by the tag's four bytes. Nothing here decides which port is on which VLAN.

use std::fmt;

use crate::{Frame, FrameBuffer, ETHERNET_HEADER_LEN, MAX_FRAME_LEN};

/// The EtherType that marks an 802.1Q tag.
pub const TPID: u16 = 0x8100;
/// The EtherTypes of outer tags in stacked VLANs: 802.1ad's service tag, and the
/// pre-standard one still seen on the wire.
const STACKED_TPIDS: [u16; 2] = [0x88a8, 0x9100];
/// Bytes a tag adds: TPID and the tag control information.
pub const TAG_LEN: usize = 4;

/// A VLAN a frame can be tagged with: 1 to 4094.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VlanId(u16);

impl VlanId {
    /// The VLAN `id`, if it is one a tag may carry (0 means no VLAN, 4095 is reserved).
    pub fn new(id: u16) -> Option<Self> {
        (1..=4094).contains(&id).then_some(Self(id))
    }

    /// The number.
    pub fn get(self) -> u16 {
        self.0
    }
}

impl fmt::Display for VlanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// What a frame's header says about VLANs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tag {
    /// No 802.1Q tag.
    Untagged,
    /// A tag with VLAN id 0: priority only, the frame belongs to no VLAN.
    Priority,
    /// A tag naming a VLAN.
    Vlan(VlanId),
    /// A tag too short to hold its TCI, or naming the reserved VLAN 4095.
    Invalid,
}

/// Reads the 802.1Q tag of `frame` (at least an Ethernet header long). A tagged frame
/// too short to hold a whole header after its tag is [`Tag::Invalid`], so untagging
/// never makes a runt.
pub fn tag_of(frame: &Frame) -> Tag {
    // A frame's head holds at least its first 18 bytes, or all of it.
    let bytes = frame.head();
    if u16::from_be_bytes([bytes[12], bytes[13]]) != TPID {
        return Tag::Untagged;
    }
    if bytes.len() < ETHERNET_HEADER_LEN + TAG_LEN {
        return Tag::Invalid;
    }
    let id = u16::from_be_bytes([bytes[14], bytes[15]]) & 0x0fff;
    match id {
        0 => Tag::Priority,
        _ => VlanId::new(id).map_or(Tag::Invalid, Tag::Vlan),
    }
}

/// Whether `frame` (at least an Ethernet header long) carries a VLAN tag of any kind
/// next: 802.1Q, 802.1ad or the pre-standard stacked tag.
pub fn is_tagged(frame: &Frame) -> bool {
    let bytes = frame.head();
    let ethertype = u16::from_be_bytes([bytes[12], bytes[13]]);
    ethertype == TPID || STACKED_TPIDS.contains(&ethertype)
}

/// `frame` without its tag (which the caller has read with [`tag_of`]).
pub fn untag(frame: &Frame) -> Frame {
    let bytes = frame.as_bytes();
    let mut untagged = FrameBuffer::for_len(bytes.len() - TAG_LEN);
    untagged.extend_from_slice(&bytes[..12]);
    untagged.extend_from_slice(&bytes[12 + TAG_LEN..]);
    let mut offload = frame.offload();
    if let Some(checksum) = &mut offload.checksum {
        checksum.start = checksum.start.saturating_sub(TAG_LEN as u16);
    }
    untagged.freeze(offload).expect("tag_of keeps a whole header after the tag")
}

/// `frame` (untagged) with a tag for `vlan`, or None if the tag would make it longer than
/// [`MAX_FRAME_LEN`] or push its partial checksum's start out of range.
pub fn tag(frame: &Frame, vlan: VlanId) -> Option<Frame> {
    let bytes = frame.as_bytes();
    if bytes.len() + TAG_LEN > MAX_FRAME_LEN {
        return None;
    }
    let mut offload = frame.offload();
    if let Some(checksum) = &mut offload.checksum {
        checksum.start = checksum.start.checked_add(TAG_LEN as u16)?;
    }
    let mut tagged = FrameBuffer::for_len(bytes.len() + TAG_LEN);
    tagged.extend_from_slice(&bytes[..12]);
    tagged.extend_from_slice(&TPID.to_be_bytes());
    tagged.extend_from_slice(&vlan.get().to_be_bytes());
    tagged.extend_from_slice(&bytes[12..]);
    tagged.freeze(offload).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::offload::PartialChecksum;
    use crate::Offload;

    fn frame(ethertype: [u8; 2], rest: &[u8]) -> Frame {
        let mut bytes = vec![0xff; 6];
        bytes.extend_from_slice(&[0x52, 0x54, 0, 0, 0, 1]);
        bytes.extend_from_slice(&ethertype);
        bytes.extend_from_slice(rest);
        let offload =
            Offload { checksum: Some(PartialChecksum { start: 34, offset: 16 }), segmentation: None };
        Frame::copy_from_slice(&bytes, offload).unwrap()
    }

    #[test]
    fn a_tag_goes_on_and_comes_off_with_the_checksum_start_following() {
        let plain = frame([0x08, 0x00], &[1, 2, 3]);
        assert_eq!(tag_of(&plain), Tag::Untagged);
        let tagged = tag(&plain, VlanId::new(10).unwrap()).unwrap();
        assert_eq!(&tagged.as_bytes()[12..18], &[0x81, 0x00, 0x00, 0x0a, 0x08, 0x00]);
        assert_eq!(tag_of(&tagged), Tag::Vlan(VlanId::new(10).unwrap()));
        assert_eq!(tagged.offload().checksum.unwrap().start, 38);
        let back = untag(&tagged);
        assert_eq!(back.as_bytes(), plain.as_bytes());
        assert_eq!(back.offload(), plain.offload());
    }

    #[test]
    fn priority_reserved_and_short_tags_are_told_apart() {
        assert_eq!(tag_of(&frame([0x81, 0x00], &[0xe0, 0x00, 0x08, 0x00])), Tag::Priority);
        assert_eq!(
            tag_of(&frame([0x81, 0x00], &[0x0f, 0xff, 0x08, 0x00])),
            Tag::Invalid,
            "VLAN 4095 is reserved"
        );
        assert_eq!(tag_of(&frame([0x81, 0x00], &[])), Tag::Invalid);
        assert_eq!(
            tag_of(&frame([0x81, 0x00], &[0x00, 0x0a, 0x08])),
            Tag::Invalid,
            "no room for a header after the tag"
        );
        let longest = Frame::copy_from_slice(&vec![0u8; MAX_FRAME_LEN], Offload::NONE).unwrap();
        assert!(tag(&longest, VlanId::new(1).unwrap()).is_none(), "too long to tag");
        assert_eq!(
            tag_of(&frame([0x81, 0x00], &[0x20, 0x14, 0x08, 0x00])),
            Tag::Vlan(VlanId::new(20).unwrap())
        );
        assert_eq!(VlanId::new(0), None);
        assert_eq!(VlanId::new(4095), None);
    }
}
