//! Offload metadata that travels with a frame, and the software fallback for ports that
//! cannot take it.
//!
//! A tap opened with `IFF_VNET_HDR` (and a virtio-net device) hands over TCP segments of
//! up to 64 KiB whose checksum is left partial, with a `virtio_net_hdr` saying so
//! (REFERENCE §5). vnet keeps that meaning as an [`Offload`] beside the frame, so a 64 KiB
//! segment crosses the switch and the gateway as one unit of work. A port whose peer
//! cannot take such a frame (a QEMU stream or datagram socket) gets it through
//! [`resolve`]: the checksum completed and the segment cut into frames of the segment
//! size, as a NIC would put them on the wire.
//!
//! This file knows Ethernet, IPv4, IPv6 and TCP layouts; nothing about ports or sockets.

use smoltcp::wire::{EthernetFrame, EthernetProtocol, IpAddress, Ipv4Packet, Ipv6Packet, TcpPacket};

use crate::{Frame, FrameBuffer, ETHERNET_HEADER_LEN};

/// Length of the `virtio_net_hdr` a tap with `IFF_VNET_HDR` puts before each frame.
pub const VIRTIO_NET_HDR_LEN: usize = 10;

const FLAG_NEEDS_CSUM: u8 = 1;
const GSO_NONE: u8 = 0;
const GSO_TCPV4: u8 = 1;
const GSO_TCPV6: u8 = 4;

/// A checksum the sender left partial: the one's-complement sum of everything from
/// `start` to the end of the frame goes at `start + offset` (both counted from the
/// start of the Ethernet frame); that field holds the pseudo-header sum meanwhile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartialChecksum {
    /// Where the summed bytes start.
    pub start: u16,
    /// Where in them the checksum field is.
    pub offset: u16,
}

/// Which protocol a segmentation offload cuts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentKind {
    /// TCP over IPv4.
    TcpV4,
    /// TCP over IPv6.
    TcpV6,
}

/// A TCP segment larger than the wire takes, to be cut into segments of `size` payload
/// bytes each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segmentation {
    /// The protocol.
    pub kind: SegmentKind,
    /// The payload of each cut segment (the MSS).
    pub size: u16,
}

/// What a frame still needs done before it is what the wire carries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Offload {
    /// A checksum to complete.
    pub checksum: Option<PartialChecksum>,
    /// A segment to cut.
    pub segmentation: Option<Segmentation>,
}

/// Why a frame's offload request cannot be carried out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffloadError {
    /// A segmentation type vnet does not offer (UDP, ECN).
    UnsupportedSegmentation,
    /// The checksum or segmentation offsets lie outside the frame, or the headers they
    /// need are not there.
    Malformed,
}

impl Offload {
    /// Nothing to do: the frame is ready for any wire.
    pub const NONE: Offload = Offload { checksum: None, segmentation: None };

    /// Whether the frame is ready for any wire as it is.
    pub fn is_none(&self) -> bool {
        *self == Self::NONE
    }

    /// The offloads a `virtio_net_hdr` asks for (native byte order, as a tap writes it).
    pub fn from_virtio_header(header: &[u8; VIRTIO_NET_HDR_LEN]) -> Result<Self, OffloadError> {
        let field = |at: usize| u16::from_ne_bytes([header[at], header[at + 1]]);
        let checksum =
            (header[0] & FLAG_NEEDS_CSUM != 0).then(|| PartialChecksum { start: field(6), offset: field(8) });
        let kind = match header[1] {
            GSO_NONE => None,
            GSO_TCPV4 => Some(SegmentKind::TcpV4),
            GSO_TCPV6 => Some(SegmentKind::TcpV6),
            // UDP, and anything with ECN.
            _ => return Err(OffloadError::UnsupportedSegmentation),
        };
        let segmentation = match kind {
            Some(kind) if field(4) > 0 => Some(Segmentation { kind, size: field(4) }),
            Some(_) => return Err(OffloadError::Malformed),
            None => None,
        };
        Ok(Self { checksum, segmentation })
    }

    /// The `virtio_net_hdr` that asks a tap for these offloads on `frame`.
    pub fn to_virtio_header(&self, frame: &[u8]) -> [u8; VIRTIO_NET_HDR_LEN] {
        let mut header = [0u8; VIRTIO_NET_HDR_LEN];
        if let Some(checksum) = self.checksum {
            header[0] = FLAG_NEEDS_CSUM;
            header[6..8].copy_from_slice(&checksum.start.to_ne_bytes());
            header[8..10].copy_from_slice(&checksum.offset.to_ne_bytes());
        }
        if let Some(segmentation) = self.segmentation {
            header[1] = match segmentation.kind {
                SegmentKind::TcpV4 => GSO_TCPV4,
                SegmentKind::TcpV6 => GSO_TCPV6,
            };
            let header_len = headers_len(frame, segmentation.kind).unwrap_or(0) as u16;
            header[2..4].copy_from_slice(&header_len.to_ne_bytes());
            header[4..6].copy_from_slice(&segmentation.size.to_ne_bytes());
        }
        header
    }
}

/// The smallest segment size vnet cuts to. A peer asking for less (down to 1 byte per
/// segment) would turn one 64 KiB frame into tens of thousands; no real MSS is smaller.
pub const MIN_SEGMENT_SIZE: u16 = 64;

/// How many frames `frame` becomes on the wire: the segments it is cut into, or 1.
pub fn wire_frames(frame: &[u8], offload: Offload) -> Result<usize, OffloadError> {
    let Some(segmentation) = offload.segmentation else {
        return Ok(1);
    };
    if segmentation.size < MIN_SEGMENT_SIZE {
        return Err(OffloadError::Malformed);
    }
    let headers = headers_len(frame, segmentation.kind).ok_or(OffloadError::Malformed)?;
    Ok((frame.len() - headers).div_ceil(usize::from(segmentation.size)).max(1))
}

/// `frame` as the wire carries it, handed to `emit` frame by frame: its partial checksum
/// completed, and cut into segments if it asks for segmentation (see [`wire_frames`] for
/// how many). A frame without offloads comes out as it is.
pub fn resolve(frame: &Frame, mut emit: impl FnMut(Frame)) -> Result<(), OffloadError> {
    let offload = frame.offload();
    match offload.segmentation {
        Some(segmentation) => segment(frame.as_bytes(), segmentation, emit),
        None => {
            let mut whole = FrameBuffer::for_len(frame.len());
            whole.extend_from_slice(frame.as_bytes());
            if let Some(checksum) = offload.checksum {
                complete_checksum(whole.data_mut(), checksum)?;
            }
            emit(whole.freeze(Offload::NONE).map_err(|_| OffloadError::Malformed)?);
            Ok(())
        }
    }
}

/// Completes a partial checksum in place.
pub fn complete_checksum(frame: &mut [u8], checksum: PartialChecksum) -> Result<(), OffloadError> {
    let start = usize::from(checksum.start);
    let field = start + usize::from(checksum.offset);
    if field + 2 > frame.len() {
        return Err(OffloadError::Malformed);
    }
    let sum = !ones_complement_sum(&frame[start..]);
    frame[field..field + 2].copy_from_slice(&sum.to_be_bytes());
    Ok(())
}

/// The folded one's-complement sum of `data` as 16-bit big-endian words.
fn ones_complement_sum(data: &[u8]) -> u16 {
    let mut sum: u64 = 0;
    let mut words = data.chunks_exact(2);
    for word in &mut words {
        sum += u64::from(u16::from_be_bytes([word[0], word[1]]));
    }
    if let [last] = words.remainder() {
        sum += u64::from(*last) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// Length of the Ethernet, IP and TCP headers of a TCP frame of `kind`.
fn headers_len(frame: &[u8], kind: SegmentKind) -> Option<usize> {
    let ethernet = EthernetFrame::new_checked(frame).ok()?;
    let ip_len = match (kind, ethernet.ethertype()) {
        (SegmentKind::TcpV4, EthernetProtocol::Ipv4) => {
            usize::from(Ipv4Packet::new_checked(ethernet.payload()).ok()?.header_len())
        }
        (SegmentKind::TcpV6, EthernetProtocol::Ipv6) => 40,
        _ => return None,
    };
    let tcp = TcpPacket::new_checked(frame.get(ETHERNET_HEADER_LEN + ip_len..)?).ok()?;
    Some(ETHERNET_HEADER_LEN + ip_len + usize::from(tcp.header_len()))
}

/// Cuts a TCP super-segment into segments of `segmentation.size` payload bytes, each
/// with its own IP length, IPv4 id, sequence number, flags and checksums, built in pooled
/// buffers and handed to `emit`.
fn segment(
    frame: &[u8],
    segmentation: Segmentation,
    mut emit: impl FnMut(Frame),
) -> Result<(), OffloadError> {
    if segmentation.size < MIN_SEGMENT_SIZE {
        return Err(OffloadError::Malformed);
    }
    let headers = headers_len(frame, segmentation.kind).ok_or(OffloadError::Malformed)?;
    let ip_start = ETHERNET_HEADER_LEN;
    let tcp_start = match segmentation.kind {
        SegmentKind::TcpV4 => {
            ip_start + usize::from(Ipv4Packet::new_unchecked(&frame[ip_start..]).header_len())
        }
        SegmentKind::TcpV6 => ip_start + 40,
    };
    let size = usize::from(segmentation.size);
    let payload = &frame[headers..];
    let first = TcpPacket::new_unchecked(&frame[tcp_start..]);
    let (seq, fin, psh) = (first.seq_number(), first.fin(), first.psh());
    let count = payload.len().div_ceil(size).max(1);
    for index in 0..count {
        let chunk = &payload[(index * size).min(payload.len())..((index + 1) * size).min(payload.len())];
        let mut out = FrameBuffer::for_len(headers + chunk.len());
        out.extend_from_slice(&frame[..headers]);
        out.extend_from_slice(chunk);
        let segment = out.data_mut();
        let (src, dst) = fix_ip_header(segment, segmentation.kind, tcp_start, index)?;
        let last = index == count - 1;
        let mut tcp = TcpPacket::new_unchecked(&mut segment[tcp_start..]);
        tcp.set_seq_number(seq + index * size);
        tcp.set_fin(fin && last);
        tcp.set_psh(psh && last);
        if index > 0 {
            tcp.set_cwr(false);
        }
        tcp.fill_checksum(&src, &dst);
        emit(out.freeze(Offload::NONE).map_err(|_| OffloadError::Malformed)?);
    }
    Ok(())
}

/// Sets one cut segment's IP length (and IPv4 id and checksum); returns its addresses.
fn fix_ip_header(
    segment: &mut [u8],
    kind: SegmentKind,
    tcp_start: usize,
    index: usize,
) -> Result<(IpAddress, IpAddress), OffloadError> {
    let ip_bytes = segment.len() - ETHERNET_HEADER_LEN;
    match kind {
        SegmentKind::TcpV4 => {
            let mut ip = Ipv4Packet::new_unchecked(&mut segment[ETHERNET_HEADER_LEN..]);
            ip.set_total_len(u16::try_from(ip_bytes).map_err(|_| OffloadError::Malformed)?);
            ip.set_ident(ip.ident().wrapping_add(index as u16));
            ip.fill_checksum();
            Ok((ip.src_addr().into(), ip.dst_addr().into()))
        }
        SegmentKind::TcpV6 => {
            let payload_len = segment.len() - tcp_start;
            let mut ip = Ipv6Packet::new_unchecked(&mut segment[ETHERNET_HEADER_LEN..]);
            ip.set_payload_len(u16::try_from(payload_len).map_err(|_| OffloadError::Malformed)?);
            Ok((ip.src_addr().into(), ip.dst_addr().into()))
        }
    }
}

#[cfg(test)]
mod tests {
    use smoltcp::phy::ChecksumCapabilities;
    use smoltcp::wire::{Ipv4Address, TcpRepr, TcpSeqNumber};

    use super::*;

    const SRC: Ipv4Address = Ipv4Address::new(10, 0, 2, 15);
    const DST: Ipv4Address = Ipv4Address::new(10, 0, 2, 2);

    /// An Ethernet/IPv4/TCP frame carrying `payload`, checksums complete.
    fn tcp_frame(payload: &[u8], fin: bool) -> Vec<u8> {
        let tcp = TcpRepr {
            src_port: 40000,
            dst_port: 80,
            control: if fin { smoltcp::wire::TcpControl::Fin } else { smoltcp::wire::TcpControl::Psh },
            seq_number: TcpSeqNumber(1000),
            ack_number: Some(TcpSeqNumber(7)),
            window_len: 512,
            window_scale: None,
            max_seg_size: None,
            sack_permitted: false,
            sack_ranges: [None; 3],
            timestamp: None,
            payload,
        };
        let tcp_len = tcp.buffer_len();
        let mut frame = vec![0u8; ETHERNET_HEADER_LEN + 20 + tcp_len];
        frame[12..14].copy_from_slice(&[0x08, 0x00]);
        let mut ip = Ipv4Packet::new_unchecked(&mut frame[ETHERNET_HEADER_LEN..]);
        ip.set_version(4);
        ip.set_header_len(20);
        ip.set_total_len((20 + tcp_len) as u16);
        ip.set_hop_limit(64);
        ip.set_next_header(smoltcp::wire::IpProtocol::Tcp);
        ip.set_src_addr(SRC);
        ip.set_dst_addr(DST);
        ip.set_ident(100);
        ip.fill_checksum();
        tcp.emit(
            &mut TcpPacket::new_unchecked(&mut frame[ETHERNET_HEADER_LEN + 20..]),
            &SRC.into(),
            &DST.into(),
            &ChecksumCapabilities::default(),
        );
        frame
    }

    /// Replaces the frame's TCP checksum with the pseudo-header sum, as a sender that
    /// offloads the checksum leaves it.
    fn make_partial(frame: &mut [u8]) -> PartialChecksum {
        let tcp_start = ETHERNET_HEADER_LEN + 20;
        let tcp_len = (frame.len() - tcp_start) as u32;
        let mut sum: u32 = 0;
        for word in [SRC.octets(), DST.octets()].concat().chunks(2) {
            sum += u32::from(u16::from_be_bytes([word[0], word[1]]));
        }
        sum += 6 + tcp_len;
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        frame[tcp_start + 16..tcp_start + 18].copy_from_slice(&(sum as u16).to_be_bytes());
        PartialChecksum { start: tcp_start as u16, offset: 16 }
    }

    fn tcp_checksum_ok(frame: &[u8]) -> bool {
        let ip = Ipv4Packet::new_checked(&frame[ETHERNET_HEADER_LEN..]).unwrap();
        ip.verify_checksum()
            && TcpPacket::new_checked(ip.payload()).unwrap().verify_checksum(&SRC.into(), &DST.into())
    }

    #[test]
    fn a_partial_checksum_is_completed() {
        let whole = tcp_frame(b"hello, offloads", false);
        let mut partial = whole.clone();
        let checksum = make_partial(&mut partial);
        assert!(!tcp_checksum_ok(&partial));
        let resolved = resolved(&partial, Offload { checksum: Some(checksum), segmentation: None }).unwrap();
        assert_eq!(resolved, vec![whole]);
    }

    #[test]
    fn a_super_segment_is_cut_into_valid_segments() {
        let payload: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        let mut frame = tcp_frame(&payload, true);
        let checksum = make_partial(&mut frame);
        let segmentation = Segmentation { kind: SegmentKind::TcpV4, size: 1460 };
        let segments =
            resolved(&frame, Offload { checksum: Some(checksum), segmentation: Some(segmentation) }).unwrap();
        assert_eq!(segments.len(), 7);
        let mut joined = Vec::new();
        for (index, segment) in segments.iter().enumerate() {
            assert!(tcp_checksum_ok(segment), "segment {index}");
            let ip = Ipv4Packet::new_checked(&segment[ETHERNET_HEADER_LEN..]).unwrap();
            assert_eq!(ip.ident(), 100 + index as u16);
            let tcp = TcpPacket::new_checked(ip.payload()).unwrap();
            assert_eq!(tcp.seq_number(), TcpSeqNumber(1000 + joined.len() as i32));
            assert_eq!(tcp.fin(), index == 6, "FIN only on the last");
            joined.extend_from_slice(tcp.payload());
        }
        assert_eq!(joined, payload);
    }

    #[test]
    fn virtio_headers_round_trip_and_bad_ones_are_refused() {
        let frame = tcp_frame(&[0u8; 3000], false);
        let offload = Offload {
            checksum: Some(PartialChecksum { start: 34, offset: 16 }),
            segmentation: Some(Segmentation { kind: SegmentKind::TcpV4, size: 1448 }),
        };
        let header = offload.to_virtio_header(&frame);
        assert_eq!(u16::from_ne_bytes([header[2], header[3]]), 54, "header length");
        assert_eq!(Offload::from_virtio_header(&header), Ok(offload));
        let mut udp = header;
        udp[1] = 3;
        assert_eq!(Offload::from_virtio_header(&udp), Err(OffloadError::UnsupportedSegmentation));
        let mut bad = [0u8; VIRTIO_NET_HDR_LEN];
        bad[0] = FLAG_NEEDS_CSUM;
        bad[6..8].copy_from_slice(&60_000u16.to_ne_bytes());
        let offload = Offload::from_virtio_header(&bad).unwrap();
        assert_eq!(resolved(&frame, offload), Err(OffloadError::Malformed));
        assert_eq!(
            resolved(&[0u8; 20], Offload { checksum: None, segmentation: offload_gso() }),
            Err(OffloadError::Malformed)
        );
    }

    /// What `resolve` makes of `bytes` with `offload`, as plain bytes.
    fn resolved(bytes: &[u8], offload: Offload) -> Result<Vec<Vec<u8>>, OffloadError> {
        let frame = Frame::copy_from_slice(bytes, offload).map_err(|_| OffloadError::Malformed)?;
        let mut out = Vec::new();
        resolve(&frame, |segment| out.push(segment.as_bytes().to_vec()))?;
        Ok(out)
    }

    #[test]
    fn absurd_segment_sizes_are_refused_before_anything_is_cut() {
        let frame = tcp_frame(&[0u8; 60_000], false);
        let tiny = Offload {
            checksum: None,
            segmentation: Some(Segmentation { kind: SegmentKind::TcpV4, size: MIN_SEGMENT_SIZE - 1 }),
        };
        assert_eq!(wire_frames(&frame, tiny), Err(OffloadError::Malformed));
        assert_eq!(resolved(&frame, tiny), Err(OffloadError::Malformed));
        let smallest = Offload {
            checksum: None,
            segmentation: Some(Segmentation { kind: SegmentKind::TcpV4, size: MIN_SEGMENT_SIZE }),
        };
        assert_eq!(wire_frames(&frame, smallest), Ok(60_000usize.div_ceil(64)));
        assert_eq!(wire_frames(&frame, Offload::NONE), Ok(1));
    }

    fn offload_gso() -> Option<Segmentation> {
        Some(Segmentation { kind: SegmentKind::TcpV4, size: 100 })
    }
}
