//! The default receive mode, bounded: a lossy tube delivers every packet as
//! it arrives, as `{active, true}` does, but never more than its owner can
//! be shown to keep up with.
//!
//! The driver cannot see the owner's mailbox, so the node's receive governor
//! (src/tube_rx_governor.erl, one process per node) looks for it, and this
//! module decides from what it saw. A bounded tube delivers in windows,
//! counted on the credit of `{active, N}`. When half a window is gone the
//! driver sends the governor `{tube_rx_low, Port, Owner}` (once per window,
//! never per packet); the governor reads the tube's delivered count
//! (`CTL_RX_GRANT` with no data), then the owner's `message_queue_len`, and
//! hands both back in a `CTL_RX_GRANT` (a look, [`RxBound::look`]).
//!
//! A look grants a window only while the owner's mailbox is at most half the
//! tube's depth: [`RX_MAX_QUEUE`] packets, or fewer, [`RX_QUEUE_BYTES`] of
//! the tube's recent average packet. The window fills the mailbox up to that
//! depth and no further. Otherwise the tube is *held*: once what it was
//! granted is delivered it neither reads its ring nor asks to be woken, the
//! ring fills, and the peer's sends drop there and are counted on its side;
//! the owner is not told (it re-arms nothing). The look answers how long the
//! owner needs, at the rate it was seen to drain its mailbox between looks,
//! to bring the mailbox down to half the depth, and the governor looks again
//! after that long (microseconds, on its own clock, not the 1 ms timer
//! wheel): a shallow mailbox is refilled before it runs dry, and a deep one,
//! which costs the owner cache misses, is never built. Where looks come too
//! late all the same (a loaded machine, where the governor waits for a core
//! too), the depth grows, up to `RX_DEPTH_SCALE` times, and shrinks back
//! while looks come in time.
//!
//! The bound does not depend on the governor being prompt: the driver stops
//! by itself at the end of a window, and a window is granted only after a
//! look. The look's `Count` was read before its mailbox length, so the
//! mailbox then held at most `Queue` plus the packets delivered since
//! `Count`; the window is the depth less both. A bounded tube's packets in
//! its owner's mailbox never exceed the depth (at most `RX_MAX_QUEUE` times
//! `RX_DEPTH_SCALE`). A
//! late governor only costs a pause of delivery, never memory. A tube whose
//! peer has gone delivers what is left in its ring (at most one ring) before
//! it closes, as `{active, true}` does.

use std::ffi::{c_int, c_void, CStr};
use std::time::{Duration, Instant};

use tube_ring::proto::{MAX_PACKET, RX_DEPTH_SCALE, RX_MAX_QUEUE, RX_MAX_WAIT_US, RX_QUEUE_BYTES};

/// Opaque `ErlDrvPort`.
type DrvPort = *mut c_void;

/// `ErlDrvTermData` of a pid (an unsigned long in erl_driver.h).
type TermData = std::ffi::c_ulong;

extern "C" {
    fn tube_drv_caller(port: DrvPort) -> TermData;
    fn tube_drv_rx_low(port: DrvPort, to: TermData) -> c_int;
}

/// The open command word that asks for the bounded mode.
const COMMAND_WORD: &str = "bounded";

/// Shortest wait before a held tube is looked at again: below this the
/// look costs more than it can gain.
const MIN_WAIT_US: u64 = 20;

/// The wait of a held tube before any drain rate is known.
const FIRST_WAIT_US: u64 = 100;

/// Shortest time between two looks that updates the drain rate (a shorter
/// one measures the clock's grain rather than the owner).
const RATE_SPAN: Duration = Duration::from_micros(50);

/// The bounded mode's part of a port's state.
#[derive(Default)]
pub struct RxBound {
    /// The tube is in the bounded mode.
    on: bool,
    /// The governor's pid, learnt from its first look; 0 until then.
    governor: TermData,
    /// A look is due from the governor (asked for, or promised by a hold):
    /// the driver asks for none until it comes.
    asked: bool,
    /// Ask for a look once the credit is down to this.
    ask_at: u64,
    /// Since when the window has been used up with no new grant.
    held: Option<Instant>,
    /// Times a window ran out before the next grant, and the time spent
    /// so before now.
    held_count: u64,
    held_time: Duration,
    /// The owner's progress at the last look that measured it: when, and
    /// how many of the tube's packets it had taken from its mailbox.
    last: Option<(Instant, u64)>,
    /// Packets per microsecond the owner takes from its mailbox: the
    /// fastest it was seen to, fading by a quarter per look (0 until
    /// measured, or once it takes none). Leaning to the fast side costs a
    /// look too early, cheap; a look too late leaves the owner waiting.
    rate: f64,
    /// Whether `rate` has been measured.
    rated: bool,
    /// The recent average packet in bytes (0 until known), and the
    /// received counters it was last updated at.
    avg: u64,
    seen: (u64, u64),
    /// The next look is the one a hold promised (at the wait it answered).
    waited: bool,
    /// The depth's multiple of its base, 1 to `RX_DEPTH_SCALE` (0 is 1):
    /// doubled when a promised look finds the mailbox nearly empty (the
    /// owner read faster than foreseen, or the look came late: on a loaded
    /// machine the clock's thread and the governor wait for a core too),
    /// and brought back down by a fifth by every look that comes in time.
    scale: f64,
}

/// What a look decided.
pub struct Look {
    /// The tube's new credit, when granted a window.
    pub credit: Option<u64>,
    /// Microseconds before the next look; 0 when granted (the tube asks).
    pub wait_us: u64,
}

impl RxBound {
    /// The mode of `"tube_nif <Id> <Credit> ..."`: bounded when the credit
    /// word is `bounded`.
    pub fn from_command(credit_word: Option<&str>) -> RxBound {
        RxBound { on: credit_word == Some(COMMAND_WORD), ..RxBound::default() }
    }

    pub fn is_on(&self) -> bool {
        self.on
    }

    /// The credit a tube entering the bounded mode starts with: none until
    /// the governor has looked at the owner's mailbox.
    pub fn enter(&mut self) -> Option<u64> {
        self.on = true;
        self.asked = false;
        Some(0)
    }

    /// The owner chose another mode (`{active, _}`).
    pub fn leave(&mut self) {
        self.on = false;
        self.end_hold();
    }

    /// After a delivery: asks the governor for a look once half of the
    /// window is gone (once per window, and only once the governor is
    /// known: until its first look the tube has no window to run down).
    pub fn delivered(&mut self, port: DrvPort, credit: Option<u64>) {
        if !self.on || self.asked || self.governor == 0 {
            return;
        }
        if credit.is_some_and(|c| c <= self.ask_at) {
            self.asked = true;
            // SAFETY: `port` is the live port this runs for; the pid is a
            // term the emulator gave us, and sending to a pid that has
            // since exited is a no-op.
            unsafe { tube_drv_rx_low(port, self.governor) };
        }
    }

    /// The window ran out with no grant yet: the tube is held.
    pub fn hold(&mut self) {
        if self.held.is_none() {
            self.held = Some(Instant::now());
            self.held_count += 1;
        }
    }

    /// A look of the governor (`CTL_RX_GRANT`): the owner's mailbox held
    /// `queue` messages after the tube had delivered `count`; the tube has
    /// now delivered `delivered` packets of `bytes` bytes, and `credit` of
    /// its last window is still to come. `None` when the tube is not in the
    /// bounded mode (the owner has chosen another since): nothing changes.
    pub fn look(
        &mut self,
        port: DrvPort,
        count: u64,
        queue: u64,
        (delivered, bytes): (u64, u64),
        credit: Option<u64>,
    ) -> Option<Look> {
        if !self.on {
            return None;
        }
        // SAFETY: called from the port's control callback, where
        // driver_caller names the process making the call.
        self.governor = unsafe { tube_drv_caller(port) };
        let now = Instant::now();
        self.learn_size(delivered, bytes);
        self.learn_rate(now, count.saturating_sub(queue), queue == 0);
        self.learn_lateness(queue);
        let depth = self.depth();
        // At most this many of the tube's packets are in the mailbox now.
        let queued = queue.saturating_add(delivered.saturating_sub(count));
        if queued <= depth / 2 {
            let window = depth - queued;
            self.asked = false;
            self.ask_at = window / 2;
            self.end_hold();
            return Some(Look { credit: Some(window), wait_us: 0 });
        }
        // Held: what was granted before still goes out (it was counted
        // against the depth when granted); look again when the owner has
        // brought the mailbox down to half the depth.
        self.asked = true;
        self.waited = true;
        let excess = queued.saturating_add(credit.unwrap_or(0)).saturating_sub(depth / 2);
        Some(Look { credit: None, wait_us: self.wait_us(excess) })
    }

    /// The depth of this tube's part of the mailbox, in packets.
    fn depth(&self) -> u64 {
        let avg = if self.avg == 0 { MAX_PACKET } else { self.avg };
        let base = (RX_QUEUE_BYTES / avg).clamp(RX_QUEUE_BYTES / MAX_PACKET, RX_MAX_QUEUE);
        (base as f64 * self.scale.max(1.0)) as u64
    }

    /// A look that a hold promised, finding `queue` messages: nearly empty
    /// is too late, and the depth doubles (up to `RX_DEPTH_SCALE` times its
    /// base); in time, it shrinks by a fifth (down to its base).
    fn learn_lateness(&mut self, queue: u64) {
        if !std::mem::take(&mut self.waited) {
            return;
        }
        let scale = self.scale.max(1.0);
        self.scale = if queue <= self.depth() / 8 {
            (scale * 2.0).min(RX_DEPTH_SCALE as f64)
        } else {
            (scale * 0.8).max(1.0)
        };
    }

    /// The average packet since the last look, blended with the one before
    /// (a tube's sizes may change; the depth follows within a few looks).
    fn learn_size(&mut self, delivered: u64, bytes: u64) {
        let (p0, b0) = self.seen;
        let n = delivered.saturating_sub(p0);
        if n == 0 {
            return;
        }
        let avg = bytes.saturating_sub(b0) / n;
        self.avg = if self.avg == 0 { avg.max(1) } else { ((self.avg + avg) / 2).max(1) };
        self.seen = (delivered, bytes);
    }

    /// The owner's drain rate from its progress (`taken`: packets delivered
    /// before the look's count less those still queued) between looks. An
    /// owner found with an empty mailbox may have waited part of the time:
    /// what it took then is at most its pace, and the rate does not fade.
    fn learn_rate(&mut self, now: Instant, taken: u64, emptied: bool) {
        match self.last {
            Some((t, before)) if now.duration_since(t) >= RATE_SPAN => {
                let us = now.duration_since(t).as_secs_f64() * 1e6;
                let rate = taken.saturating_sub(before) as f64 / us;
                let fade = if emptied { 1.0 } else { 0.75 };
                self.rate = if self.rated { rate.max(self.rate * fade) } else { rate };
                self.rated = true;
                self.last = Some((now, taken));
            }
            Some(_) => {}
            None => self.last = Some((now, taken)),
        }
    }

    /// Microseconds the owner needs to take `excess` packets at its rate.
    fn wait_us(&self, excess: u64) -> u64 {
        if !self.rated {
            return FIRST_WAIT_US;
        }
        if self.rate <= 1e-3 {
            return RX_MAX_WAIT_US;
        }
        let us = excess as f64 / self.rate;
        (us as u64).clamp(MIN_WAIT_US, RX_MAX_WAIT_US)
    }

    fn end_hold(&mut self) {
        if let Some(since) = self.held.take() {
            self.held_time += since.elapsed();
        }
    }

    /// `rx_held` and `rx_held_us` of the counters.
    pub fn counters(&self) -> [u64; 2] {
        let now = self.held.map_or(Duration::ZERO, |t| t.elapsed());
        [self.held_count, (self.held_time + now).as_micros() as u64]
    }
}

/// Word `n` of the open command.
pub fn command_word(command: &CStr, n: usize) -> Option<&str> {
    command.to_str().ok()?.split_ascii_whitespace().nth(n)
}
