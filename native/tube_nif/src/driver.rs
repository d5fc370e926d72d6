//! The tube port driver: one port per tube end, moving packets between the
//! owner process and the ring engine.
//!
//! Sending is `port_command` → `outputv` → [`Tube::send`]: never blocks, a
//! full ring is a counted drop. A reliable tube (`delivery => reliable`)
//! sends whole messages of any size with [`Tube::send_message`] instead:
//! what does not fit waits in the tube's outbox, the port goes busy (so
//! `port_command` suspends its callers), and the peer's reader wakes us on
//! the event fd when it frees room; the port resumes once the outbox is
//! empty and half the ring is free. Receiving is event driven: the driver selects
//! on the tube's event fd, and on a wakeup drains a bounded batch, delivering
//! each packet as `{Port, {data, Binary}}`. A batch that fills its budget
//! yields and resumes from a zero timeout, so one busy tube cannot hold a
//! scheduler. When the ring is empty the driver announces that it sleeps
//! (the peer then signals on the fd) and nothing runs until it does.
//!
//! The `tube_rs_*` functions are the callbacks of the C entry in
//! `c_src/tube_drv.c`. None of them may unwind into C: each body runs inside
//! `catch_unwind`, and a panic closes the tube with reason `internal_error`.

use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_void, CStr};
use std::os::fd::RawFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tube_dist_frag::{Defrag, Landed, NoMemory};
use tube_ring::{Assembly, MessageBuf, Pass, RingError, SendError, Tube, MAX_PACKET};

use crate::handoff;
use crate::rx_bound::{self, RxBound};

mod batch;
mod dist;
mod frag_store;

/// Packets delivered per callback before yielding to the scheduler.
const BATCH: usize = 256;

/// Polls of an empty ring before the driver sleeps on the event fd
/// (a few microseconds; see `PortState::drain`).
const SPINS: u32 = 200;

/// Packets found by one read that mark a flowing stream, worth the spin.
const STREAMING: usize = 8;

/// How long a tube polls its ring for a reply after a send, when the open
/// command does not say (`{busy_poll, Us}` in src/tube.erl). A reply found
/// by polling costs no wake-up of the poll thread and of a sleeping
/// scheduler, which an fd event does.
const DEFAULT_BUSY_POLL: Duration = Duration::from_micros(50);

/// The longest polling window a tube accepts, in microseconds.
const MAX_BUSY_POLL_US: u64 = tube_ring::proto::MAX_BUSY_POLL_US;

/// Room a busy port with messages in its outbox waits for: one full record.
const OUTBOX_ROOM: usize = MAX_PACKET + 8;

/// Opaque `ErlDrvPort`.
type DrvPort = *mut c_void;

extern "C" {
    fn tube_drv_select(port: DrvPort, fd: isize, on: c_int) -> c_int;
    fn tube_drv_deliver(port: DrvPort, buf: *const c_char, len: usize) -> c_int;
    fn tube_drv_resume_later(port: DrvPort) -> c_int;
    fn tube_drv_close(port: DrvPort, reason: *const c_char) -> c_int;
    fn tube_drv_passive(port: DrvPort) -> c_int;
    fn tube_drv_alloc_binary(len: usize, data: *mut *mut c_char) -> *mut c_void;
    fn tube_drv_deliver_binary(port: DrvPort, bin: *mut c_void, len: usize) -> c_int;
    fn tube_drv_free_binary(bin: *mut c_void);
    fn tube_drv_set_busy(port: DrvPort, on: c_int);
    fn tube_drv_fail(port: DrvPort) -> c_int;
    fn tube_drv_set_timer(port: DrvPort, ms: std::ffi::c_ulong) -> c_int;
}

/// Tubes whose port has stopped, kept open until the emulator calls
/// `stop_select` for their fd (closing it earlier races with the poll set);
/// with whether they may linger to deliver their outbox (`linger`).
static RETIRED: Mutex<Option<HashMap<RawFd, (Tube, bool)>>> = Mutex::new(None);

/// Counters returned by the stats control (see `tube_rs_stats`).
const STATS_N: usize = tube_ring::proto::STATS.len();

/// Per-port state, owned by the emulator between `start` and `stop`.
struct PortState {
    port: DrvPort,
    tube: Tube,
    fd: RawFd,
    /// Packets refused for their size (0 or over 4096 bytes).
    rejected: u64,
    /// Wakeups received on the event fd.
    wakeups: u64,
    /// Set once the port is being failed: no callback may touch it again.
    closing: bool,
    /// A close asked for by the control plane, carried out from a timeout.
    close_requested: Option<CloseReason>,
    /// Until when a requested close of a reliable tube waits for the ring's
    /// hang-up (`close_waits`).
    close_after: Option<Instant>,
    /// Packets the owner still takes before the tube goes passive (`{active,
    /// N}`); `None` is `{active, true}`, the default. While it is zero the
    /// driver neither reads the ring nor asks to be woken: the ring fills up
    /// and the peer's sends drop, counted on its side, instead of packets
    /// piling up in the owner's mailbox.
    credit: Option<u64>,
    /// The polling window (`{busy_poll, Us}`); zero never polls.
    busy_poll: Duration,
    /// Polling the ring from zero timeouts instead of sleeping on the fd
    /// (the peer has been told not to send wake-ups).
    polling: bool,
    /// When polling stops unless a packet arrives before.
    poll_until: Instant,
    /// Packets have arrived since the last polling window closed empty: a
    /// send opens a new window.
    replies: bool,
    /// A packet arrived during the current polling window.
    heard: bool,
    /// Whole messages of any size, never dropped (`delivery => reliable`).
    reliable: bool,
    /// The port carries an Erlang distribution connection: empty messages
    /// are ticks (counted, not delivered), and closing tells no owner.
    dist: bool,
    /// Where received packets go.
    inbox: Inbox,
    /// The port is busy: the outbox is not empty, or the ring has not yet
    /// drained to `Tube::resume_room` free bytes since it was.
    busy: Option<Instant>,
    /// A busy distribution port's window of polling for room: when it
    /// closes, and the outbox's bytes when it opened (see `poll_for_room`).
    room_poll: Option<(Instant, usize)>,
    /// Times the port went busy, and the time it spent busy before now.
    busy_count: u64,
    busy_time: Duration,
    /// The default, bounded mode (see rx_bound.rs), which also runs on `credit`.
    bound: RxBound,
    /// Distribution ports: sends that skip polling after unanswered windows.
    backoff: dist::PollBackoff,
    /// Distribution ports: the processes' turn after a delivery.
    turn: dist::ProcessTurn,
}

/// Why a tube is closed, as the atom sent to the owner in
/// `{tube_closed, Port, Reason}`.
#[derive(Clone, Copy)]
enum CloseReason {
    PeerClosed,
    PeerDown,
    Corrupt,
    IoError,
    InternalError,
    DeliveryMismatch,
}

impl CloseReason {
    fn atom(self) -> &'static CStr {
        match self {
            CloseReason::PeerClosed => c"peer_closed",
            CloseReason::PeerDown => c"peer_down",
            CloseReason::Corrupt => c"corrupt",
            CloseReason::IoError => c"io_error",
            CloseReason::InternalError => c"internal_error",
            CloseReason::DeliveryMismatch => c"delivery_mismatch",
        }
    }

    fn of(e: &RingError) -> CloseReason {
        match e {
            RingError::PeerGone => CloseReason::PeerClosed,
            RingError::Corrupt(_) => CloseReason::Corrupt,
            RingError::DeliveryMismatch => CloseReason::DeliveryMismatch,
            _ => CloseReason::IoError,
        }
    }
}

impl PortState {
    /// Delivers up to one batch, then either sleeps on the fd or resumes
    /// from a zero timeout. When a stream is flowing (the last read found
    /// several packets) an empty ring is polled briefly first: a busy writer
    /// refills it far sooner than a wakeup through the event fd and the poll
    /// thread would come. A lone packet (request/response traffic) returns
    /// at once, so the owner runs without delay.
    fn drain(&mut self) {
        if let Some(reason) = self.close_requested {
            if !self.close_waits() {
                let reason = self.requested_reason(reason);
                return self.close(reason);
            }
        }
        let budget = self.budget();
        if budget == 0 {
            return;
        }
        self.inbox.pass.start(self.dist);
        let PortState { tube, inbox, credit, .. } = self;
        let pass = tube.receive_pass(
            budget,
            SPINS,
            STREAMING,
            |tube, max| inbox.receive(tube, max),
            |got| take_credit(credit, got),
        );
        self.inbox.pass.account(self.port);
        self.bound.delivered(self.port, self.credit);
        let delivered = match pass {
            Ok((Pass::Stopped, _)) => return self.go_passive(),
            Ok((Pass::Budget, _)) => return self.resume_later(),
            // A distribution port that delivered its pass's bytes goes on
            // once the processes have run (driver/dist.rs).
            Ok((Pass::Empty, _)) if self.inbox.pass.spent() => return self.resume_later(),
            Ok((Pass::Empty, n)) => n,
            Err(e) => return self.close(CloseReason::of(&e)),
        };
        if self.keep_polling(delivered) {
            if self.dist {
                self.turn.polled(self.port, delivered);
            }
            return self.resume_later();
        }
        if !self.tube.prepare_sleep() {
            // A packet arrived while we were announcing sleep.
            self.resume_later();
        }
    }

    /// A close the control plane asked for (the peer's state in Xenstore)
    /// waits, on a reliable tube, for the ring's hang-up, which comes once
    /// the peer has put in the ring what it sent before its close
    /// (`linger`): at most `linger::LINGER` and a second, then it closes.
    /// True while it waits, with a timer set for the rest of the wait.
    fn close_waits(&mut self) -> bool {
        if !self.reliable || self.dist || !self.tube.is_open() {
            return false;
        }
        let until = *self
            .close_after
            .get_or_insert_with(|| Instant::now() + crate::linger::LINGER + Duration::from_secs(1));
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        let ms = std::ffi::c_ulong::try_from(left.as_millis() + 1).unwrap_or(std::ffi::c_ulong::MAX);
        // SAFETY: `self.port` is the live port of this state.
        unsafe { tube_drv_set_timer(self.port, ms) };
        true
    }

    /// The reason for a close the control plane asked for: a peer whose end of the event
    /// socket is gone is `peer_closed` even when its domain was released first (kill -9
    /// does both, and the release may be handled while the ring is still being drained).
    fn requested_reason(&mut self, reason: CloseReason) -> CloseReason {
        let _ = self.tube.on_readable();
        if self.tube.is_open() {
            reason
        } else {
            CloseReason::PeerClosed
        }
    }

    /// The ring is empty: true to poll it again from a zero timeout. Polling
    /// lasts while the window opened by a send (`start_polling`) is open; a
    /// packet arriving extends it. A window that closes empty tells that the
    /// peer is not answering, and sends stop opening new ones.
    fn keep_polling(&mut self, delivered: usize) -> bool {
        if delivered > 0 {
            self.replies = true;
        }
        if !self.polling {
            return false;
        }
        let now = Instant::now();
        if delivered > 0 {
            self.heard = true;
            self.poll_until = now + self.busy_poll;
        }
        if now < self.poll_until {
            self.tube.stay_awake();
            return true;
        }
        self.polling = false;
        self.replies = self.heard;
        if self.dist {
            self.backoff.window_closed(self.heard);
        }
        false
    }

    /// A packet went out while the tube is not polling. If the peer has been
    /// answering, its reply is likely within `busy_poll`: poll for it. A
    /// one-way sender never polls, nor does a one-way receiver, so a stream
    /// leaves the scheduler to the processes.
    fn start_polling(&mut self) {
        if self.polling || !self.replies || self.credit == Some(0) || self.busy_poll.is_zero() {
            return;
        }
        if self.dist && !self.backoff.may_poll() {
            return;
        }
        self.polling = true;
        self.heard = false;
        self.poll_until = Instant::now() + self.busy_poll;
        self.tube.stay_awake();
        self.resume_later();
    }

    /// Packets one callback may deliver: a batch, or less if the credit is.
    fn budget(&self) -> usize {
        let batch = if self.inbox.batch.is_some() { batch::BUDGET } else { BATCH };
        self.credit.map_or(batch, |c| batch.min(usize::try_from(c).unwrap_or(batch)))
    }

    /// Counts `n` delivered packets against the credit; true when it ran out.
    fn take_credit(&mut self, n: usize) -> bool {
        take_credit(&mut self.credit, n)
    }

    /// Credit exhausted: tell the owner with `{tube_passive, Port}` and stop
    /// reading until it grants more (no sleep is announced, so the peer does
    /// not wake us either).
    fn go_passive(&mut self) {
        self.polling = false;
        if self.bound.is_on() {
            return self.bound.hold();
        }
        // SAFETY: `self.port` is the live port of this state.
        unsafe { tube_drv_passive(self.port) };
    }

    /// `{active, _}` from the owner: `mode` 0 sets no limit, 1 sets the
    /// credit to `n`, 2 adds `n` to it.
    fn set_active(&mut self, mode: u8, n: u64) -> bool {
        use tube_ring::proto::{ACTIVE_ADD, ACTIVE_BOUNDED, ACTIVE_NO_LIMIT, ACTIVE_SET};
        if mode == ACTIVE_BOUNDED {
            // No packet until the governor has looked at the owner's mailbox.
            self.credit = self.bound.enter();
            self.bound.delivered(self.port, self.credit);
            return true;
        }
        let was_bounded = self.bound.is_on();
        self.bound.leave();
        self.credit = match (mode, self.credit) {
            (ACTIVE_ADD, _) if was_bounded => Some(n),
            (ACTIVE_NO_LIMIT, _) => None,
            (ACTIVE_SET, _) => Some(n),
            (ACTIVE_ADD, None) => Some(n),
            (ACTIVE_ADD, Some(c)) => Some(c.saturating_add(n)),
            _ => return false,
        };
        if self.credit != Some(0) {
            self.deliver_granted();
        }
        true
    }

    /// Credit was granted: what the ring holds goes to the owner at once,
    /// inside its setopts call. Waiting for a zero timeout instead ties the
    /// owner's next packets to the timer wheel, which a thousand busy ports
    /// can hold up for hundreds of milliseconds. Closing, sleeping and the
    /// rest of a long ring are left to the timeout that follows.
    fn deliver_granted(&mut self) {
        if self.close_requested.is_none() && self.tube.is_open() {
            let budget = self.budget();
            // A failure is left to the timeout that follows, which meets it
            // again (the tube, or the inbox, remembers it) and closes.
            if let Ok(got) = self.receive(budget) {
                let ran_out = self.take_credit(got);
                self.bound.delivered(self.port, self.credit);
                if ran_out {
                    return self.go_passive();
                }
            }
        }
        self.resume_later();
    }

    /// `{busy_poll, Us}` from the owner; a window in progress keeps its end.
    fn set_busy_poll(&mut self, us: u64) -> bool {
        if us > MAX_BUSY_POLL_US {
            return false;
        }
        self.busy_poll = Duration::from_micros(us);
        true
    }

    fn resume_later(&self) {
        // SAFETY: `self.port` is the live port of this state.
        unsafe { tube_drv_resume_later(self.port) };
    }

    /// Tells the owner and fails the port. The emulator may call `stop`
    /// from inside this call, so it must be the caller's last use of `self`.
    fn close(&mut self, reason: CloseReason) {
        if self.closing {
            return;
        }
        self.closing = true;
        if self.dist {
            // The emulator takes the connection down with the port.
            // SAFETY: the port is live.
            unsafe { tube_drv_fail(self.port) };
            return;
        }
        // SAFETY: the port is live; the reason is a NUL-terminated static.
        unsafe { tube_drv_close(self.port, reason.atom().as_ptr()) };
    }

    /// `outputv` of a reliable tube: one message made of `parts`.
    fn send_message(&mut self, parts: &[&[u8]]) {
        match self.tube.send_message(parts) {
            Ok(()) => {}
            Err(SendError::BadSize(_)) | Err(SendError::Full) => {
                self.rejected += 1;
                return;
            }
            Err(SendError::Closed) => return,
            Err(SendError::Corrupt) => return self.close(CloseReason::Corrupt),
        }
        if self.tube.queued_bytes() > 0 {
            self.go_busy();
        }
        if self.busy.is_some() {
            self.pump();
        } else {
            self.start_polling();
        }
    }

    fn go_busy(&mut self) {
        if self.busy.is_none() {
            self.busy = Some(Instant::now());
            self.busy_count += 1;
            // SAFETY: `self.port` is the live port of this state.
            unsafe { tube_drv_set_busy(self.port, 1) };
        }
    }

    fn resume(&mut self) {
        self.room_poll = None;
        if let Some(since) = self.busy.take() {
            self.busy_time += since.elapsed();
            // SAFETY: `self.port` is the live port of this state.
            unsafe { tube_drv_set_busy(self.port, 0) };
        }
    }

    /// A busy distribution port looks for room again from a zero timeout,
    /// for as long as it would poll for a reply (`busy_poll`) since the ring
    /// last took some of its outbox, instead of sleeping until the reader
    /// wakes it. A stream of large messages fills the ring with a few of
    /// them, so it waits for room every few messages; each such wait through
    /// the event fd costs two wake-ups (the reader woken for data, this port
    /// for room), and when the host is slow to deliver them a 64 KiB stream
    /// ran at a fifth of its rate. True while the window is open.
    fn poll_for_room(&mut self, queued: usize) -> bool {
        if !self.dist || self.busy_poll.is_zero() {
            return false;
        }
        let now = Instant::now();
        let moved = self.room_poll.map_or(true, |(_, q)| queued < q);
        if moved {
            self.room_poll = Some((now + self.busy_poll, queued));
        }
        matches!(self.room_poll, Some((until, _)) if now < until)
    }

    /// A busy port writes what the ring takes, and either resumes (outbox
    /// empty, half the ring free) or waits for the peer's reader to free
    /// room, with the wait protocol of `Producer::prepare_wait`: the flag is
    /// set and the room re-checked, so a wake-up cannot be lost.
    fn pump(&mut self) {
        loop {
            match self.tube.flush() {
                Ok(()) => {}
                // The hang-up arrives on the fd and closes the port.
                Err(SendError::Closed) => return,
                Err(_) => return self.close(CloseReason::Corrupt),
            }
            let queued = self.tube.queued_bytes();
            if queued == 0 && self.tube.room(self.tube.resume_room()) {
                return self.resume();
            }
            // With messages waiting, any room the reader frees is worth
            // filling at once (it frees a quarter ring at a time); with none,
            // the port waits for half the ring before it takes new ones.
            let need = if queued > 0 { OUTBOX_ROOM } else { self.tube.resume_room() };
            if self.poll_for_room(queued) {
                return self.resume_later();
            }
            if self.tube.prepare_wait_room(need) || !self.tube.is_open() {
                return;
            }
        }
    }

    /// Delivers up to `max` packets or messages to the owner (or, on a
    /// distribution port, to the emulator).
    fn receive(&mut self, max: usize) -> Result<usize, RingError> {
        self.inbox.pass.start(false);
        self.inbox.receive(&mut self.tube, max)
    }

    fn send(&mut self, pkt: Option<&[u8]>) {
        let Some(pkt) = pkt.filter(|p| (1..=MAX_PACKET).contains(&p.len())) else {
            self.rejected += 1;
            return;
        };
        #[cfg(feature = "fault-injection")]
        match pkt {
            fault::IO_ERROR => {
                let e = RingError::Io(std::io::Error::from_raw_os_error(libc::EIO));
                return self.close(CloseReason::of(&e));
            }
            fault::PANIC => panic!("fault injected by a test"),
            _ => {}
        }
        match self.tube.send(pkt) {
            Ok(()) => self.start_polling(),
            Err(SendError::Full) | Err(SendError::BadSize(_)) => {}
            // The peer's hang-up arrives on the fd and closes the port.
            Err(SendError::Closed) => {}
            Err(SendError::Corrupt) => self.close(CloseReason::Corrupt),
        }
    }

    fn stats(&self) -> [u64; STATS_N] {
        let s = self.tube.stats();
        [
            s.sent_pkts,
            s.sent_bytes,
            s.recv_pkts,
            s.recv_bytes,
            s.dropped,
            self.rejected,
            self.wakeups,
            self.tube.peer_pid().map_or(0, |p| p as u64),
            self.busy_poll.as_micros() as u64,
            u64::from(self.polling),
            self.busy_count,
            (self.busy_time + self.busy.map_or(Duration::ZERO, |t| t.elapsed())).as_micros() as u64,
            self.tube.queued_bytes() as u64,
            self.bound.counters()[0],
            self.bound.counters()[1],
            self.inbox.frags.counts().joined,
            self.inbox.frags.counts().passed_on,
        ]
    }
}

/// Faults a test can cause, in builds with the cargo feature `fault-injection` only (the
/// suite builds such a library of its own for one peer node; see test/behaviour_test.exs):
/// a packet of exactly these bytes is not sent, and instead the port fails as it would on an
/// I/O error of the ring, or on a panic inside the driver.
#[cfg(feature = "fault-injection")]
mod fault {
    /// Closes the port as an I/O error of the ring does: `{tube_closed, T, io_error}`.
    pub const IO_ERROR: &[u8] = b"tube-fault-injection:io_error";
    /// Panics inside the callback: `{tube_closed, T, internal_error}`.
    pub const PANIC: &[u8] = b"tube-fault-injection:panic";
}

/// Packets up to this size go out through a scratch buffer (the emulator
/// copies them into a heap binary anyway); larger ones are copied once,
/// straight from the ring into the binary the owner receives.
const SMALL_PACKET: usize = 64;

/// Where one packet is being copied to.
enum Dest {
    Scratch,
    Binary(*mut c_void),
}

/// Where one message of a reliable tube is being put together: the port's
/// scratch buffer (small ones, which `driver_output` copies), a driver
/// binary handed over without a copy, or the buffer of the distribution
/// message whose fragments are being joined (`Joined`, owned by the port's
/// `Defrag`).
enum MsgDest {
    Scratch(*mut u8),
    Binary { bin: *mut c_void, data: *mut u8 },
    Joined(*mut u8),
}

impl MsgDest {
    /// Memory for a message of `len` bytes; `None` when out of memory.
    fn new(scratch: *mut u8, small: usize, len: usize) -> Option<MsgDest> {
        if len <= small {
            return Some(MsgDest::Scratch(scratch));
        }
        let mut data: *mut c_char = std::ptr::null_mut();
        // SAFETY: plain allocation through the emulator; `data` receives the
        // binary's byte pointer.
        let bin = unsafe { tube_drv_alloc_binary(len, &mut data) };
        if bin.is_null() || data.is_null() {
            return None;
        }
        Some(MsgDest::Binary { bin, data: data as *mut u8 })
    }

    /// What a `Binary` holds, now the caller's to deliver or free.
    fn into_binary(self) -> Option<(*mut c_void, *mut u8)> {
        let me = std::mem::ManuallyDrop::new(self);
        match *me {
            MsgDest::Binary { bin, data } => Some((bin, data)),
            _ => None,
        }
    }

    /// Hands the message to the port's owner (or the emulator's
    /// distribution entry) as `{Port, {data, Binary}}`.
    fn deliver(self, port: DrvPort, len: usize) {
        let me = std::mem::ManuallyDrop::new(self);
        match *me {
            // SAFETY: `port` is live; the scratch holds `len` bytes of the
            // message; driver_output copies them.
            MsgDest::Scratch(p) => unsafe {
                tube_drv_deliver(port, p as *const c_char, len);
            },
            // SAFETY: `bin` holds the message; the helper hands it over and
            // drops our reference, so `Drop` must not run (ManuallyDrop).
            MsgDest::Binary { bin, .. } => unsafe {
                tube_drv_deliver_binary(port, bin, len);
            },
            // Only the joiner delivers what lands in its buffer.
            MsgDest::Joined(_) => {}
        }
    }
}

// SAFETY: the scratch buffer is the port's boxed `dist::SCRATCH` bytes (asked
// only for messages that fit) and a binary's bytes are on the emulator's
// heap: neither moves when the `MsgDest` does, and each is used by one
// message at a time. A `Joined` slot has the message's length of room (the
// joiner made it) and the joiner neither moves nor reads it until the
// message has landed.
unsafe impl MessageBuf for MsgDest {
    fn as_mut_ptr(&mut self) -> *mut u8 {
        match *self {
            MsgDest::Scratch(p) | MsgDest::Joined(p) => p,
            MsgDest::Binary { data, .. } => data,
        }
    }
}

impl Drop for MsgDest {
    /// A message that is never delivered (the tube closed halfway) frees
    /// its binary.
    fn drop(&mut self) {
        if let MsgDest::Binary { bin, .. } = *self {
            // SAFETY: our only reference to a binary that was not handed over.
            unsafe { tube_drv_free_binary(bin) };
        }
    }
}

/// Counts `n` delivered packets against a credit; true when it ran out.
fn take_credit(credit: &mut Option<u64>, n: usize) -> bool {
    match credit {
        None => false,
        Some(c) => {
            *c = c.saturating_sub(n as u64);
            *c == 0
        }
    }
}

/// What receiving needs besides the tube: where packets go and how.
struct Inbox {
    port: DrvPort,
    reliable: bool,
    /// Empty messages are distribution ticks: counted, not delivered.
    dist: bool,
    /// A reliable message being put back together.
    asm: Option<Assembly<MsgDest>>,
    /// Small messages are copied here before `driver_output` copies them.
    scratch: Box<[u8; dist::SCRATCH]>,
    /// `{deliver, batch}`: many packets per message (lossy tubes only).
    batch: Option<batch::Batcher>,
    /// Bytes the current pass may still deliver (distribution ports).
    pass: dist::PassBytes,
    /// Distribution ports: a large message's fragments, joined into one.
    frags: Defrag<frag_store::Binaries>,
    /// Memory ran out while the joiner sent held fragments on: some are lost,
    /// so the channel must end; every later receive says so until the port
    /// closes, and takes nothing more from the ring.
    out_of_memory: bool,
}

impl Inbox {
    /// Delivers up to `max` packets or messages to the owner (or, on a
    /// distribution port, to the emulator).
    fn receive(&mut self, tube: &mut Tube, max: usize) -> Result<usize, RingError> {
        if !self.reliable {
            if let Some(b) = self.batch.as_mut() {
                return b.receive(tube, self.port, max);
            }
            return recv_to_owner(tube, self.port, max);
        }
        let (port, dist) = (self.port, self.dist);
        let scratch = self.scratch.as_mut_ptr();
        let small = if dist { dist::SCRATCH } else { SMALL_PACKET };
        let mut total = 0;
        let out_of_memory = std::cell::Cell::new(self.out_of_memory);
        while total < max && !self.pass.spent() && !out_of_memory.get() {
            let want = self.pass.read_size(max - total);
            let pass = &mut self.pass;
            // Both callbacks reach the joiner, never at the same time.
            let frags = std::cell::RefCell::new(&mut self.frags);
            let alloc = |len: usize| {
                if !dist {
                    return MsgDest::new(scratch, small, len);
                }
                // After a loss nothing more is taken: it stays in the ring.
                if out_of_memory.get() {
                    return None;
                }
                match frags.borrow_mut().slot(len) {
                    Some(p) => Some(MsgDest::Joined(p)),
                    None => MsgDest::new(scratch, small, len),
                }
            };
            let got = tube.recv_messages(&mut self.asm, want, alloc, |dest, len| {
                pass.take(len);
                if !dist {
                    return dest.deliver(port, len);
                }
                // A tick is counted, not delivered, and holds nothing up.
                if len == 0 || out_of_memory.get() {
                    return;
                }
                if deliver_dist(&mut frags.borrow_mut(), port, dest, len).is_err() {
                    out_of_memory.set(true);
                }
            })?;
            total += got;
            if got < want {
                break;
            }
        }
        if out_of_memory.get() {
            self.out_of_memory = true;
            return Err(RingError::Corrupt("no memory to pass distribution fragments on"));
        }
        Ok(total)
    }
}

/// One message of a distribution port, through the fragment joiner
/// (`tube_dist_frag`): held as part of a large message, or delivered, after
/// whatever the joiner held before it.
fn deliver_dist(frags: &mut Defrag<frag_store::Binaries>, port: DrvPort, dest: MsgDest, len: usize) -> Result<(), NoMemory> {
    let (bin, data) = match dest {
        MsgDest::Joined(_) => match frags.landed(len)? {
            Landed::Held | Landed::Done => return Ok(()),
            Landed::Other(bin, data, _) => (bin, data),
        },
        MsgDest::Scratch(p) => {
            // SAFETY: the scratch buffer holds the message's `len` bytes, untouched until
            // the next message.
            frags.pass(unsafe { std::slice::from_raw_parts(p, len) })?;
            dest.deliver(port, len);
            return Ok(());
        }
        MsgDest::Binary { .. } => dest.into_binary().expect("a binary"),
    };
    if let Some(bin) = frags.arrive(bin, data, len)? {
        // SAFETY: `port` is live; `bin` holds the message's `len` bytes and is
        // ours to hand over.
        unsafe { tube_drv_deliver_binary(port, bin, len) };
    }
    Ok(())
}

/// Delivers up to `max` packets to the port's owner as `{Port, {data, Binary}}`.
fn recv_to_owner(tube: &mut Tube, port: DrvPort, max: usize) -> Result<usize, RingError> {
    let mut scratch = [0u8; SMALL_PACKET];
    let scratch_ptr = scratch.as_mut_ptr();
    tube.recv_into(
        max,
        |len| {
            if len <= SMALL_PACKET {
                // SAFETY: `scratch` outlives this call to recv_into and holds
                // SMALL_PACKET >= len bytes; the slice is only used for the copy
                // of this one packet, before `deliver` reads it.
                let s = unsafe { std::slice::from_raw_parts_mut(scratch_ptr, len) };
                return Some((s, Dest::Scratch));
            }
            let mut data: *mut c_char = std::ptr::null_mut();
            // SAFETY: plain allocation through the emulator; `data` receives
            // the binary's byte pointer.
            let bin = unsafe { tube_drv_alloc_binary(len, &mut data) };
            if bin.is_null() || data.is_null() {
                return None; // out of memory: the packet stays in the ring
            }
            // SAFETY: a fresh binary of `len` bytes that nothing else uses
            // until `deliver` hands it over.
            let s = unsafe { std::slice::from_raw_parts_mut(data as *mut u8, len) };
            Some((s, Dest::Binary(bin)))
        },
        |dest, len| match dest {
            // SAFETY: `port` is the live port this runs for; the scratch
            // bytes hold the packet; driver_output copies them.
            Dest::Scratch => unsafe {
                tube_drv_deliver(port, scratch_ptr as *const c_char, len);
            },
            // SAFETY: `bin` is the binary filled above; the helper hands it
            // to the emulator and drops our reference.
            Dest::Binary(bin) => unsafe {
                tube_drv_deliver_binary(port, bin, len);
            },
        },
    )
}

/// Runs a callback body; a panic becomes a closed tube, never an unwind
/// into the emulator.
fn guarded(st: *mut c_void, body: impl FnOnce(&mut PortState)) {
    if st.is_null() {
        return;
    }
    // SAFETY: a non-null `st` is the pointer `tube_rs_start` returned and the
    // emulator has not yet called `tube_rs_stop` for it; callbacks of one port
    // never run concurrently (port locking), so this is the only reference.
    let state = unsafe { &mut *(st as *mut PortState) };
    if state.closing {
        return;
    }
    if catch_unwind(AssertUnwindSafe(|| body(state))).is_err() {
        state.close(CloseReason::InternalError);
    }
}

/// Word `n` of the open command as a non-negative integer.
fn command_word(command: &CStr, n: usize) -> Option<u64> {
    command.to_str().ok()?.split_ascii_whitespace().nth(n)?.parse().ok()
}

/// The initial credit from `"tube_nif <Id> <Credit> ..."`: a negative or
/// absent credit is `{active, true}`.
fn credit_from_command(command: &CStr) -> Option<u64> {
    command_word(command, 2)
}

/// `"tube_nif <Id> <Credit> <BusyPollUs> <Delivery>"`: 1 is reliable; 0 or
/// absent is lossy.
fn reliable_from_command(command: &CStr) -> bool {
    command_word(command, 4) == Some(tube_ring::proto::DELIVERY_RELIABLE)
}

/// The word this end writes in the tube's control page for its delivery.
fn delivery_word(reliable: bool) -> u32 {
    use tube_ring::proto::{DELIVERY_LOSSY, DELIVERY_RELIABLE};
    (if reliable { DELIVERY_RELIABLE } else { DELIVERY_LOSSY }) as u32
}

/// The polling window from `"tube_nif <Id> <Credit> <BusyPollUs>"`; the
/// default when absent or out of range.
fn busy_poll_from_command(command: &CStr) -> Duration {
    match command_word(command, 3) {
        Some(us) if us <= MAX_BUSY_POLL_US => Duration::from_micros(us),
        _ => DEFAULT_BUSY_POLL,
    }
}

/// Parses `"tube_nif <Id> ..."` (the driver name, then the hand-over
/// number).
fn claim_from_command(command: &CStr) -> Option<Tube> {
    handoff::claim(command_word(command, 1)?)
}

/// `start`: claims the parked tube named in the command and begins waiting
/// on its event fd. Returns null (badarg to `open_port`) when there is none.
#[no_mangle]
pub extern "C" fn tube_rs_start(port: DrvPort, command: *const c_char) -> *mut c_void {
    let result = catch_unwind(AssertUnwindSafe(|| {
        if command.is_null() {
            return std::ptr::null_mut();
        }
        // SAFETY: the emulator passes the NUL-terminated open_port command.
        let command = unsafe { CStr::from_ptr(command) };
        let Some(mut tube) = claim_from_command(command) else {
            return std::ptr::null_mut();
        };
        // A mismatch closes the port from the first timeout below, with its reason.
        let _ = tube.declare_delivery(delivery_word(reliable_from_command(command)));
        let fd = tube.fd();
        let mut bound = RxBound::from_command(rx_bound::command_word(command, 2));
        let credit = if bound.is_on() { bound.enter() } else { credit_from_command(command) };
        let busy_poll = busy_poll_from_command(command);
        let reliable = reliable_from_command(command);
        let state = Box::new(PortState {
            port,
            tube,
            fd,
            rejected: 0,
            wakeups: 0,
            closing: false,
            close_requested: None,
            close_after: None,
            credit,
            busy_poll,
            polling: false,
            poll_until: Instant::now(),
            replies: false,
            heard: false,
            reliable,
            dist: false,
            inbox: Inbox {
                port,
                reliable,
                dist: false,
                asm: None,
                scratch: Box::new([0; dist::SCRATCH]),
                batch: batch::from_command(command).filter(|_| !reliable),
                pass: dist::PassBytes::new(),
                frags: Defrag::new(frag_store::Binaries { port }),
                out_of_memory: false,
            },
            busy: None,
            busy_count: 0,
            busy_time: Duration::ZERO,
            room_poll: None,
            bound,
            backoff: dist::PollBackoff::new(),
            turn: dist::ProcessTurn::new(),
        });
        // SAFETY: `port` is the port being started and `fd` is the open
        // event fd owned by the tube, which lives until stop_select.
        if unsafe { tube_drv_select(port, fd as isize, 1) } < 0 {
            // Without the fd in the poll set the tube would never wake:
            // refuse the port (badarg); dropping the tube tells the peer.
            return std::ptr::null_mut();
        }
        // Packets may already be waiting: drain from a zero timeout, since
        // a port cannot deliver or fail from inside its own start.
        // SAFETY: as above, `port` is live.
        unsafe { tube_drv_resume_later(port) };
        Box::into_raw(state) as *mut c_void
    }));
    result.unwrap_or(std::ptr::null_mut())
}

/// `stop`: the port is gone. The tube is retired until its fd can be closed.
#[no_mangle]
pub extern "C" fn tube_rs_stop(st: *mut c_void) {
    if st.is_null() {
        return;
    }
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: `st` came from Box::into_raw in tube_rs_start and the
        // emulator calls stop exactly once, after every other callback.
        let state = unsafe { Box::from_raw(st as *mut PortState) };
        let PortState { port, tube, fd, reliable, dist, .. } = *state;
        // A distribution connection that ends needs nothing more delivered.
        RETIRED.lock().get_or_insert_with(HashMap::new).insert(fd, (tube, reliable && !dist));
        // SAFETY: deselecting the fd of this port; the emulator then calls
        // stop_select (possibly right away), which drops the retired tube.
        unsafe { tube_drv_select(port, fd as isize, 0) };
    }));
}

/// `stop_select`: the emulator no longer polls `fd`; close the tube (a
/// reliable one once its outbox is delivered, see `linger`).
#[no_mangle]
pub extern "C" fn tube_rs_stop_select(fd: isize) {
    let _ = catch_unwind(|| {
        let retired = RETIRED.lock().as_mut().and_then(|m| m.remove(&(fd as RawFd)));
        if let Some((tube, may_linger)) = retired {
            crate::linger::finish(tube, may_linger);
        }
    });
}

/// `outputv`: one packet (lossy) or message (reliable) from the owner, or
/// from the emulator on a distribution port, as the `n` pieces of an
/// `ErlIOVec` (`iov`). The pieces are sent as one whole, never framed: a
/// distribution packet arrives with no length prefix, and an empty one is a
/// tick.
#[no_mangle]
pub extern "C" fn tube_rs_outputv(st: *mut c_void, iov: *const libc::iovec, n: c_int) {
    guarded(st, |state| {
        let n = usize::try_from(n).unwrap_or(0);
        // SAFETY: the C glue passes the ErlIOVec's `vsize` iovecs, each
        // `iov_len` readable bytes that live for this call.
        let iovs = if n == 0 || iov.is_null() { &[][..] } else { unsafe { std::slice::from_raw_parts(iov, n) } };
        let piece = |v: &libc::iovec| {
            // SAFETY: as above.
            (v.iov_len > 0 && !v.iov_base.is_null())
                .then(|| unsafe { std::slice::from_raw_parts(v.iov_base as *const u8, v.iov_len) })
        };
        // A distribution packet comes in a few pieces (an empty header slot,
        // then the data): no allocation for those.
        let mut few: [&[u8]; 8] = [&[]; 8];
        let mut many: Vec<&[u8]> = Vec::new();
        let mut k = 0;
        for p in iovs.iter().filter_map(piece) {
            if k < few.len() {
                few[k] = p;
            } else {
                if many.is_empty() {
                    many.extend_from_slice(&few);
                }
                many.push(p);
            }
            k += 1;
        }
        let parts: &[&[u8]] = if many.is_empty() { &few[..k] } else { &many };
        if state.reliable {
            return state.send_message(parts);
        }
        let total: usize = parts.iter().map(|p| p.len()).sum();
        match parts {
            [one] => state.send(Some(one)),
            _ if (1..=MAX_PACKET).contains(&total) => {
                let mut flat = [0u8; MAX_PACKET];
                let mut at = 0;
                for p in parts {
                    flat[at..at + p.len()].copy_from_slice(p);
                    at += p.len();
                }
                state.send(Some(&flat[..total]));
            }
            _ => state.send(None),
        }
    });
}

/// `port_control(Tube, 5, [])`: the port becomes a distribution
/// controller (before `erlang:setnode/3`). Only a reliable tube can be one.
#[no_mangle]
pub extern "C" fn tube_rs_set_dist(st: *mut c_void) -> c_int {
    let mut ok = false;
    guarded(st, |state| {
        ok = state.reliable;
        state.dist |= ok;
        state.inbox.dist |= ok;
    });
    if ok {
        0
    } else {
        -1
    }
}

/// `ready_input`: a wakeup or a hang-up on the event fd.
#[no_mangle]
pub extern "C" fn tube_rs_ready_input(st: *mut c_void) {
    guarded(st, |state| {
        state.wakeups += 1;
        match state.tube.on_readable() {
            // Bounded, and the peer has gone: what is left in the ring (one
            // ring at most) is delivered before the tube closes.
            Ok(()) if state.bound.is_on() && !state.tube.is_open() => {
                state.credit = None;
                state.drain();
            }
            // Passive, and the peer has gone: what is left in the ring will
            // not be asked for; the hang-up would keep the fd readable.
            Ok(()) if state.credit == Some(0) && !state.tube.is_open() => {
                state.close(CloseReason::PeerClosed)
            }
            Ok(()) => {
                if state.busy.is_some() {
                    state.pump();
                }
                if !state.closing {
                    state.drain();
                }
            }
            Err(e) => {
                // Deliver what the peer left in the ring (as far as the
                // credit allows) before closing.
                let credit = if state.bound.is_on() { None } else { state.credit };
                let left = credit.map_or(usize::MAX, |c| usize::try_from(c).unwrap_or(usize::MAX));
                let _ = state.receive(left);
                state.close(CloseReason::of(&e));
            }
        }
    });
}

/// `timeout`: resume draining.
#[no_mangle]
pub extern "C" fn tube_rs_timeout(st: *mut c_void) {
    guarded(st, |state| {
        if state.busy.is_some() {
            state.pump();
        }
        if !state.closing {
            state.drain();
        }
    });
}

/// Counters for `port_control(Tube, 1, [])`, in this order: sent packets,
/// sent bytes, received packets, received bytes, dropped (ring full),
/// rejected (bad size), wakeups, peer OS pid (0 if unknown), the polling
/// window in microseconds, 1 while polling, times the port went busy,
/// microseconds spent busy, bytes waiting in the outbox (reliable tubes).
#[no_mangle]
pub extern "C" fn tube_rs_stats(st: *mut c_void, out: *mut u64, n: usize) -> c_int {
    if st.is_null() || out.is_null() || n < STATS_N {
        return -1;
    }
    let r = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: see `guarded`; reading only.
        let state = unsafe { &*(st as *const PortState) };
        let stats = state.stats();
        // SAFETY: the caller passes room for `n >= STATS_N` u64 values.
        unsafe { std::ptr::copy_nonoverlapping(stats.as_ptr(), out, stats.len()) };
    }));
    if r.is_ok() {
        0
    } else {
        -1
    }
}

/// `port_control(Tube, 2, Reason)`: the control plane saw the peer go away
/// in Xenstore. The close runs from a zero timeout, outside the control
/// call. Returns -1 (badarg) for an unknown reason.
#[no_mangle]
pub extern "C" fn tube_rs_request_close(st: *mut c_void, reason: *const c_char, len: usize) -> c_int {
    if reason.is_null() {
        return -1;
    }
    // SAFETY: the C glue passes the control buffer of `len` bytes.
    let text = unsafe { std::slice::from_raw_parts(reason as *const u8, len) };
    let reason = match text {
        b"peer_closed" => CloseReason::PeerClosed,
        b"peer_down" => CloseReason::PeerDown,
        _ => return -1,
    };
    guarded(st, |state| {
        state.close_requested = Some(reason);
        state.resume_later();
    });
    0
}

/// A setting from `port_control`: `f` gets the control buffer, which must be
/// `want` bytes, and says whether it was a valid request. Returns 0, or -1
/// (badarg) for a malformed one.
fn set_from_control(
    st: *mut c_void,
    buf: *const c_char,
    len: usize,
    want: usize,
    f: impl FnOnce(&mut PortState, &[u8]) -> bool,
) -> c_int {
    if buf.is_null() || len != want {
        return -1;
    }
    // SAFETY: the C glue passes the control buffer of `len` bytes.
    let bytes = unsafe { std::slice::from_raw_parts(buf as *const u8, len) };
    let mut ok = false;
    guarded(st, |state| ok = f(state, bytes));
    if ok {
        0
    } else {
        -1
    }
}

/// `port_control(Tube, 3, <<Mode:8, N:64/native>>)`: `{active, _}`, see
/// [`PortState::set_active`].
#[no_mangle]
pub extern "C" fn tube_rs_set_active(st: *mut c_void, buf: *const c_char, len: usize) -> c_int {
    set_from_control(st, buf, len, 9, |state, bytes| {
        let mut n = [0u8; 8];
        n.copy_from_slice(&bytes[1..9]);
        state.set_active(bytes[0], u64::from_ne_bytes(n))
    })
}

/// `port_control(Tube, 3, <<255>>)`: the delivery mode now, as the 9 bytes
/// `<<Mode:8, N:64/native>>` that would set it again (Mode 0: no limit, 1: a
/// credit of N packets), so that a new owner can be handed the tube paused
/// and get back the mode it had.
#[no_mangle]
pub extern "C" fn tube_rs_get_active(st: *mut c_void, out: *mut u8, n: usize) -> c_int {
    if st.is_null() || out.is_null() || n < 9 {
        return -1;
    }
    let r = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: see `guarded`; reading only.
        let state = unsafe { &*(st as *const PortState) };
        let (mode, credit) = match state.credit {
            _ if state.bound.is_on() => (tube_ring::proto::ACTIVE_BOUNDED, 0),
            None => (0u8, 0u64),
            Some(c) => (1, c),
        };
        let mut bytes = [0u8; 9];
        bytes[0] = mode;
        bytes[1..9].copy_from_slice(&credit.to_ne_bytes());
        // SAFETY: the caller passes room for `n >= 9` bytes.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), out, bytes.len()) };
    }));
    if r.is_ok() {
        0
    } else {
        -1
    }
}

/// `port_control(Tube, 4, <<Us:32/native>>)`: `{busy_poll, Us}`, see
/// [`PortState::set_busy_poll`].
#[no_mangle]
pub extern "C" fn tube_rs_set_busy_poll(st: *mut c_void, buf: *const c_char, len: usize) -> c_int {
    set_from_control(st, buf, len, 4, |state, bytes| {
        let us = u32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        state.set_busy_poll(u64::from(us))
    })
}

/// `port_control(Tube, 6, [])`: packets delivered so far, which the
/// receive governor reads before it looks at the owner's mailbox.
#[no_mangle]
pub extern "C" fn tube_rs_rx_count(st: *mut c_void, out: *mut u64) -> c_int {
    if st.is_null() || out.is_null() {
        return -1;
    }
    let r = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: see `guarded`; reading only.
        let state = unsafe { &*(st as *const PortState) };
        // SAFETY: the caller passes room for one u64.
        unsafe { *out = state.tube.stats().recv_pkts };
    }));
    if r.is_ok() {
        0
    } else {
        -1
    }
}

/// `port_control(Tube, 8, <<Count:64/native, Queue:64/native>>)` from the
/// receive governor: a look at the owner's mailbox (see rx_bound.rs). Writes
/// the answer, the microseconds before the next look (0: granted), to `out`
/// and returns 0; 1 when the tube is not in the bounded mode (no answer);
/// -1 for a malformed request.
#[no_mangle]
pub extern "C" fn tube_rs_rx_look(st: *mut c_void, buf: *const c_char, len: usize, out: *mut u64) -> c_int {
    if out.is_null() {
        return -1;
    }
    let mut answer = None;
    let r = set_from_control(st, buf, len, 16, |state, bytes| {
        let word = |i: usize| {
            let mut n = [0u8; 8];
            n.copy_from_slice(&bytes[i..i + 8]);
            u64::from_ne_bytes(n)
        };
        let stats = state.tube.stats();
        let seen = (stats.recv_pkts, stats.recv_bytes);
        if let Some(look) = state.bound.look(state.port, word(0), word(8), seen, state.credit) {
            if let Some(window) = look.credit {
                // Delivered from the port's own timeout, not inside the
                // governor's call: the owner frees the packets' binaries, and
                // a binary allocated on another scheduler's allocator instance
                // costs it a hand-back on every free.
                state.credit = Some(window);
                state.resume_later();
            }
            answer = Some(look.wait_us);
        }
        true
    });
    if r != 0 {
        return r;
    }
    match answer {
        Some(wait) => {
            // SAFETY: the caller passes room for one u64.
            unsafe { *out = wait };
            0
        }
        None => 1,
    }
}
