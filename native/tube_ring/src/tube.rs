//! One end of an established tube: a producer on one ring, a consumer on the other, and the
//! connected Unix socket that carries wake-ups and tells us at once when the peer is gone.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;

use crate::error::{RingError, SendError};
use crate::layout::{dir_ctrl_offset, ring_offset, DirCtrl, MAX_PACKET, RING_BYTES, TUBE_BYTES};
use crate::ring::{Consumer, Corrupt, Producer, RingMem};
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

/// One direction inside a tube's mapping. Only `Tube` creates these, and it keeps the
/// mapping alive for as long as they exist.
#[derive(Debug)]
pub(crate) struct ShmDir {
    ctrl: NonNull<DirCtrl>,
    data: NonNull<u8>,
}

impl ShmDir {
    /// Direction `dir` (0 or 1) of `map`, which must be `TUBE_BYTES` long.
    fn new(map: &Mapping, dir: usize) -> ShmDir {
        assert!(dir < 2 && map.len() == TUBE_BYTES);
        // SAFETY: both offsets are inside the mapping (see `layout`); `dir_ctrl_offset` is a
        // multiple of 128 and the mapping is page-aligned, so the DirCtrl is aligned.
        unsafe {
            ShmDir {
                ctrl: map.ptr().add(dir_ctrl_offset(dir)).cast(),
                data: map.ptr().add(ring_offset(dir)),
            }
        }
    }
}

impl RingMem for ShmDir {
    const SIZE: usize = RING_BYTES;

    fn ctrl(&self) -> &DirCtrl {
        // SAFETY: points to an aligned DirCtrl inside a live mapping (see `ShmDir::new`).
        // DirCtrl holds only atomics, for which every bit pattern is valid, and the peer
        // process only ever changes it through atomic accesses of the same width.
        unsafe { self.ctrl.as_ref() }
    }

    fn write(&self, off: usize, src: &[u8]) -> bool {
        if off > RING_BYTES || src.len() > RING_BYTES - off {
            return false;
        }
        // SAFETY: `off + src.len() <= RING_BYTES`, so the destination is inside this ring of
        // the live mapping; `src` is process-private memory, so they cannot overlap. We never
        // hold a Rust reference into the ring, only raw pointers.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), self.data.as_ptr().add(off), src.len()) };
        true
    }

    fn read(&self, off: usize, dst: &mut [u8]) -> bool {
        if off > RING_BYTES || dst.len() > RING_BYTES - off {
            return false;
        }
        // SAFETY: the source range is inside this ring of the live mapping and `dst` is
        // private memory. The peer may write the source concurrently; then `dst` receives
        // arbitrary bytes, which callers tolerate (lengths are validated separately).
        unsafe { std::ptr::copy_nonoverlapping(self.data.as_ptr().add(off), dst.as_mut_ptr(), dst.len()) };
        true
    }

    fn write_header(&self, off: usize, hdr: u64) -> bool {
        if off & 7 != 0 || off >= RING_BYTES {
            return false;
        }
        // SAFETY: `off` is 8-aligned (the ring starts page-aligned) and `off + 8 <= RING_BYTES`
        // (RING_BYTES is a multiple of 8), so this is an aligned store inside the ring.
        unsafe { self.data.as_ptr().add(off).cast::<u64>().write_volatile(hdr.to_le()) };
        true
    }

    fn read_header(&self, off: usize) -> Option<u64> {
        if off & 7 != 0 || off >= RING_BYTES {
            return None;
        }
        // SAFETY: as in `write_header`; volatile, so the value is loaded exactly once even
        // though the peer may change it.
        Some(u64::from_le(unsafe { self.data.as_ptr().add(off).cast::<u64>().read_volatile() }))
    }
}

/// Life cycle of a tube end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Open,
    PeerGone,
    Corrupt(&'static str),
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
    peer_pid: Option<i32>,
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
    /// Wraps an established tube end: `map` is the whole region, `tx_dir` the direction
    /// this end writes (0 for the offerer, 1 for the connector).
    pub(crate) fn new(map: Mapping, sock: OwnedFd, tx_dir: usize, peer_pid: Option<i32>) -> Tube {
        Tube {
            tx: Producer::new(ShmDir::new(&map, tx_dir)),
            rx: Consumer::new(ShmDir::new(&map, 1 - tx_dir)),
            sock,
            state: State::Open,
            stats: Stats::default(),
            buf: Box::new([0; MAX_PACKET]),
            peer_pid,
            _map: map,
        }
    }

    fn send_state(&self) -> Result<(), SendError> {
        match self.state {
            State::Open => Ok(()),
            State::PeerGone => Err(SendError::Closed),
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

    /// Drains up to `max` packets, calling `f` for each. Every packet is copied out of shared
    /// memory into a private buffer before `f` sees it, so the peer cannot change it under `f`.
    /// Returns how many were delivered. A corrupt ring gives `Err(Corrupt)` and ends the tube.
    /// After the peer has gone, what it sent before is still delivered; then `Err(PeerGone)`.
    pub fn recv(&mut self, max: usize, mut f: impl FnMut(&[u8])) -> Result<usize, RingError> {
        let buf = &mut self.buf;
        drain(&mut self.rx, &mut self.stats, &mut self.state, max, |rx| {
            let popped = rx.pop(buf)?;
            if let Some(len) = popped {
                f(&buf[..len]);
            }
            Ok(popped)
        })
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
        drain(&mut self.rx, &mut self.stats, &mut self.state, max, |rx| {
            Ok(rx.pop_into(&mut alloc)?.map(|(len, token)| {
                deliver(token, len);
                len
            }))
        })
    }

    /// True if there is at least one packet to read now (or the ring is corrupt, which the
    /// next `recv` reports).
    pub fn has_data(&self) -> bool {
        matches!(self.state, State::Corrupt(_)) || self.rx.has_data()
    }

    /// The fd to poll/epoll (and BEAM `driver_select`) for readability: readable means
    /// wake-up byte(s) or hang-up.
    pub fn fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }

    /// Announces "I am about to sleep" (sets the reader-sleeping flag with a full fence), then
    /// re-checks the ring. Returns false if data arrived meanwhile or the tube is finished:
    /// the caller must call `recv` again instead of sleeping.
    pub fn prepare_sleep(&mut self) -> bool {
        self.state == State::Open && self.rx.prepare_sleep()
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

/// The receive loop shared by [`Tube::recv`] and [`Tube::recv_into`]: `step` takes one
/// packet out of the ring and hands it on (`Ok(None)` when there is none). Counts, gives
/// space back in long batches, and turns a ring violation into a dead tube.
fn drain(
    rx: &mut Consumer<ShmDir>,
    stats: &mut Stats,
    state: &mut State,
    max: usize,
    mut step: impl FnMut(&mut Consumer<ShmDir>) -> Result<Option<usize>, Corrupt>,
) -> Result<usize, RingError> {
    if let State::Corrupt(why) = *state {
        return Err(RingError::Corrupt(why));
    }
    let mut n = 0;
    while n < max {
        match step(rx) {
            Ok(Some(len)) => {
                n += 1;
                stats.recv_pkts += 1;
                stats.recv_bytes += len as u64;
                // Hand space back early in long batches so the writer need not drop.
                if rx.unpublished() >= (RING_BYTES / 4) as u64 {
                    rx.publish();
                }
            }
            Ok(None) => break,
            Err(c) => {
                *state = State::Corrupt(c.0);
                return Err(RingError::Corrupt(c.0));
            }
        }
    }
    rx.publish();
    // Gone, and nothing left that a later call could still deliver.
    if n == 0 && *state == State::PeerGone && !rx.has_data() {
        return Err(RingError::PeerGone);
    }
    Ok(n)
}
