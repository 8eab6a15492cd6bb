//! Congestion control toward the guest (RFC 5681's slow start, congestion avoidance and
//! halving on loss): how much unacknowledged data a connection may have out.
//!
//! Most ports never lose a frame the gateway hands them: a full queue makes the gateway
//! wait. A datagram, multicast, VDE or VXLAN port can lose frames past the gateway,
//! though, when the guest reads slower than the host writes. Without a congestion
//! window every loss made the gateway send the whole guest window again at once, into the
//! same full buffer, and a guest behind such a port got almost nothing. With it, a loss
//! halves what may be out, and a port that never loses lets the window grow to the
//! connection's own limit within a few round trips.
//!
//! This file knows byte counts only: nothing of segments, sockets or ports.

/// The most a connection sends the guest before waiting for ACKs.
const MAX_IN_FLIGHT: usize = 4 << 20;
/// The most segments a connection has in flight toward a guest, whatever its MSS.
const MAX_SEGMENTS_IN_FLIGHT: usize = 1024;
/// Segments a connection may send before its first ACK (RFC 6928's initial window).
const INITIAL_SEGMENTS: usize = 10;
/// The least the window is cut to after a loss, in segments.
const FLOOR_SEGMENTS: usize = 2;

/// A connection's congestion window and slow-start threshold, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CongestionWindow {
    window: usize,
    slow_start_threshold: usize,
    mss: usize,
    /// The most the window grows to: the connection's own limit on data in flight.
    ceiling: usize,
}

impl CongestionWindow {
    /// The window of a new connection of segments of `mss` bytes.
    pub fn new(mss: usize) -> Self {
        Self::with_ceiling(mss, MAX_IN_FLIGHT.min(mss.saturating_mul(MAX_SEGMENTS_IN_FLIGHT)))
    }

    /// The same, never letting more than `ceiling` bytes be in flight.
    fn with_ceiling(mss: usize, ceiling: usize) -> Self {
        let mss = mss.max(1);
        Self { window: (INITIAL_SEGMENTS * mss).min(ceiling), slow_start_threshold: ceiling, mss, ceiling }
    }

    /// How many bytes may be unacknowledged now.
    pub fn allowed(&self) -> usize {
        self.window
    }

    /// The guest acknowledged `acked` new bytes: grow by as much below the threshold
    /// (slow start), by about a segment per window's worth above it.
    pub fn on_acked(&mut self, acked: usize) {
        let growth = if self.window < self.slow_start_threshold {
            acked
        } else {
            (self.mss.saturating_mul(acked) / self.window).max(1)
        };
        self.window = self.window.saturating_add(growth).min(self.ceiling);
    }

    /// Duplicate ACKs showed a segment lost with `in_flight` bytes out: halve.
    pub fn on_loss(&mut self, in_flight: usize) {
        self.slow_start_threshold = self.floor().max(in_flight / 2);
        self.window = self.slow_start_threshold;
    }

    /// The retransmission timer ran out with `in_flight` bytes out: start again from one
    /// segment, up to half of what was out.
    pub fn on_timeout(&mut self, in_flight: usize) {
        self.slow_start_threshold = self.floor().max(in_flight / 2);
        self.window = self.mss.min(self.ceiling);
    }

    fn floor(&self) -> usize {
        (FLOOR_SEGMENTS * self.mss).min(self.ceiling)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSS: usize = 1460;

    #[test]
    fn a_new_connection_may_send_ten_segments_and_doubles_each_round_trip() {
        let mut window = CongestionWindow::new(MSS);
        assert_eq!(window.allowed(), 10 * MSS);
        assert_eq!(window.ceiling, 1024 * MSS);
        assert_eq!(CongestionWindow::new(9000).ceiling, 4 << 20);
        window.on_acked(10 * MSS);
        assert_eq!(window.allowed(), 20 * MSS);
    }

    #[test]
    fn a_loss_halves_what_was_out_and_growth_is_then_linear() {
        let mut window = CongestionWindow::new(MSS);
        window.on_acked(90 * MSS);
        window.on_loss(100 * MSS);
        assert_eq!(window.allowed(), 50 * MSS);
        window.on_acked(50 * MSS);
        assert_eq!(window.allowed(), 51 * MSS, "one segment per window's worth of ACKs");
    }

    #[test]
    fn a_timeout_starts_again_from_one_segment_and_slow_starts_to_half() {
        let mut window = CongestionWindow::new(MSS);
        window.on_timeout(40 * MSS);
        assert_eq!(window.allowed(), MSS);
        window.on_acked(MSS);
        window.on_acked(2 * MSS);
        window.on_acked(4 * MSS);
        window.on_acked(8 * MSS);
        assert_eq!(window.allowed(), 16 * MSS);
        window.on_acked(16 * MSS);
        assert_eq!(window.allowed(), 32 * MSS, "slow start runs past the threshold of 20 once");
        window.on_acked(32 * MSS);
        assert_eq!(window.allowed(), 33 * MSS);
    }

    #[test]
    fn the_window_never_passes_the_ceiling_nor_falls_below_two_segments_on_loss() {
        let mut window = CongestionWindow::with_ceiling(MSS, 64 * MSS);
        for _ in 0..20 {
            window.on_acked(64 * MSS);
        }
        assert_eq!(window.allowed(), 64 * MSS);
        window.on_loss(MSS);
        assert_eq!(window.allowed(), 2 * MSS);
        let mut tiny = CongestionWindow::with_ceiling(MSS, MSS / 2);
        tiny.on_loss(0);
        assert_eq!(tiny.allowed(), MSS / 2);
    }
}
