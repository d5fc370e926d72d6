//! How much a distribution port hands the emulator in one callback.
//!
//! Every message a distribution port delivers is decoded by the emulator
//! inside the port's callback, and the process it is for runs only once the
//! callback returns. Large messages come as 64 KiB fragments, each in a
//! binary of its own, and the emulator copies a message's fragments into one
//! buffer of the message's size. A pass that delivered a whole batch of
//! fragments (256 of them, 16 MiB) left the receiving process that many
//! megabytes behind: binaries of that size are mapped afresh each time once
//! the allocator's cache of free segments is exhausted, so the receiving
//! node then spent a third of its time in page faults, and ran at half the
//! speed of TCP at 1 MiB. A pass stops after `PASS_BYTES` instead, and the
//! port resumes from a zero timeout once the processes have had their turn.

/// Bytes of messages a distribution port delivers in one callback: one
/// message of 1 MiB, sixteen fragments.
pub(super) const PASS_BYTES: usize = 1 << 20;

/// Messages taken from the ring per read while a byte budget applies: the
/// budget is looked at between reads.
pub(super) const READ_MESSAGES: usize = 16;

/// Messages up to this size reach the emulator through the port's scratch
/// buffer and `driver_output`, larger ones in a driver binary filled from the
/// ring. The emulator copies a whole message out of either before the
/// callback returns (only fragments are kept until their message is
/// complete), so for a small message the binary is only an allocation and a
/// free more; for a fragment it is the buffer the emulator keeps.
pub(super) const SCRATCH: usize = 1024;

extern "C" {
    fn tube_drv_consume_timeslice(port: *mut std::ffi::c_void, percent: std::ffi::c_int) -> std::ffi::c_int;
}

/// The byte budget of one receive pass (unlimited on other ports).
pub(super) struct PassBytes {
    left: usize,
}

impl PassBytes {
    pub(super) fn new() -> PassBytes {
        PassBytes { left: usize::MAX }
    }

    /// A new pass: `PASS_BYTES` on a distribution port, no limit otherwise.
    pub(super) fn start(&mut self, dist: bool) {
        self.left = if dist { PASS_BYTES } else { usize::MAX };
    }

    /// True once the pass has delivered its bytes.
    pub(super) fn spent(&self) -> bool {
        self.left == 0
    }

    /// A message of `len` bytes was delivered.
    pub(super) fn take(&mut self, len: usize) {
        self.left = self.left.saturating_sub(len);
    }

    /// Share of a time slice, in percent, that the pass's bytes stand for.
    pub(super) fn used_percent(&self) -> i32 {
        if self.left == usize::MAX {
            return 0;
        }
        let used = PASS_BYTES - self.left;
        (used * 100 / PASS_BYTES) as i32
    }

    /// Tells the emulator what the pass cost (see the module's comment).
    pub(super) fn account(&self, port: *mut std::ffi::c_void) {
        let percent = self.used_percent();
        if percent > 0 {
            // SAFETY: `port` is the live port whose callback is running.
            unsafe { tube_drv_consume_timeslice(port, percent) };
        }
    }

    /// Messages the next read may take: all of `max`, or a few at a time
    /// while a budget applies.
    pub(super) fn read_size(&self, max: usize) -> usize {
        if self.left == usize::MAX {
            max
        } else {
            max.min(READ_MESSAGES)
        }
    }
}

/// Sends that skip the polling window at most, after windows that closed
/// with no reply: a probe every 64 sends.
const MAX_POLL_SKIP: u32 = 64;

/// When a distribution port polls for a reply after a send. Polling pays
/// while the peer answers within the window: the reply is found without a
/// wake-up. When the cores are all busy it does the opposite: the polling
/// scheduler holds a core the peer needs to answer, and a call took 120 us
/// where TCP took 40 (both nodes and other load on 2 cores). A window that
/// closes without a reply therefore makes the next sends skip polling, one
/// send after the first such window and twice as many after each further
/// one, up to `MAX_POLL_SKIP`; a window that hears a reply ends the backoff.
pub(super) struct PollBackoff {
    /// Sends to skip after the last empty window.
    skip: u32,
    /// Sends left to skip.
    left: u32,
}

impl PollBackoff {
    pub(super) fn new() -> PollBackoff {
        PollBackoff { skip: 0, left: 0 }
    }

    /// A send that could open a polling window: true if it may.
    pub(super) fn may_poll(&mut self) -> bool {
        if self.left == 0 {
            return true;
        }
        self.left -= 1;
        false
    }

    /// A polling window closed; `heard`: a reply came during it.
    pub(super) fn window_closed(&mut self, heard: bool) {
        self.skip = if heard { 0 } else { (self.skip * 2).clamp(1, MAX_POLL_SKIP) };
        self.left = self.skip;
    }
}

/// The turn of the processes a delivery made runnable, while the port polls.
///
/// Polling runs the port from a zero timeout after every look at the ring,
/// and a scheduler that has just run a port which used little of its time
/// slice runs the port's next task before the processes in its run queue:
/// the process a delivery made runnable (the server a request is for, or
/// the caller its reply is for) waited, in about half of the round trips of
/// a `gen_server:call`, while the port looked at the empty ring up to ten
/// times more (seen with uprobes on the port's timeout, `erts_net_message`
/// and `erts_dsig_send`). The first look after a delivery that finds the
/// ring empty therefore tells the emulator that the port used its whole
/// slice, and the processes run before the next look. Only that one: the
/// other looks keep their place, and a port that delivers nothing (a
/// one-way sender's) polls as before.
pub(super) struct ProcessTurn {
    /// Something was delivered since the processes last had their turn.
    due: bool,
}

impl ProcessTurn {
    pub(super) fn new() -> ProcessTurn {
        ProcessTurn { due: false }
    }

    /// A look while polling delivered `delivered` messages; an empty one
    /// after a delivery gives the processes their turn.
    pub(super) fn polled(&mut self, port: *mut std::ffi::c_void, delivered: usize) {
        if delivered > 0 {
            self.due = true;
        } else if self.due {
            self.due = false;
            // SAFETY: `port` is the live port whose callback is running.
            unsafe { tube_drv_consume_timeslice(port, 100) };
        }
    }
}
