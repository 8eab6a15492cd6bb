//! QEMU's stream framing: every frame is preceded by its length as a 4-byte big-endian
//! integer. Used by `-netdev stream` and the legacy `-netdev socket,connect=|listen=`.
//!
//! The decoder is pure: bytes go in, whole frames come out, so it is tested (and fuzzed)
//! without sockets. It never trusts the peer: a length of zero or above
//! [`MAX_FRAME_LEN`] is an error that ends the connection, and a frame is handed out only
//! once all of its bytes have arrived, however the reads were split.
//!
//! Bytes are read straight into a pooled buffer. A large frame is handed out as a view of
//! that buffer, with no copy: once its length is known, the decoder asks for exactly the
//! rest of it, so it never leaves a piece of the next frame behind to be moved. Small
//! frames share a read of up to [`READ_CHUNK`] bytes and are each copied into a small
//! pooled buffer, so that a queued small frame never holds a whole read buffer (a peer
//! sending tiny frames toward a slow port would otherwise pin 64 KiB per frame). Only the
//! unfinished tail of a read (part of a frame, or a length prefix) is moved into the next
//! buffer. Between reads, a drained decoder gives back the room it does not need
//! ([`StreamDecoder::release_idle_room`]): an idle connection holds no buffer, and one
//! waiting for the rest of a frame holds only what arrived of it.

use thiserror::Error;

use crate::frame::{HEADROOM, SMALL_BUFFER};
use crate::{Frame, FrameBuffer, FrameError, Offload, MAX_FRAME_LEN};

/// Size of the length prefix in front of each frame.
pub const LENGTH_PREFIX_LEN: usize = 4;

/// How much the decoder asks to read at once when it is not in the middle of a large
/// frame. Big enough for dozens of small frames per system call.
pub const READ_CHUNK: usize = 64 * 1024;

/// Frames longer than this are read to their exact end rather than in chunks.
const LARGE_FRAME: usize = 4096;
/// Frames up to this long are copied into a small buffer of their own.
const SMALL_FRAME: usize = SMALL_BUFFER - HEADROOM;

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
#[derive(Debug)]
pub struct StreamDecoder {
    /// Bytes received and not yet handed out as frames.
    buffer: FrameBuffer,
}

impl Default for StreamDecoder {
    fn default() -> Self {
        Self { buffer: FrameBuffer::large_without_headroom() }
    }
}

impl StreamDecoder {
    /// An empty decoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// The space to read into next: the rest of a large frame in progress exactly, else
    /// up to [`READ_CHUNK`] bytes. Follow a read with [`StreamDecoder::commit`].
    pub fn read_buffer(&mut self) -> &mut [u8] {
        let to_complete = self.bytes_to_complete_frame();
        // Never an empty space: a read into one would look like the end of the stream.
        let wanted = match self.announced_len() {
            Ok(Some(len)) if len > LARGE_FRAME && to_complete > 0 => to_complete,
            _ => to_complete.max(READ_CHUNK),
        };
        if self.buffer.is_shared() || self.buffer.spare_len() < wanted {
            let mut fresh = FrameBuffer::large_without_headroom();
            fresh.extend_from_slice(self.buffer.data());
            self.buffer = fresh;
        }
        let spare = self.buffer.spare_mut();
        let len = wanted.min(spare.len());
        &mut spare[..len]
    }

    /// Takes `len` bytes read into [`StreamDecoder::read_buffer`].
    pub fn commit(&mut self, len: usize) {
        self.buffer.commit(len);
    }

    /// Appends bytes received from the peer: [`StreamDecoder::read_buffer`] and
    /// [`StreamDecoder::commit`] in one, for bytes already in memory. Returns how many it
    /// took: all of them, unless a whole frame of the largest size leaves no room behind
    /// it, in which case take the frames out and give it the rest again.
    pub fn extend(&mut self, mut data: &[u8]) -> usize {
        let mut taken = 0;
        while !data.is_empty() {
            let room = self.read_buffer();
            let len = room.len().min(data.len());
            if len == 0 {
                break;
            }
            room[..len].copy_from_slice(&data[..len]);
            self.commit(len);
            data = &data[len..];
            taken += len;
        }
        taken
    }

    /// The next whole frame, if one has fully arrived: a [`Frame`], or the
    /// [`FrameError`] of one too short to be one (which still leaves the stream in step).
    #[allow(clippy::type_complexity)]
    pub fn next_frame(&mut self) -> Result<Option<Result<Frame, FrameError>>, FramingError> {
        let Some(len) = self.announced_len()? else {
            return Ok(None);
        };
        let end = LENGTH_PREFIX_LEN + len;
        if self.buffer.len() < end {
            return Ok(None);
        }
        // A small frame gets a small buffer of its own, so that a queued small frame never
        // holds a whole read buffer; a large one is handed out where it was read.
        let frame = if len <= SMALL_FRAME {
            Frame::copy_from_slice(&self.buffer.data()[LENGTH_PREFIX_LEN..end], Offload::NONE)
        } else {
            self.buffer.share(LENGTH_PREFIX_LEN..end, Offload::NONE)
        };
        self.buffer.advance(end);
        Ok(Some(frame))
    }

    /// Gives back the room the decoder holds while the peer sends nothing more: all of
    /// it when no frame is under way, and otherwise all but what arrived of the frame
    /// (in a small buffer when it fits one, else in one of exactly its size).
    pub fn release_idle_room(&mut self) {
        let partial = self.buffer.len();
        if partial == 0 {
            self.buffer = FrameBuffer::empty();
        } else if partial <= SMALL_FRAME {
            if self.buffer.capacity() > SMALL_BUFFER {
                self.buffer = FrameBuffer::copy_of(self.buffer.data());
            }
        } else if self.buffer.capacity() > partial {
            self.buffer = FrameBuffer::fitted(self.buffer.data());
        }
    }

    /// The bytes of memory the decoder holds now.
    pub fn held_bytes(&self) -> usize {
        self.buffer.capacity()
    }

    /// Bytes held that do not yet make a whole frame. Non-zero at end of stream means the
    /// peer closed in the middle of a frame.
    pub fn partial_len(&self) -> usize {
        self.buffer.len()
    }

    fn announced_len(&self) -> Result<Option<usize>, FramingError> {
        let Some(prefix) = self.buffer.data().get(..LENGTH_PREFIX_LEN) else {
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
            _ => LENGTH_PREFIX_LEN.saturating_sub(self.buffer.len()),
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

    fn drain(decoder: &mut StreamDecoder) -> Vec<Vec<u8>> {
        let mut frames = Vec::new();
        while let Some(frame) = decoder.next_frame().unwrap() {
            frames.push(frame.expect("a whole frame").as_bytes().to_vec());
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
        assert_eq!(decoder.next_frame().unwrap().unwrap().unwrap().len(), MAX_FRAME_LEN);
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
        assert_eq!(decoder.read_buffer().len(), MAX_FRAME_LEN, "exactly the rest of a large frame");
    }

    #[test]
    fn the_read_space_is_never_empty_even_with_a_whole_large_frame_waiting() {
        let mut decoder = StreamDecoder::new();
        decoder.extend(&encode(&[&[1u8; 5000]]));
        assert!(!decoder.read_buffer().is_empty(), "an empty read would look like the end of the stream");
    }

    #[test]
    fn small_frames_are_read_in_chunks() {
        let mut decoder = StreamDecoder::new();
        decoder.extend(&length_prefix(60));
        assert!(decoder.read_buffer().len() >= READ_CHUNK);
    }

    #[test]
    fn a_frame_shorter_than_a_header_is_a_runt_and_the_stream_stays_in_step() {
        let mut decoder = StreamDecoder::new();
        decoder.extend(&encode(&[&[1u8; 5], &[2u8; 60]]));
        assert_eq!(decoder.next_frame(), Ok(Some(Err(FrameError::Runt(5)))));
        assert_eq!(decoder.next_frame().unwrap().unwrap().unwrap().as_bytes(), &[2u8; 60][..]);
    }

    #[test]
    fn large_frames_handed_out_keep_their_bytes_while_the_decoder_reads_on() {
        let mut decoder = StreamDecoder::new();
        decoder.extend(&encode(&[&[1u8; 5000]]));
        decoder.extend(&length_prefix(5000)[..2]);
        let first = decoder.next_frame().unwrap().unwrap().unwrap();
        assert!(decoder.buffer.is_shared(), "a large frame is a view of the read buffer");
        decoder.extend(&[&length_prefix(5000)[2..], &[2u8; 5000][..]].concat());
        let second = decoder.next_frame().unwrap().unwrap().unwrap();
        assert_eq!(first.as_bytes(), &[1u8; 5000][..]);
        assert_eq!(second.as_bytes(), &[2u8; 5000][..]);
    }

    #[test]
    fn a_small_frame_does_not_hold_the_read_buffer() {
        let mut decoder = StreamDecoder::new();
        decoder.extend(&encode(&[&[1u8; 60], &[2u8; 60]]));
        let first = decoder.next_frame().unwrap().unwrap().unwrap();
        assert!(!decoder.buffer.is_shared(), "a small frame has a buffer of its own");
        assert_eq!(first.as_bytes(), &[1u8; 60][..]);
    }

    #[test]
    fn an_idle_decoder_holds_no_buffer_and_a_waiting_short_frame_only_a_small_one() {
        let mut decoder = StreamDecoder::new();
        decoder.extend(&encode(&[&[1u8; 60]]));
        decoder.next_frame().unwrap().unwrap().unwrap();
        let (_, large_before) = crate::frame::pooled_buffers();
        decoder.release_idle_room();
        assert_eq!(
            crate::frame::pooled_buffers().1,
            large_before + 1,
            "the read buffer went back to the pool"
        );
        decoder.extend(&length_prefix(100));
        decoder.extend(&[3u8; 10]);
        decoder.release_idle_room();
        assert!(decoder.held_bytes() <= SMALL_BUFFER, "14 bytes of a frame hold {}", decoder.held_bytes());
        decoder.extend(&[3u8; 90]);
        assert_eq!(decoder.next_frame().unwrap().unwrap().unwrap().as_bytes(), &[3u8; 100][..]);
    }

    #[test]
    fn a_waiting_large_frame_holds_what_arrived_and_still_completes() {
        let mut decoder = StreamDecoder::new();
        let frame: Vec<u8> = (0..MAX_FRAME_LEN).map(|i| i as u8).collect();
        let wire = encode(&[&frame]);
        let mut sent = 0;
        for piece in [10_000, 20_000, wire.len() - 30_000] {
            sent += decoder.extend(&wire[sent..sent + piece]);
            if sent < wire.len() {
                decoder.release_idle_room();
                assert_eq!(decoder.held_bytes(), sent, "an unfinished frame holds what arrived");
                assert!(decoder.next_frame().unwrap().is_none());
            }
        }
        assert_eq!(decoder.next_frame().unwrap().unwrap().unwrap().as_bytes(), &frame[..]);
        decoder.release_idle_room();
        assert_eq!(decoder.held_bytes(), 0);
    }
}
