//! The default receive mode, bounded: a lossy tube delivers every packet as
//! it arrives, as `{active, true}` does, but never more than its owner can
//! be shown to keep up with.
//!
//! The driver cannot see the owner's mailbox, so the node's receive governor
//! (src/tube_rx_governor.erl, one process per node) looks for it. A bounded
//! tube delivers in windows of `RX_WINDOW` packets, counted on the credit of
//! `{active, N}`: when half a window is gone the driver sends the governor
//! `{tube_rx_low, Port}` (one message per half window, never per packet),
//! and the governor grants a new window (`CTL_RX_GRANT`) only if the owner's
//! mailbox holds fewer than `RX_HIGH_WATER` messages. Otherwise the window
//! runs out and the tube is *held*: it neither reads its ring nor asks to be
//! woken, the ring fills, and the peer's sends drop there and are counted on
//! its side, exactly as for a passive tube; the owner is not told (it
//! re-arms nothing). The governor looks again every `RX_POLL_MS` and grants
//! once the mailbox is below `RX_LOW_WATER`.
//!
//! The bound does not depend on the governor being prompt: the driver stops
//! by itself at the end of a window, and a window is granted only after a
//! look at a mailbox below the high-water mark. The governor reads the
//! tube's delivered count before it looks, and the grant is a window less
//! what was delivered after that count, so no more than `RX_WINDOW` packets
//! follow any look that saw fewer than `RX_HIGH_WATER`: a bounded tube's
//! packets in its owner's mailbox never exceed `RX_HIGH_WATER + RX_WINDOW`. A late
//! governor only costs a pause of delivery, never memory. A tube whose peer
//! has gone delivers what is left in its ring (at most one ring) before it
//! closes, as `{active, true}` does.

use std::ffi::{c_int, c_void, CStr};
use std::time::{Duration, Instant};

use tube_ring::proto::RX_WINDOW;

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

/// The bounded mode's part of a port's state.
#[derive(Default)]
pub struct RxBound {
    /// The tube is in the bounded mode.
    on: bool,
    /// The governor's pid, learnt from its first grant; 0 until then.
    governor: TermData,
    /// `{tube_rx_low, Port}` was sent for the window now running.
    asked: bool,
    /// Since when the window has been used up with no new grant.
    held: Option<Instant>,
    /// Times a window ran out before the next grant, and the time spent
    /// so before now.
    held_count: u64,
    held_time: Duration,
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

    /// After a delivery: asks the governor for the next window once half of
    /// this one is gone (once per window, and only once the governor is
    /// known: until its first grant the tube has no window to run down).
    pub fn delivered(&mut self, port: DrvPort, credit: Option<u64>) {
        if !self.on || self.asked || self.governor == 0 {
            return;
        }
        if credit.is_some_and(|c| c <= RX_WINDOW / 2) {
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

    /// `CTL_RX_GRANT` from the governor, which read the delivered count,
    /// then looked at the mailbox: the caller becomes the governor and the
    /// tube's credit a window less the `since` packets delivered after that
    /// count (the look may have missed them), so that no more than a window
    /// follows a look. `None` when the tube is not in the bounded mode (the
    /// owner has chosen another since): nothing changes. A window left
    /// empty asks for the next look at once.
    pub fn grant(&mut self, port: DrvPort, since: u64) -> Option<u64> {
        if !self.on {
            return None;
        }
        // SAFETY: called from the port's control callback, where
        // driver_caller names the process making the call.
        self.governor = unsafe { tube_drv_caller(port) };
        self.asked = false;
        let window = RX_WINDOW.saturating_sub(since);
        if window > 0 {
            self.end_hold();
        }
        Some(window)
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
