//! One end of an established tube: a producer on one ring, a consumer on the other, and the
//! connected Unix socket that carries wake-ups and tells us at once when the peer is gone.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;

use crate::error::{RingError, SendError};
use crate::layout::{
    dir_ctrl_offset, record_bytes, region_bytes, ring_offset_in, valid_ring_bytes, DirCtrl, MAX_MESSAGE, MAX_PACKET,
    REC_MSG_LEN, RING_BYTES,
};
use crate::ring::{self, Consumer, Corrupt, Producer, RingMem};
use crate::sync::{fence, AtomicU32, Ordering};
use crate::sys::{self, Mapping};

/// Counters, readable at any time from the owning side.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Packets put into the tx ring.
    pub sent_pkts: u64,
    /// Payload bytes put into the tx ring.
    pub sent_bytes: u64,
    /// Packets delivered from the rx ring.
    pub recv_pkts: u64,
    /// Payload bytes delivered from the rx ring.
    pub recv_bytes: u64,
    /// Packets dropped because the tx ring was full.
    pub dropped: u64,
}

/// Memory a reliable message is received into (see [`Tube::recv_messages`]).
///
/// # Safety
/// `as_mut_ptr` must return a pointer to at least the length `alloc` was asked for of
/// writable bytes, which nothing else uses and which stay valid and in place while the value
/// lives, even when the value itself is moved (heap memory, not an inline array).
pub unsafe trait MessageBuf {
    /// The first byte of the buffer.
    fn as_mut_ptr(&mut self) -> *mut u8;
}

// SAFETY: a Vec's bytes live on the heap and do not move when the Vec does; `alloc` callers
// give a Vec of the asked length (`vec![0; len]`).
unsafe impl MessageBuf for Vec<u8> {
    fn as_mut_ptr(&mut self) -> *mut u8 {
        <[u8]>::as_mut_ptr(self)
    }
}

/// A reliable message being put back together from its records: kept by the caller of
/// [`Tube::recv_messages`] between calls (a message may span many ring-fulls).
#[derive(Debug)]
pub struct Assembly<B> {
    buf: B,
    len: usize,
    filled: usize,
}

/// Records a reliable receive takes from the ring in one step without completing a message,
/// before it lets the caller run again.
const ASSEMBLY_RECORDS_PER_STEP: usize = 1024;

/// One message waiting for room in the tx ring of a reliable tube.
#[derive(Debug)]
struct Queued {
    /// What is left to write: the whole message, or the bytes after those written.
    data: Vec<u8>,
    /// Bytes of `data` already in the ring.
    pos: usize,
    /// The length record went in (for a message framed as a length record and chunks).
    announced: bool,
    /// Length of the whole message, for the counters.
    total: usize,
}

/// One direction inside a tube's mapping. Only `Tube` creates these, and it keeps the
/// mapping alive for as long as they exist.
#[derive(Debug)]
pub(crate) struct ShmDir {
    ctrl: NonNull<DirCtrl>,
    data: NonNull<u8>,
    /// Bytes of this ring: a valid ring size (`layout::valid_ring_bytes`), so a multiple of 8,
    /// and the mapping holds both rings of this size after the control page.
    size: usize,
}

impl ShmDir {
    /// Direction `dir` (0 or 1) of `map`, whose rings are `ring` bytes each: `map` must be
    /// exactly `region_bytes(ring)` long (checked).
    fn new(map: &Mapping, dir: usize, ring: usize) -> ShmDir {
        assert!(dir < 2 && valid_ring_bytes(ring) && map.len() == region_bytes(ring));
        // SAFETY: both offsets are inside the mapping (checked just above against its length,
        // see `layout`); `dir_ctrl_offset` is a multiple of 128 and the mapping is
        // page-aligned, so the DirCtrl is aligned.
        unsafe {
            ShmDir {
                ctrl: map.ptr().add(dir_ctrl_offset(dir)).cast(),
                data: map.ptr().add(ring_offset_in(dir, ring)),
                size: ring,
            }
        }
    }
}

impl RingMem for ShmDir {
    fn size(&self) -> usize {
        self.size
    }

    fn ctrl(&self) -> &DirCtrl {
        // SAFETY: points to an aligned DirCtrl inside a live mapping (see `ShmDir::new`).
        // DirCtrl holds only atomics, for which every bit pattern is valid, and the peer
        // process only ever changes it through atomic accesses of the same width.
        unsafe { self.ctrl.as_ref() }
    }

    fn write(&self, off: usize, src: &[u8]) -> bool {
        if off > self.size || src.len() > self.size - off {
            return false;
        }
        // SAFETY: `off + src.len() <= size`, so the destination is inside this ring of
        // the live mapping; `src` is process-private memory, so they cannot overlap. We never
        // hold a Rust reference into the ring, only raw pointers.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), self.data.as_ptr().add(off), src.len()) };
        true
    }

    fn read(&self, off: usize, dst: &mut [u8]) -> bool {
        if off > self.size || dst.len() > self.size - off {
            return false;
        }
        // SAFETY: the source range is inside this ring of the live mapping and `dst` is
        // private memory. The peer may write the source concurrently; then `dst` receives
        // arbitrary bytes, which callers tolerate (lengths are validated separately).
        unsafe { std::ptr::copy_nonoverlapping(self.data.as_ptr().add(off), dst.as_mut_ptr(), dst.len()) };
        true
    }

    fn write_header(&self, off: usize, hdr: u64) -> bool {
        if off & 7 != 0 || off >= self.size {
            return false;
        }
        // SAFETY: `off` is 8-aligned (the ring starts 8-aligned: the control page and the
        // sizes are multiples of 8) and `off + 8 <= size` (a multiple of 8), so this is an
        // aligned store inside the ring.
        unsafe { self.data.as_ptr().add(off).cast::<u64>().write_volatile(hdr.to_le()) };
        true
    }

    fn read_header(&self, off: usize) -> Option<u64> {
        if off & 7 != 0 || off >= self.size {
            return None;
        }
        // SAFETY: as in `write_header`; volatile, so the value is loaded exactly once even
        // though the peer may change it.
        Some(u64::from_le(unsafe { self.data.as_ptr().add(off).cast::<u64>().read_volatile() }))
    }
}

/// How a receive pass ended ([`Tube::receive_pass`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    /// The budget ran out, with packets perhaps left: run again soon, after yielding.
    Budget,
    /// The owner takes no more now: stop reading (and announce no sleep).
    Stopped,
    /// The ring is empty.
    Empty,
}

/// Life cycle of a tube end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Open,
    PeerGone,
    Corrupt(&'static str),
    Mismatch,
}

/// One end of an established tube. `Send` (movable to another thread), not `Sync`.
#[derive(Debug)]
pub struct Tube {
    tx: Producer<ShmDir>,
    rx: Consumer<ShmDir>,
    sock: OwnedFd,
    state: State,
    stats: Stats,
    buf: Box<[u8; MAX_PACKET]>,
    /// Messages of a reliable tube waiting for room, oldest first.
    outbox: VecDeque<Queued>,
    /// Bytes in `outbox` not yet in the ring.
    queued: usize,
    peer_pid: Option<i32>,
    /// Bytes of each ring.
    ring_bytes: usize,
    /// The delivery word's slot of this end and of the peer's in the control page.
    delivery_slots: (NonNull<u8>, NonNull<u8>),
    /// What this end wrote in its slot (0: nothing yet); kept here because the peer could
    /// overwrite the shared copy.
    delivery: u32,
    // Declared last: dropped after `tx`/`rx`, whose pointers point into it.
    _map: Mapping,
}

// SAFETY: the raw pointers in `tx`/`rx` point into `_map`, which moves with the Tube; nothing
// in the Tube is tied to the creating thread. Not Sync: all methods that touch the rings
// need `&mut self` or only read atomics.
unsafe impl Send for Tube {}

/// Upper bound of wake-up reads per `on_readable` call, so a peer flooding the socket
/// cannot keep the caller in the loop; the fd stays readable and the caller comes back.
const MAX_WAKE_READS: usize = 64;

impl Tube {
    /// Wraps an established tube end: `map` is the whole region of `ring`-byte rings,
    /// `tx_dir` the direction this end writes (0 for the offerer, 1 for the connector).
    pub(crate) fn new(map: Mapping, ring: usize, sock: OwnedFd, tx_dir: usize, peer_pid: Option<i32>) -> Tube {
        // SAFETY: both delivery slots lie in the control page (`layout` tests), inside the map.
        let slot = |end: usize| unsafe { map.ptr().add(crate::layout::delivery_offset(end)) };
        Tube {
            tx: Producer::new(ShmDir::new(&map, tx_dir, ring)),
            rx: Consumer::new(ShmDir::new(&map, 1 - tx_dir, ring)),
            sock,
            state: State::Open,
            stats: Stats::default(),
            buf: Box::new([0; MAX_PACKET]),
            outbox: VecDeque::new(),
            queued: 0,
            peer_pid,
            ring_bytes: ring,
            delivery_slots: (slot(tx_dir), slot(1 - tx_dir)),
            delivery: 0,
            _map: map,
        }
    }

    fn send_state(&self) -> Result<(), SendError> {
        match self.state {
            State::Open => Ok(()),
            State::PeerGone | State::Mismatch => Err(SendError::Closed),
            State::Corrupt(_) => Err(SendError::Corrupt),
        }
    }

    /// Pushes one packet without publishing it; `refresh`: may re-read the consumer index.
    fn push(&mut self, pkt: &[u8], refresh: bool) -> Result<(), SendError> {
        if pkt.is_empty() || pkt.len() > MAX_PACKET {
            return Err(SendError::BadSize(pkt.len()));
        }
        let pushed = if refresh { self.tx.push(pkt) } else { self.tx.push_cached(pkt) };
        match pushed {
            Ok(true) => {
                self.stats.sent_pkts += 1;
                self.stats.sent_bytes += pkt.len() as u64;
                Ok(())
            }
            Ok(false) => {
                self.stats.dropped += 1;
                Err(SendError::Full)
            }
            Err(c) => {
                self.state = State::Corrupt(c.0);
                Err(SendError::Corrupt)
            }
        }
    }

    /// Publishes the tx index and wakes the peer if it sleeps.
    fn publish_tx(&mut self) -> Result<(), SendError> {
        if !self.tx.publish() {
            return Ok(());
        }
        match sys::send_all(&self.sock, &[1]) {
            // A full socket buffer already holds wake-ups for the peer.
            Err(e) if e.kind() != io::ErrorKind::WouldBlock => {
                self.state = State::PeerGone;
                Err(SendError::Closed)
            }
            _ => Ok(()),
        }
    }

    /// Never blocks. Copies `pkt` into the tx ring; if the ring lacks room: `Err(Full)` and
    /// `dropped` += 1. Wakes the peer (one byte on the socket) only if it announced that it is
    /// going to sleep. `Err(Closed)` after a successful copy means the peer has gone.
    pub fn send(&mut self, pkt: &[u8]) -> Result<(), SendError> {
        self.send_state()?;
        self.push(pkt, true)?;
        self.publish_tx()
    }

    /// Sends several packets, publishing the producer index once. Packets that find the ring
    /// full are dropped and counted, and the rest are still tried against the space known
    /// then (the consumer index is re-read once per batch); `Ok(n)` says how many went in.
    /// A packet of bad size stops the batch with `Err(BadSize)` (earlier ones are published).
    pub fn send_many<'a>(&mut self, pkts: impl IntoIterator<Item = &'a [u8]>) -> Result<usize, SendError> {
        self.send_state()?;
        let mut sent = 0;
        let mut stop = None;
        let mut refresh = true;
        for pkt in pkts {
            match self.push(pkt, refresh) {
                Ok(()) => sent += 1,
                Err(SendError::Full) => refresh = false,
                Err(e) => {
                    stop = Some(e);
                    break;
                }
            }
        }
        if sent > 0 {
            self.publish_tx()?;
        }
        match stop {
            Some(e) => Err(e),
            None => Ok(sent),
        }
    }

    /// Sends packets in their order, publishing the producer index once, up to the first one
    /// that finds the ring full: that one and every one after it are dropped and counted, so
    /// `Ok(n)` says exactly which went in (the first `n`). Every size is checked before any
    /// packet is written: one out of `1..=MAX_PACKET` is `Err(BadSize)` and nothing is sent.
    /// `Err(Closed)` after packets went in means the peer has gone.
    pub fn send_prefix(&mut self, pkts: &[&[u8]]) -> Result<usize, SendError> {
        self.send_state()?;
        if let Some(bad) = pkts.iter().find(|p| p.is_empty() || p.len() > MAX_PACKET) {
            return Err(SendError::BadSize(bad.len()));
        }
        let mut sent = 0;
        for pkt in pkts {
            match self.push(pkt, true) {
                Ok(()) => sent += 1,
                Err(SendError::Full) => {
                    // `push` counted this one; the rest go the same way, unwritten.
                    self.stats.dropped += (pkts.len() - sent - 1) as u64;
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        if sent > 0 {
            self.publish_tx()?;
        }
        Ok(sent)
    }

    /// Drains up to `max` packets, calling `f` for each. Every packet is copied out of shared
    /// memory into a private buffer before `f` sees it, so the peer cannot change it under `f`.
    /// Returns how many were delivered. A corrupt ring gives `Err(Corrupt)` and ends the tube.
    /// After the peer has gone, what it sent before is still delivered; then `Err(PeerGone)`.
    pub fn recv(&mut self, max: usize, mut f: impl FnMut(&[u8])) -> Result<usize, RingError> {
        let buf = &mut self.buf;
        let r = drain(&mut self.rx, &mut self.stats, &mut self.state, max, |rx| {
            let popped = rx.pop(buf)?;
            if let Some(len) = popped {
                f(&buf[..len]);
            }
            Ok(popped)
        });
        self.wake_writer();
        r
    }

    /// Like [`Tube::recv`], but each packet is copied once, straight from shared memory into
    /// memory the caller provides (a message binary, say) instead of through this tube's
    /// buffer: `alloc(len)` returns at least `len` writable bytes and a token (or `None` to
    /// stop, leaving the packet in the ring), and `deliver(token, len)` runs once they hold
    /// the packet. The bytes are a private copy: the peer cannot change them afterwards.
    pub fn recv_into<'b, T>(
        &mut self,
        max: usize,
        mut alloc: impl FnMut(usize) -> Option<(&'b mut [u8], T)>,
        mut deliver: impl FnMut(T, usize),
    ) -> Result<usize, RingError> {
        let r = drain(&mut self.rx, &mut self.stats, &mut self.state, max, |rx| {
            Ok(rx.pop_into(&mut alloc)?.map(|(len, token)| {
                deliver(token, len);
                len
            }))
        });
        self.wake_writer();
        r
    }

    /// The receive of a reliable tube: delivers up to `max` whole messages, each put back
    /// together from its records straight into memory from `alloc(len)` and handed to
    /// `deliver(buf, len)`. A message still incomplete when the ring runs empty waits in
    /// `asm` for the next call. `alloc` returning `None` (out of memory) leaves the record
    /// in the ring. Framing no honest peer writes (an unknown flag, a length record inside a
    /// message or over [`MAX_MESSAGE`], a chunk past its message's end) is `Corrupt`.
    pub fn recv_messages<B: MessageBuf>(
        &mut self,
        asm: &mut Option<Assembly<B>>,
        max: usize,
        mut alloc: impl FnMut(usize) -> Option<B>,
        mut deliver: impl FnMut(B, usize),
    ) -> Result<usize, RingError> {
        let r = drain(&mut self.rx, &mut self.stats, &mut self.state, max, |rx| {
            for _ in 0..ASSEMBLY_RECORDS_PER_STEP {
                match reassemble_step(rx, asm, &mut alloc)? {
                    Step::Done(buf, len) => {
                        deliver(buf, len);
                        return Ok(Some(len));
                    }
                    Step::Empty => return Ok(None),
                    Step::Partial => {}
                }
                if rx.unpublished() >= (rx.size() / 4) as u64 {
                    rx.publish();
                }
            }
            Ok(None)
        });
        self.wake_writer();
        r
    }

    /// Sends one message of a reliable tube, of any size up to [`MAX_MESSAGE`] (empty too),
    /// given as the pieces it is made of. Never blocks and never drops: what does not fit in
    /// the ring now is copied to the outbox and goes out with [`Tube::flush`], in order.
    /// `Ok(())` means it is in the ring or queued; check [`Tube::queued_bytes`].
    pub fn send_message(&mut self, parts: &[&[u8]]) -> Result<(), SendError> {
        self.send_state()?;
        let total: usize = parts.iter().map(|p| p.len()).sum();
        if total > MAX_MESSAGE {
            return Err(SendError::BadSize(total));
        }
        if !self.outbox.is_empty() {
            self.enqueue(parts, 0, false);
            return self.flush();
        }
        let (mut pos, mut announced) = (0, false);
        let done = write_message(&mut self.tx, &mut self.buf, parts, total, &mut pos, &mut announced);
        match done {
            Ok(true) => {
                self.stats.sent_pkts += 1;
                self.stats.sent_bytes += total as u64;
            }
            Ok(false) => self.enqueue(parts, pos, announced),
            Err(c) => {
                self.state = State::Corrupt(c.0);
                return Err(SendError::Corrupt);
            }
        }
        self.publish_tx()
    }

    /// Copies what is left of a message (from `pos`) to the outbox.
    fn enqueue(&mut self, parts: &[&[u8]], pos: usize, announced: bool) {
        let total: usize = parts.iter().map(|p| p.len()).sum();
        let mut data = Vec::with_capacity(total - pos);
        let mut skip = pos;
        for p in parts {
            let from = skip.min(p.len());
            skip -= from;
            data.extend_from_slice(&p[from..]);
        }
        self.queued += data.len();
        self.outbox.push_back(Queued { data, pos: 0, announced, total });
    }

    /// Writes as much of the outbox as the ring takes now, in order, and wakes the peer.
    pub fn flush(&mut self) -> Result<(), SendError> {
        self.send_state()?;
        let mut wrote = false;
        while let Some(q) = self.outbox.front_mut() {
            let before = q.pos;
            let len = q.data.len();
            let done = write_message(&mut self.tx, &mut self.buf, &[&q.data], len, &mut q.pos, &mut q.announced);
            self.queued -= q.pos - before;
            wrote |= q.pos != before || q.announced;
            match done {
                Ok(true) => {
                    self.stats.sent_pkts += 1;
                    self.stats.sent_bytes += q.total as u64;
                    self.outbox.pop_front();
                }
                Ok(false) => break,
                Err(c) => {
                    self.state = State::Corrupt(c.0);
                    return Err(SendError::Corrupt);
                }
            }
        }
        if wrote {
            self.publish_tx()?;
        }
        Ok(())
    }

    /// Bytes of reliable messages waiting in the outbox for room in the ring.
    pub fn queued_bytes(&self) -> usize {
        self.queued
    }

    /// Announces that this end waits until `need` bytes (at most the ring's size) are free
    /// in the tx ring, then re-checks. True: the peer's reader sends one wake-up on the
    /// event fd when it next frees room. False: the room is there (or the tube is finished):
    /// flush again instead of waiting.
    pub fn prepare_wait_room(&mut self, need: usize) -> bool {
        if self.state != State::Open {
            return false;
        }
        match ring::writer_wait(&mut self.tx, need.min(self.ring_bytes)) {
            Ok(wait) => {
                if wait.wake_reader {
                    self.signal_peer();
                }
                wait.may_wait
            }
            Err(c) => {
                self.state = State::Corrupt(c.0);
                false
            }
        }
    }

    /// Free bytes in the tx ring (re-reading the consumer index).
    pub fn room(&mut self, need: usize) -> bool {
        self.state == State::Open && self.tx.room_for(need.min(self.ring_bytes)).unwrap_or(false)
    }

    /// Bytes of each of this tube's rings.
    pub fn ring_bytes(&self) -> usize {
        self.ring_bytes
    }

    /// Free bytes a writer waiting for room asks for before it resumes: half the ring, so a
    /// producer and a consumer of bulk data hand over in long runs instead of a record at a
    /// time.
    pub fn resume_room(&self) -> usize {
        self.ring_bytes / 2
    }

    /// Sends the wake-up a publish found owed to a writer waiting for room.
    fn wake_writer(&mut self) {
        if self.rx.take_writer_wake() {
            self.signal_peer();
        }
    }

    /// One wake-up byte to the peer. A full socket buffer already holds wake-ups; a gone
    /// peer shows as a hang-up on our side.
    fn signal_peer(&self) {
        let _ = sys::send_all(&self.sock, &[1]);
    }

    /// True if there is at least one packet to read now (or the ring is corrupt, which the
    /// next `recv` reports).
    pub fn has_data(&self) -> bool {
        matches!(self.state, State::Corrupt(_) | State::Mismatch) || self.rx.has_data()
    }

    /// The fd to poll/epoll (and BEAM `driver_select`) for readability: readable means
    /// wake-up byte(s) or hang-up.
    pub fn fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }

    /// The receive pass of a tube's owner, as the port driver runs it on every wake-up:
    /// `deliver(self, max)` hands up to `max` packets to the owner (one of the `recv*`
    /// calls) and `stop(got)` says the owner takes no more now (its credit ran out). While a
    /// stream is flowing (a read found `streaming` or more) an empty ring is polled for
    /// `spins` iterations before giving up, since a busy writer refills it sooner than a
    /// wake-up would come. Returns how the pass ended and how many were delivered; on
    /// [`Pass::Empty`] the caller either polls (with [`Tube::stay_awake`]) or runs the
    /// sleep protocol, [`Tube::prepare_sleep`].
    pub fn receive_pass(
        &mut self,
        budget: usize,
        spins: u32,
        streaming: usize,
        mut deliver: impl FnMut(&mut Tube, usize) -> Result<usize, RingError>,
        mut stop: impl FnMut(usize) -> bool,
    ) -> Result<(Pass, usize), RingError> {
        let mut delivered = 0;
        loop {
            let got = deliver(self, budget - delivered)?;
            delivered += got;
            if stop(got) {
                return Ok((Pass::Stopped, delivered));
            }
            if delivered >= budget {
                return Ok((Pass::Budget, delivered));
            }
            if got < streaming || !self.spin_for_data(spins) {
                return Ok((Pass::Empty, delivered));
            }
        }
    }

    /// Announces "I am about to sleep" (sets the reader-sleeping flag with a full fence), then
    /// re-checks the ring. Returns false if data arrived meanwhile or the tube is finished:
    /// the caller must call `recv` again instead of sleeping.
    pub fn prepare_sleep(&mut self) -> bool {
        if self.state != State::Open {
            return false;
        }
        let sleep = ring::reader_sleep(&mut self.rx);
        if sleep.wake_writer {
            self.signal_peer();
        }
        sleep.may_sleep
    }

    /// Withdraws a sleep announced by `prepare_sleep`: the caller promises to poll with
    /// `has_data` (or `recv`) until its next `prepare_sleep`, and the peer stops sending
    /// wake-ups meanwhile.
    pub fn stay_awake(&mut self) {
        self.rx.stay_awake();
    }

    /// Call when `fd()` is readable: consumes the wake-up bytes (non-blocking).
    /// On hang-up, EOF or connection reset the tube is marked gone; if packets the peer sent
    /// before it went are still in the ring this returns `Ok(())` so the caller drains them
    /// with `recv` (which then reports `PeerGone`); otherwise `Err(PeerGone)` at once.
    pub fn on_readable(&mut self) -> Result<(), RingError> {
        match self.state {
            State::Open => {}
            State::PeerGone => return Err(RingError::PeerGone),
            State::Corrupt(why) => return Err(RingError::Corrupt(why)),
            State::Mismatch => return Err(RingError::DeliveryMismatch),
        }
        let mut buf = [0u8; 256];
        for _ in 0..MAX_WAKE_READS {
            // SAFETY: `buf` is valid for writes of its length.
            let r = unsafe { libc::recv(self.fd(), buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
            match sys::cvt_size(r) {
                Ok(0) => return self.peer_gone(),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // ECONNRESET and friends: the peer's end is gone.
                Err(_) => return self.peer_gone(),
            }
        }
        Ok(())
    }

    fn peer_gone(&mut self) -> Result<(), RingError> {
        // The peer may have closed because it saw our word differ from its own: say why.
        self.check_peer_delivery()?;
        self.state = State::PeerGone;
        if self.rx.has_data() {
            return Ok(());
        }
        Err(RingError::PeerGone)
    }

    /// Polls the ring for up to `spins` iterations; true as soon as data is there.
    pub fn spin_for_data(&self, spins: u32) -> bool {
        for _ in 0..spins {
            if self.has_data() {
                return true;
            }
            std::hint::spin_loop();
        }
        self.has_data()
    }

    /// The slot of `end` (this end's or the peer's) as an atomic.
    pub(crate) fn delivery_slot(&self, peer: bool) -> &AtomicU32 {
        let p = if peer { self.delivery_slots.1 } else { self.delivery_slots.0 };
        // SAFETY: the slot is 4-aligned (offset 16 or 20 of the page-aligned mapping) and lies
        // inside `_map`, which lives as long as `self`; every bit pattern is a valid u32, and
        // the peer only ever changes it with stores of the same width.
        unsafe { p.cast::<AtomicU32>().as_ref() }
    }

    /// Says which delivery (`proto::DELIVERY_*`) this end's owner uses and checks it against
    /// the peer's, if the peer has said already. Each end calls this once, when its owner
    /// takes the tube, before it reads or writes anything: each stores its word, fences, then
    /// loads the other's, so at least one of the two sees the other's word. The end that sees
    /// a different word gets `Err(DeliveryMismatch)` and closes; the other then finds the
    /// peer gone with a different word in its slot and reports `DeliveryMismatch` too.
    /// A slot holds 0 or 1 + a delivery word of `proto`; anything else is `Corrupt`.
    pub fn declare_delivery(&mut self, word: u32) -> Result<(), RingError> {
        self.delivery = word.saturating_add(1);
        self.delivery_slot(false).store(self.delivery, Ordering::Relaxed);
        // SeqCst fence: orders the store above before the load of the peer's word; pairs with
        // the same fence on the peer's side (store/fence/load on both).
        fence(Ordering::SeqCst);
        self.check_peer_delivery()
    }

    /// Compares the peer's delivery word, if it has written one, with ours, if we have: a
    /// different word ends the tube as `DeliveryMismatch`, a word no honest peer writes as
    /// `Corrupt`.
    fn check_peer_delivery(&mut self) -> Result<(), RingError> {
        use crate::proto::{DELIVERY_LOSSY, DELIVERY_RELIABLE};
        let peer = u64::from(self.delivery_slot(true).load(Ordering::Relaxed));
        if peer == 0 || self.delivery == 0 || peer == u64::from(self.delivery) {
            return Ok(());
        }
        if peer == DELIVERY_LOSSY + 1 || peer == DELIVERY_RELIABLE + 1 {
            self.state = State::Mismatch;
            return Err(RingError::DeliveryMismatch);
        }
        self.state = State::Corrupt("delivery word out of range");
        Err(RingError::Corrupt("delivery word out of range"))
    }

    /// The counters of this end.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// The peer process (SO_PEERCRED pid at connection time), for diagnostics.
    pub fn peer_pid(&self) -> Option<i32> {
        self.peer_pid
    }

    /// False once the peer is known to be gone or the ring was found corrupt.
    pub fn is_open(&self) -> bool {
        self.state == State::Open
    }
}

/// The receive loop shared by [`Tube::recv`], [`Tube::recv_into`] and
/// [`Tube::recv_messages`] ([`ring::drain_records`] with this tube's counters): turns a ring
/// violation into a dead tube, and reports a peer that has gone once nothing is left.
fn drain(
    rx: &mut Consumer<ShmDir>,
    stats: &mut Stats,
    state: &mut State,
    max: usize,
    step: impl FnMut(&mut Consumer<ShmDir>) -> Result<Option<usize>, Corrupt>,
) -> Result<usize, RingError> {
    if let State::Corrupt(why) = *state {
        return Err(RingError::Corrupt(why));
    }
    if *state == State::Mismatch {
        return Err(RingError::DeliveryMismatch);
    }
    let counted = |len: usize| {
        stats.recv_pkts += 1;
        stats.recv_bytes += len as u64;
    };
    let n = match ring::drain_records(rx, max, step, counted) {
        Ok(n) => n,
        Err(c) => {
            *state = State::Corrupt(c.0);
            return Err(RingError::Corrupt(c.0));
        }
    };
    // Gone, and nothing left that a later call could still deliver.
    if n == 0 && *state == State::PeerGone && !rx.has_data() {
        return Err(RingError::PeerGone);
    }
    Ok(n)
}

/// What one record did to a reliable receive.
enum Step<B> {
    /// A message is complete.
    Done(B, usize),
    /// A record was taken; the message goes on.
    Partial,
    /// The ring is empty (or memory ran out: the record stays).
    Empty,
}

/// Takes one record of a reliable tube out of the ring and puts it where it belongs.
fn reassemble_step<M: RingMem, B: MessageBuf>(
    rx: &mut Consumer<M>,
    asm: &mut Option<Assembly<B>>,
    alloc: &mut impl FnMut(usize) -> Option<B>,
) -> Result<Step<B>, Corrupt> {
    /// Where the record's bytes go.
    enum Into<B> {
        Whole(B),
        Length,
        Chunk,
    }
    let mut len_bytes = [0u8; 8];
    let mut bad = None;
    let len_ptr = len_bytes.as_mut_ptr();
    let popped = rx.pop_record_into(|len, flags| match (flags, asm.as_mut()) {
        (0, None) => {
            let mut b = alloc(len)?;
            // SAFETY: `MessageBuf` promises `len` writable bytes that stay in place while `b`
            // lives; `b` travels with the slice as the token and outlives the copy.
            let s = unsafe { std::slice::from_raw_parts_mut(b.as_mut_ptr(), len) };
            Some((s, Into::Whole(b)))
        }
        (0, Some(a)) if len <= a.len - a.filled => {
            // SAFETY: `a.buf` holds `a.len` bytes (asked of `alloc`) and `filled + len <= len`.
            let s = unsafe { std::slice::from_raw_parts_mut(a.buf.as_mut_ptr().add(a.filled), len) };
            Some((s, Into::Chunk))
        }
        (0, Some(_)) => {
            bad = Some("record runs past its message");
            None
        }
        (REC_MSG_LEN, None) if len == 8 => {
            // SAFETY: `len_bytes` is a local array of 8 bytes that outlives the copy.
            Some((unsafe { std::slice::from_raw_parts_mut(len_ptr, 8) }, Into::Length))
        }
        (REC_MSG_LEN, None) => {
            bad = Some("length record of the wrong size");
            None
        }
        (REC_MSG_LEN, Some(_)) => {
            bad = Some("message announced inside another");
            None
        }
        _ => {
            bad = Some("unknown record flags");
            None
        }
    })?;
    if let Some(why) = bad {
        return Err(Corrupt(why));
    }
    match popped {
        None => Ok(Step::Empty),
        Some((len, _, Into::Whole(b))) => Ok(Step::Done(b, len)),
        Some((len, _, Into::Chunk)) => {
            let a = asm.as_mut().expect("a chunk belongs to an assembly");
            a.filled += len;
            if a.filled < a.len {
                return Ok(Step::Partial);
            }
            let a = asm.take().expect("checked above");
            Ok(Step::Done(a.buf, a.len))
        }
        Some((_, _, Into::Length)) => {
            let total = u64::from_le_bytes(len_bytes);
            if total > MAX_MESSAGE as u64 {
                return Err(Corrupt("message longer than MAX_MESSAGE"));
            }
            let total = total as usize;
            // Memory for the whole message, asked once: the chunks are copied straight in.
            // Out of memory here ends the tube: the length record is already consumed.
            let Some(buf) = alloc(total) else { return Err(Corrupt("no memory for a message")) };
            if total == 0 {
                return Ok(Step::Done(buf, 0));
            }
            *asm = Some(Assembly { buf, len: total, filled: 0 });
            Ok(Step::Partial)
        }
    }
}

/// `n` bytes of the message made of `parts`, from byte `off`: a slice of one part, or a copy
/// into `scratch` when they straddle parts.
fn gather<'a>(parts: &[&'a [u8]], off: usize, n: usize, scratch: &'a mut [u8; MAX_PACKET]) -> &'a [u8] {
    debug_assert!(n <= MAX_PACKET);
    let mut start = off;
    let mut i = 0;
    while i < parts.len() && start >= parts[i].len() {
        start -= parts[i].len();
        i += 1;
    }
    if i < parts.len() && start + n <= parts[i].len() {
        return &parts[i][start..start + n];
    }
    let mut got = 0;
    while got < n {
        let take = (parts[i].len() - start).min(n - got);
        scratch[got..got + take].copy_from_slice(&parts[i][start..start + take]);
        got += take;
        start = 0;
        i += 1;
    }
    &scratch[..n]
}

/// Writes the records of one message (`total` bytes made of `parts`) from where `pos` and
/// `announced` say it stands, as far as the ring has room. `Ok(true)` once all of it is in.
/// A message of `1..=MAX_PACKET` bytes is one plain record; any other is a length record
/// then chunks of at most `MAX_PACKET` bytes.
fn write_message(
    tx: &mut Producer<ShmDir>,
    scratch: &mut [u8; MAX_PACKET],
    parts: &[&[u8]],
    total: usize,
    pos: &mut usize,
    announced: &mut bool,
) -> Result<bool, Corrupt> {
    if (1..=MAX_PACKET).contains(&total) && !*announced {
        if *pos == 0 && !tx.push(gather(parts, 0, total, scratch))? {
            return Ok(false);
        }
        *pos = total;
        return Ok(true);
    }
    if !*announced {
        if !tx.push_flagged(&(total as u64).to_le_bytes(), REC_MSG_LEN)? {
            return Ok(false);
        }
        *announced = true;
    }
    while *pos < total {
        let n = (total - *pos).min(MAX_PACKET);
        if !tx.push(gather(parts, *pos, n, scratch))? {
            return Ok(false);
        }
        *pos += n;
    }
    Ok(true)
}

/// [`Tube::resume_room`] of a tube with the seed's ring size.
pub const RESUME_ROOM: usize = RING_BYTES / 2;

#[allow(dead_code)]
const _RECORD_FITS: () = assert!(record_bytes(MAX_PACKET) <= RESUME_ROOM);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::heap::HeapMem;

    /// Writes `records` (payload, flags) and runs the reliable receive over them until it
    /// fails, completes a message or runs dry.
    fn receive(records: &[(&[u8], u32)]) -> Result<Vec<Vec<u8>>, Corrupt> {
        let heap = HeapMem::<128>::new();
        let (mut p, mut c) = (Producer::new(&heap), Consumer::new(&heap));
        for (pkt, flags) in records {
            assert_eq!(p.push_flagged(pkt, *flags), Ok(true));
        }
        p.publish();
        let mut asm: Option<Assembly<Vec<u8>>> = None;
        let mut out = Vec::new();
        loop {
            match reassemble_step(&mut c, &mut asm, &mut |len| Some(vec![0u8; len]))? {
                Step::Done(m, len) => out.push(m[..len].to_vec()),
                Step::Partial => {}
                Step::Empty => return Ok(out),
            }
        }
    }

    const LEN: u32 = REC_MSG_LEN;

    #[test]
    fn messages_are_put_back_together() {
        let ten = 10u64.to_le_bytes();
        let zero = 0u64.to_le_bytes();
        let got = receive(&[(b"one", 0), (&ten, LEN), (b"abcdef", 0), (b"ghij", 0), (&zero, LEN)]);
        assert_eq!(got, Ok(vec![b"one".to_vec(), b"abcdefghij".to_vec(), Vec::new()]));
    }

    #[test]
    fn framing_no_honest_peer_writes_is_corrupt() {
        let ten = 10u64.to_le_bytes();
        let huge = (MAX_MESSAGE as u64 + 1).to_le_bytes();
        let bad = |r: &[(&[u8], u32)]| receive(r).map(|_| ()).unwrap_err().0;
        assert_eq!(bad(&[(b"x", 2)]), "unknown record flags");
        assert_eq!(bad(&[(b"1234", LEN)]), "length record of the wrong size");
        assert_eq!(bad(&[(&huge, LEN)]), "message longer than MAX_MESSAGE");
        assert_eq!(bad(&[(&ten, LEN), (b"abcdefghijk", 0)]), "record runs past its message");
        assert_eq!(bad(&[(&ten, LEN), (b"abc", 0), (&ten, LEN)]), "message announced inside another");
    }
}
