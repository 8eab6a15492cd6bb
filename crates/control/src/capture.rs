//! Packet capture in the classic pcap format (microsecond timestamps, Ethernet link
//! type), which tcpdump, tshark and Wireshark read. A [`CaptureSink`] is a switch
//! mirror on the network's thread that only copies frames into a bounded channel; a
//! writer on another thread turns them into pcap records, so a slow reader or disk never
//! stalls the network: copies that do not fit are dropped and counted.

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use vnet_switch::{MirrorSink, PortId};
use vnet_wire::Frame;

/// Copies waiting for the writer before new ones are dropped.
const CHANNEL_DEPTH: usize = 4096;
/// pcap's snapshot length: larger than any frame vnet carries, so none is cut.
const SNAPLEN: u32 = 262_144;
/// pcap's link type for Ethernet.
const LINKTYPE_ETHERNET: u32 = 1;
/// How often an idle capture asks whether it is still wanted.
const IDLE_CHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// A copy of one captured frame and when it was seen. Frames live in the loop thread's
/// buffer pool, so the writer thread gets the bytes.
pub struct Captured {
    time: SystemTime,
    bytes: Vec<u8>,
}

/// The pcap file header.
pub fn file_header() -> [u8; 24] {
    let mut header = [0u8; 24];
    header[0..4].copy_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    header[4..6].copy_from_slice(&2u16.to_le_bytes());
    header[6..8].copy_from_slice(&4u16.to_le_bytes());
    header[16..20].copy_from_slice(&SNAPLEN.to_le_bytes());
    header[20..24].copy_from_slice(&LINKTYPE_ETHERNET.to_le_bytes());
    header
}

/// Writes one pcap record.
fn write_record(out: &mut impl Write, captured: &Captured) -> io::Result<()> {
    let since_epoch = captured.time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let bytes = &captured.bytes[..];
    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    let mut header = [0u8; 16];
    header[0..4].copy_from_slice(&(since_epoch.as_secs() as u32).to_le_bytes());
    header[4..8].copy_from_slice(&since_epoch.subsec_micros().to_le_bytes());
    header[8..12].copy_from_slice(&len.to_le_bytes());
    header[12..16].copy_from_slice(&len.to_le_bytes());
    out.write_all(&header)?;
    out.write_all(bytes)
}

/// The network side of a capture: a mirror sink that hands copies to the writer.
pub struct CaptureSink {
    frames: SyncSender<Captured>,
    /// Copies still to take before the capture ends; None for no limit.
    remaining: Option<u64>,
    dropped: Arc<AtomicU64>,
}

impl MirrorSink for CaptureSink {
    fn copy(&mut self, _port: PortId, _received: bool, frame: &Frame) -> bool {
        let captured = Captured { time: SystemTime::now(), bytes: frame.as_bytes().to_vec() };
        match self.frames.try_send(captured) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                return true;
            }
            Err(TrySendError::Disconnected(_)) => return false,
        }
        match &mut self.remaining {
            Some(remaining) => {
                *remaining -= 1;
                *remaining > 0
            }
            None => true,
        }
    }
}

/// The writer side of a capture.
pub struct CaptureWriter {
    frames: Receiver<Captured>,
    dropped: Arc<AtomicU64>,
}

/// A new capture of at most `count` frames (no limit if None): the sink to give the
/// switch, and the writer to run on another thread.
pub fn channel(count: Option<u64>) -> (CaptureSink, CaptureWriter) {
    let (sender, receiver) = mpsc::sync_channel(CHANNEL_DEPTH);
    let dropped = Arc::new(AtomicU64::new(0));
    let sink = CaptureSink { frames: sender, remaining: count, dropped: Arc::clone(&dropped) };
    (sink, CaptureWriter { frames: receiver, dropped })
}

/// How a capture ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CaptureSummary {
    /// Frames written.
    pub written: u64,
    /// Copies dropped because the writer fell behind.
    pub dropped: u64,
}

impl CaptureWriter {
    /// Writes the file header and then every frame until the capture ends (its count is
    /// reached, its port goes, or the network stops), flushing whenever it has caught up.
    /// While no frame comes it asks `wanted` every second whether to go on, so a reader
    /// that went away is noticed on an idle port too. Returns early with the error if
    /// `out` fails.
    pub fn run(self, out: &mut impl Write, wanted: impl Fn() -> bool) -> io::Result<CaptureSummary> {
        out.write_all(&file_header())?;
        out.flush()?;
        let mut written = 0;
        loop {
            let captured = match self.frames.try_recv() {
                Ok(captured) => captured,
                Err(TryRecvError::Empty) => {
                    out.flush()?;
                    match self.frames.recv_timeout(IDLE_CHECK) {
                        Ok(captured) => captured,
                        Err(RecvTimeoutError::Timeout) if wanted() => continue,
                        Err(_) => break,
                    }
                }
                Err(TryRecvError::Disconnected) => break,
            };
            write_record(out, &captured)?;
            written += 1;
        }
        out.flush()?;
        Ok(CaptureSummary { written, dropped: self.dropped.load(Ordering::Relaxed) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vnet_wire::Offload;

    fn frame(byte: u8) -> Frame {
        Frame::copy_from_slice(&[byte; 60], Offload::NONE).unwrap()
    }

    #[test]
    fn a_counted_capture_writes_a_pcap_file_of_exactly_that_many_frames() {
        let (mut sink, writer) = channel(Some(2));
        assert!(sink.copy(PortId(1), true, &frame(1)));
        assert!(!sink.copy(PortId(1), true, &frame(2)), "the second copy ends the capture");
        drop(sink);
        let mut file = Vec::new();
        let summary = writer.run(&mut file, || true).unwrap();
        assert_eq!(summary, CaptureSummary { written: 2, dropped: 0 });
        assert_eq!(file.len(), 24 + 2 * (16 + 60));
        assert_eq!(&file[0..4], &[0xd4, 0xc3, 0xb2, 0xa1]);
        assert_eq!(u32::from_le_bytes(file[20..24].try_into().unwrap()), 1, "Ethernet");
        assert_eq!(u32::from_le_bytes(file[32..36].try_into().unwrap()), 60, "captured length");
        assert_eq!(file[40], 1);
        assert_eq!(file[24 + 76 + 16], 2);
    }

    #[test]
    fn an_idle_capture_ends_when_it_is_no_longer_wanted() {
        let (_sink, writer) = channel(None);
        let summary = writer.run(&mut Vec::new(), || false).unwrap();
        assert_eq!(summary, CaptureSummary { written: 0, dropped: 0 });
    }

    #[test]
    fn a_sink_whose_writer_is_gone_ends_and_a_full_channel_counts_drops() {
        let (mut sink, writer) = channel(None);
        for _ in 0..CHANNEL_DEPTH + 5 {
            assert!(sink.copy(PortId(1), false, &frame(0)));
        }
        assert_eq!(sink.dropped.load(Ordering::Relaxed), 5);
        drop(writer);
        assert!(!sink.copy(PortId(1), false, &frame(0)));
    }
}
