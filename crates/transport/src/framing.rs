//! QEMU's stream framing: every frame is preceded by its length as a 4-byte big-endian
//! integer. Used by `-netdev stream` and the legacy `-netdev socket,connect=|listen=`.
//!
//! The decoder is pure: bytes go in, whole frames come out, so it is tested (and fuzzed)
//! without sockets. It never trusts the peer: a length of zero or above
//! [`MAX_FRAME_LEN`] is an error that ends the connection, and a frame is handed out only
//! once all of its bytes have arrived, however the reads were split. Each frame is copied
//! out of the read buffer into an allocation of its own size, so a queued frame never
//! pins a whole read buffer and the buffer is reused from one read to the next.

use bytes::{Buf, Bytes, BytesMut};
use thiserror::Error;
use vnet_wire::MAX_FRAME_LEN;

/// Size of the length prefix in front of each frame.
pub const LENGTH_PREFIX_LEN: usize = 4;

/// How much the decoder asks to read at once when it is not in the middle of a large
/// frame. Big enough for dozens of small frames per system call.
pub const READ_CHUNK: usize = 64 * 1024;

/// A length prefix vnet refuses. Either one ends the connection it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum FramingError {
    /// The peer announced an empty frame.
    #[error("peer sent a frame length of 0")]
    ZeroLength,
    /// The peer announced a frame larger than any Ethernet frame vnet carries.
    #[error("peer sent a frame length of {0}, above the limit of {MAX_FRAME_LEN}")]
    TooLong(u32),
}

/// Reassembles frames from a byte stream.
#[derive(Debug, Default)]
pub struct StreamDecoder {
    buffer: BytesMut,
}

impl StreamDecoder {
    /// An empty decoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// The buffer to read into, with room for at least the rest of the frame in progress
    /// (or [`READ_CHUNK`] bytes). Append to it; never remove from it.
    pub fn read_buffer(&mut self) -> &mut BytesMut {
        let wanted = self.bytes_to_complete_frame().max(READ_CHUNK);
        self.buffer.reserve(wanted);
        &mut self.buffer
    }

    /// Appends bytes received from the peer. Equivalent to reading into
    /// [`Self::read_buffer`].
    pub fn extend(&mut self, data: &[u8]) {
        self.buffer.extend_from_slice(data);
    }

    /// The next whole frame, if one has fully arrived.
    pub fn next_frame(&mut self) -> Result<Option<Bytes>, FramingError> {
        let Some(len) = self.announced_len()? else {
            return Ok(None);
        };
        let end = LENGTH_PREFIX_LEN + len;
        if self.buffer.len() < end {
            return Ok(None);
        }
        let frame = Bytes::copy_from_slice(&self.buffer[LENGTH_PREFIX_LEN..end]);
        self.buffer.advance(end);
        Ok(Some(frame))
    }

    /// Bytes held that do not yet make a whole frame. Non-zero at end of stream means the
    /// peer closed in the middle of a frame.
    pub fn partial_len(&self) -> usize {
        self.buffer.len()
    }

    fn announced_len(&self) -> Result<Option<usize>, FramingError> {
        let Some(prefix) = self.buffer.get(..LENGTH_PREFIX_LEN) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]);
        match len {
            0 => Err(FramingError::ZeroLength),
            len if len as usize > MAX_FRAME_LEN => Err(FramingError::TooLong(len)),
            len => Ok(Some(len as usize)),
        }
    }

    fn bytes_to_complete_frame(&self) -> usize {
        match self.announced_len() {
            Ok(Some(len)) => (LENGTH_PREFIX_LEN + len).saturating_sub(self.buffer.len()),
            _ => 0,
        }
    }
}

/// The length prefix to send in front of a frame of `frame_len` bytes.
pub fn length_prefix(frame_len: usize) -> [u8; LENGTH_PREFIX_LEN] {
    debug_assert!(frame_len <= MAX_FRAME_LEN);
    (frame_len as u32).to_be_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(frames: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for frame in frames {
            out.extend_from_slice(&length_prefix(frame.len()));
            out.extend_from_slice(frame);
        }
        out
    }

    fn drain(decoder: &mut StreamDecoder) -> Vec<Bytes> {
        let mut frames = Vec::new();
        while let Some(frame) = decoder.next_frame().unwrap() {
            frames.push(frame);
        }
        frames
    }

    #[test]
    fn many_frames_in_one_read_all_come_out_in_order() {
        let first = [1u8; 60];
        let second = [2u8; 1514];
        let third = [3u8; 14];
        let mut decoder = StreamDecoder::new();
        decoder.extend(&encode(&[&first, &second, &third]));
        let frames = drain(&mut decoder);
        assert_eq!(frames, vec![&first[..], &second[..], &third[..]]);
        assert_eq!(decoder.partial_len(), 0);
    }

    #[test]
    fn a_frame_split_at_every_byte_boundary_is_reassembled() {
        let frame: Vec<u8> = (0..100u8).collect();
        let wire = encode(&[&frame, &frame]);
        for split in 0..wire.len() {
            let mut decoder = StreamDecoder::new();
            decoder.extend(&wire[..split]);
            let mut frames = drain(&mut decoder);
            decoder.extend(&wire[split..]);
            frames.extend(drain(&mut decoder));
            assert_eq!(frames.len(), 2, "split at {split}");
            assert!(frames.iter().all(|f| f[..] == frame[..]), "split at {split}");
        }
    }

    #[test]
    fn one_byte_at_a_time_works() {
        let frame = [7u8; 300];
        let mut decoder = StreamDecoder::new();
        let mut frames = Vec::new();
        for byte in encode(&[&frame]) {
            decoder.extend(&[byte]);
            frames.extend(drain(&mut decoder));
        }
        assert_eq!(frames, vec![&frame[..]]);
    }

    #[test]
    fn zero_length_is_an_error() {
        let mut decoder = StreamDecoder::new();
        decoder.extend(&[0, 0, 0, 0, 1, 2, 3]);
        assert_eq!(decoder.next_frame(), Err(FramingError::ZeroLength));
    }

    #[test]
    fn lengths_above_the_largest_frame_are_errors_and_the_largest_is_not() {
        let mut decoder = StreamDecoder::new();
        decoder.extend(&((MAX_FRAME_LEN + 1) as u32).to_be_bytes());
        assert_eq!(decoder.next_frame(), Err(FramingError::TooLong(65550)));

        let mut decoder = StreamDecoder::new();
        decoder.extend(&u32::MAX.to_be_bytes());
        assert_eq!(decoder.next_frame(), Err(FramingError::TooLong(u32::MAX)));

        let largest = vec![9u8; MAX_FRAME_LEN];
        let mut decoder = StreamDecoder::new();
        decoder.extend(&encode(&[&largest]));
        assert_eq!(decoder.next_frame().unwrap().unwrap().len(), MAX_FRAME_LEN);
    }

    #[test]
    fn a_bad_length_is_reported_even_before_the_body_arrives() {
        let mut decoder = StreamDecoder::new();
        decoder.extend(&[0xff, 0xff, 0xff]);
        assert_eq!(decoder.next_frame(), Ok(None));
        decoder.extend(&[0xff]);
        assert!(decoder.next_frame().is_err());
    }

    #[test]
    fn a_peer_closing_mid_frame_leaves_a_partial_frame() {
        let wire = encode(&[&[5u8; 64]]);
        let mut decoder = StreamDecoder::new();
        decoder.extend(&wire[..30]);
        assert_eq!(decoder.next_frame(), Ok(None));
        assert_eq!(decoder.partial_len(), 30);
    }

    #[test]
    fn the_read_buffer_makes_room_for_the_whole_frame_in_progress() {
        let mut decoder = StreamDecoder::new();
        decoder.extend(&length_prefix(MAX_FRAME_LEN));
        let buffer = decoder.read_buffer();
        assert!(buffer.capacity() - buffer.len() >= MAX_FRAME_LEN);
    }
}
