//! The ring protocol of one direction, independent of where the memory lives.
//!
//! The producer owns the true producer index and the consumer owns the true consumer index;
//! each keeps its own copy privately and only *publishes* it to shared memory. What it reads
//! back from shared memory is the other side's index, which a hostile peer may have set to
//! anything, so every load is validated before use:
//!
//! * consumer: `avail = prod - cons` (wrapping) must be `<= size`; each record header must give
//!   a length in `1..=MAX_PACKET`, and the record must lie inside `avail`;
//! * producer: `used = prod - cons` (wrapping) must be `<= size` and a multiple of 8.
//!
//! A violation yields [`Corrupt`] and the caller ends the tube. Positions are always taken
//! modulo the ring size and every copy goes through bounds-checked [`RingMem`] calls, so even a
//! validation gap could not touch memory outside the ring.
//!
//! Records are `len: u32 LE, 4 reserved bytes, payload, padding to 8`. The ring size is a
//! multiple of 8, so a header never wraps; a payload that reaches the end of the ring continues
//! at offset 0 (split copy), so no space is lost to padding records.
//!
//! Wake-up suppression is the classic store/fence/load pair on both sides:
//! producer `store prod; fence(SeqCst); load sleeping`, consumer
//! `store sleeping = 1; fence(SeqCst); load prod`. At least one of the two loads sees the
//! other side's store, so either the consumer sees the data and stays awake or the producer
//! sees the flag and sends a wake-up. The producer swaps the flag to 0 before signalling, so a
//! sleep costs at most one wake-up byte. `tests/loom_ring.rs` model-checks this.
//!
//! A reliable producer that finds no room waits with the mirror image of that pair:
//! producer `store space_wanted = 1; fence(SeqCst); load cons`, consumer
//! `store cons; fence(SeqCst); load space_wanted`. Either the producer sees the freed room and
//! does not wait, or the consumer sees the flag, swaps it to 0 and sends one wake-up byte.

use crate::layout::{record_bytes, DirCtrl, HDR_BYTES, MAX_PACKET};
#[cfg(all(test, not(loom)))]
use crate::layout::REC_MSG_LEN;
use crate::sync::{fence, Ordering};

/// The ring content is inconsistent (written by a faulty or hostile peer); the tube is dead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Corrupt(pub &'static str);

impl core::fmt::Display for Corrupt {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "corrupt ring: {}", self.0)
    }
}

impl std::error::Error for Corrupt {}

/// The memory of one direction: its control block and `size()` data bytes.
///
/// Implementations must be sound for any `off`/length: out-of-range copies return `false`
/// instead of touching memory. Data bytes may change under the reader's feet (the peer is
/// another process), so `read` only promises to fill `dst` with *some* bytes.
pub trait RingMem {
    /// Data bytes of the ring; a non-zero multiple of 8, the same for the memory's life.
    fn size(&self) -> usize;
    /// The shared control block of this direction.
    fn ctrl(&self) -> &DirCtrl;
    /// Copies `src` to data offset `off`; `false` (and nothing written) if it does not fit.
    fn write(&self, off: usize, src: &[u8]) -> bool;
    /// Copies from data offset `off` into `dst`; `false` (and nothing read) if out of range.
    fn read(&self, off: usize, dst: &mut [u8]) -> bool;

    /// Writes a record header (8 bytes, little-endian) at `off`, a multiple of 8 below `size()`.
    /// Implementations may override this with a single store.
    fn write_header(&self, off: usize, hdr: u64) -> bool {
        self.write(off, &hdr.to_le_bytes())
    }

    /// Reads the record header at `off`, a multiple of 8 below `size()`.
    fn read_header(&self, off: usize) -> Option<u64> {
        let mut b = [0u8; HDR_BYTES];
        self.read(off, &mut b).then(|| u64::from_le_bytes(b))
    }
}

/// Writes `src` at ring position `pos`, continuing at 0 when it reaches the end.
fn write_wrapped<M: RingMem>(mem: &M, pos: usize, src: &[u8]) -> bool {
    debug_assert!(pos < mem.size());
    let first = src.len().min(mem.size().saturating_sub(pos));
    let (a, b) = src.split_at(first);
    mem.write(pos, a) && (b.is_empty() || mem.write(0, b))
}

/// Reads into `dst` from ring position `pos`, continuing at 0 when it reaches the end.
fn read_wrapped<M: RingMem>(mem: &M, pos: usize, dst: &mut [u8]) -> bool {
    debug_assert!(pos < mem.size());
    let first = dst.len().min(mem.size().saturating_sub(pos));
    let (a, b) = dst.split_at_mut(first);
    mem.read(pos, a) && (b.is_empty() || mem.read(0, b))
}

/// Position in a ring of `size` bytes of free-running index `idx`, in `0..size`.
fn pos_of(idx: u64, size: usize) -> usize {
    (idx % size as u64) as usize
}

/// The writing end of one direction.
#[derive(Debug)]
pub struct Producer<M> {
    mem: M,
    /// Our producer index (the truth; the shared copy is only published).
    prod: u64,
    /// Last validated consumer index; `prod - cons_cache` in `0..=size`.
    cons_cache: u64,
    /// The ring's size, read once.
    size: usize,
}

impl<M: RingMem> Producer<M> {
    /// A producer on a ring whose shared indices are both 0.
    pub fn new(mem: M) -> Self {
        let size = mem.size();
        Producer { mem, prod: 0, cons_cache: 0, size }
    }

    /// The memory this producer writes.
    pub fn mem(&self) -> &M {
        &self.mem
    }

    /// Free bytes according to the cached consumer index.
    fn free_cached(&self) -> usize {
        let used = self.prod.wrapping_sub(self.cons_cache);
        debug_assert!(used <= self.size as u64);
        self.size - used as usize
    }

    /// Whether `need` bytes are free, re-reading the consumer index only when the cached one
    /// says no (that load is a cache miss on the peer's line, so it is kept off the fast path).
    fn has_room(&mut self, need: usize, may_refresh: bool) -> Result<bool, Corrupt> {
        if self.free_cached() >= need || !may_refresh {
            return Ok(self.free_cached() >= need);
        }
        // Acquire: the consumer's copies out of the space it freed happen before we reuse it.
        let cons = self.mem.ctrl().cons.0.load(Ordering::Acquire);
        let used = self.prod.wrapping_sub(cons);
        if used > self.size as u64 || used & 7 != 0 {
            return Err(Corrupt("consumer index out of range"));
        }
        self.cons_cache = cons;
        Ok(self.free_cached() >= need)
    }

    /// Writes one packet of `1..=MAX_PACKET` bytes without publishing it.
    /// `Ok(false)`: no room (the caller counts a drop).
    pub fn push(&mut self, pkt: &[u8]) -> Result<bool, Corrupt> {
        self.push_inner(pkt, 0, true)
    }

    /// As [`Producer::push`], with record flags in the header (see `layout`).
    pub fn push_flagged(&mut self, pkt: &[u8], flags: u32) -> Result<bool, Corrupt> {
        self.push_inner(pkt, flags, true)
    }

    /// Whether `need` bytes are free now (re-reading the consumer index if needed).
    pub fn room_for(&mut self, need: usize) -> Result<bool, Corrupt> {
        self.has_room(need, true)
    }

    /// Announces that this producer is going to wait for `need` free bytes, then re-checks.
    /// Returns true if it may wait (the consumer will send one wake-up when it next frees
    /// room), false if the room is there already: the flag is withdrawn and the caller writes.
    pub fn prepare_wait(&mut self, need: usize) -> Result<bool, Corrupt> {
        self.mem.ctrl().wake.0.space_wanted.store(1, Ordering::Relaxed);
        // SeqCst fence: orders the flag store before the load of `cons` in `has_room`; pairs
        // with the fence in `Consumer::publish`.
        fence(Ordering::SeqCst);
        if self.has_room(need, true)? {
            self.mem.ctrl().wake.0.space_wanted.store(0, Ordering::Relaxed);
            return Ok(false);
        }
        Ok(true)
    }

    /// As [`Producer::push`], but judges room by the consumer index last read, without
    /// touching the consumer's cache line. For the rest of a batch once the ring was found
    /// full: re-reading then only adds contention with the consumer that is freeing space.
    pub fn push_cached(&mut self, pkt: &[u8]) -> Result<bool, Corrupt> {
        self.push_inner(pkt, 0, false)
    }

    fn push_inner(&mut self, pkt: &[u8], flags: u32, may_refresh: bool) -> Result<bool, Corrupt> {
        if pkt.is_empty() || pkt.len() > MAX_PACKET {
            return Err(Corrupt("packet size out of range"));
        }
        let need = record_bytes(pkt.len());
        if !self.has_room(need, may_refresh)? {
            return Ok(false);
        }
        // Headers never wrap: `prod` stays a multiple of 8 and so does SIZE.
        let pos = pos_of(self.prod, self.size);
        let body = pos_of(self.prod.wrapping_add(HDR_BYTES as u64), self.size);
        let hdr = pkt.len() as u64 | (u64::from(flags) << 32);
        if !(self.mem.write_header(pos, hdr) && write_wrapped(&self.mem, body, pkt)) {
            return Err(Corrupt("record outside the ring"));
        }
        self.prod = self.prod.wrapping_add(need as u64);
        Ok(true)
    }

    /// Makes every pushed packet visible to the consumer. Returns true if the consumer had
    /// announced it was going to sleep: the caller must then send it one wake-up.
    pub fn publish(&mut self) -> bool {
        let ctrl = self.mem.ctrl();
        // Release: the record bytes written by `push` are visible before the index that covers them.
        ctrl.prod.0.store(self.prod, Ordering::Release);
        // SeqCst fence: orders the store above before the load of `sleeping` below; pairs with
        // the fence in `Consumer::prepare_sleep` (see the module docs).
        fence(Ordering::SeqCst);
        // Relaxed load first so the common case (reader awake) costs no locked instruction;
        // the swap makes sure only one producer publish answers one sleep.
        let sleeping = &ctrl.wake.0.sleeping;
        sleeping.load(Ordering::Relaxed) != 0 && sleeping.swap(0, Ordering::Relaxed) != 0
    }
}

/// The reading end of one direction.
#[derive(Debug)]
pub struct Consumer<M> {
    mem: M,
    /// Our consumer index (the truth; the shared copy is only published).
    cons: u64,
    /// Last validated producer index; `prod_cache - cons` in `0..=size`.
    prod_cache: u64,
    /// The ring's size, read once.
    size: usize,
    /// Consumer index last published.
    published: u64,
    /// A publish found the producer waiting for room: the caller owes it one wake-up.
    writer_wake: bool,
}

impl<M: RingMem> Consumer<M> {
    /// A consumer on a ring whose shared indices are both 0.
    pub fn new(mem: M) -> Self {
        let size = mem.size();
        Consumer { mem, cons: 0, prod_cache: 0, size, published: 0, writer_wake: false }
    }

    /// The memory this consumer reads.
    pub fn mem(&self) -> &M {
        &self.mem
    }

    /// Re-reads and validates the producer index.
    fn refresh(&mut self) -> Result<(), Corrupt> {
        // Acquire: pairs with the producer's Release store; the records it covers are visible.
        let prod = self.mem.ctrl().prod.0.load(Ordering::Acquire);
        if prod.wrapping_sub(self.cons) > self.size as u64 {
            return Err(Corrupt("producer index out of range"));
        }
        self.prod_cache = prod;
        Ok(())
    }

    /// Copies the next packet into `buf` and returns its length, or `None` if the ring is
    /// empty. The consumer index is advanced privately; call [`Consumer::publish`] to free space.
    pub fn pop(&mut self, buf: &mut [u8; MAX_PACKET]) -> Result<Option<usize>, Corrupt> {
        self.pop_into(|len| Some((&mut buf[..len], ()))).map(|r| r.map(|(len, ())| len))
    }

    /// Like [`Consumer::pop`], but the packet is copied straight into memory of the caller's:
    /// `dest(len)` gets the checked length and returns a slice of at least `len` bytes plus a
    /// token that comes back with the length once the copy is done (or `None` to leave the
    /// packet in the ring). A slice shorter than `len` is refused as an error.
    pub fn pop_into<'b, T>(
        &mut self,
        dest: impl FnOnce(usize) -> Option<(&'b mut [u8], T)>,
    ) -> Result<Option<(usize, T)>, Corrupt> {
        self.pop_record_into(|len, _flags| dest(len)).map(|r| r.map(|(len, _flags, t)| (len, t)))
    }

    /// Like [`Consumer::pop_into`], and also gives the record's flags (read once, with the
    /// length, from the header): `dest(len, flags)`; `Ok(Some((len, flags, token)))`.
    pub fn pop_record_into<'b, T>(
        &mut self,
        dest: impl FnOnce(usize, u32) -> Option<(&'b mut [u8], T)>,
    ) -> Result<Option<(usize, u32, T)>, Corrupt> {
        if self.prod_cache == self.cons {
            self.refresh()?;
            if self.prod_cache == self.cons {
                return Ok(None);
            }
        }
        let avail = self.prod_cache.wrapping_sub(self.cons);
        debug_assert!(avail <= self.size as u64);
        // `cons` is ours and stays a multiple of 8, so the header is aligned and never wraps.
        let Some(hdr) = self.mem.read_header(pos_of(self.cons, self.size)) else {
            return Err(Corrupt("record outside the ring"));
        };
        // The length is read once, into a local: later scribbles cannot change what we check.
        let len = (hdr & 0xffff_ffff) as usize;
        let flags = (hdr >> 32) as u32;
        if len == 0 || len > MAX_PACKET {
            return Err(Corrupt("record length out of range"));
        }
        let rec = record_bytes(len) as u64;
        if rec > avail {
            return Err(Corrupt("record runs past the producer index"));
        }
        let body = pos_of(self.cons.wrapping_add(HDR_BYTES as u64), self.size);
        let Some((dst, token)) = dest(len, flags) else { return Ok(None) };
        let Some(dst) = dst.get_mut(..len) else {
            return Err(Corrupt("destination shorter than the packet"));
        };
        if !read_wrapped(&self.mem, body, dst) {
            return Err(Corrupt("record outside the ring"));
        }
        self.cons = self.cons.wrapping_add(rec);
        Ok(Some((len, flags, token)))
    }

    /// Gives the space of every popped packet back to the producer. If the producer waits for
    /// room ([`Producer::prepare_wait`]), [`Consumer::take_writer_wake`] then says so.
    pub fn publish(&mut self) {
        if self.published != self.cons {
            let ctrl = self.mem.ctrl();
            // Release: our copies out of the records happen before the producer may overwrite them.
            ctrl.cons.0.store(self.cons, Ordering::Release);
            self.published = self.cons;
            // SeqCst fence: orders the store above before the load of `space_wanted` below;
            // pairs with the fence in `Producer::prepare_wait`.
            fence(Ordering::SeqCst);
            let wanted = &ctrl.wake.0.space_wanted;
            if wanted.load(Ordering::Relaxed) != 0 && wanted.swap(0, Ordering::Relaxed) != 0 {
                self.writer_wake = true;
            }
        }
    }

    /// True once after a publish found the producer waiting for room: the caller must send
    /// it one wake-up.
    pub fn take_writer_wake(&mut self) -> bool {
        std::mem::take(&mut self.writer_wake)
    }

    /// Data bytes of the ring.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Bytes popped but not yet published.
    pub fn unpublished(&self) -> u64 {
        self.cons.wrapping_sub(self.published)
    }

    /// True if a packet is (or appears to be) waiting. A corrupt producer index also reads as
    /// "data", so the caller's next `pop` reports it.
    pub fn has_data(&self) -> bool {
        // Acquire: as in `refresh`.
        self.prod_cache != self.cons || self.mem.ctrl().prod.0.load(Ordering::Acquire) != self.cons
    }

    /// Announces that the consumer is going to sleep, then re-checks the ring. Returns true if
    /// it may sleep (the producer will send a wake-up for the next packet), false if data
    /// arrived meanwhile and the caller must drain again. Publishes the consumer index first
    /// so a producer that is waiting for room is not kept waiting by a sleeper.
    pub fn prepare_sleep(&mut self) -> bool {
        self.publish();
        let ctrl = self.mem.ctrl();
        ctrl.wake.0.sleeping.store(1, Ordering::Relaxed);
        // SeqCst fence: orders the flag store before the load of `prod` in `has_data`; pairs
        // with the fence in `Producer::publish`.
        fence(Ordering::SeqCst);
        !self.has_data()
    }

    /// Withdraws a sleep announced by `prepare_sleep`: the caller polls the ring itself from
    /// now on, so the producer need not send wake-ups. A wake-up already sent stays in the
    /// socket and is consumed by the next `on_readable`; no ordering is needed because the
    /// caller checks the ring after this.
    pub fn stay_awake(&self) {
        self.mem.ctrl().wake.0.sleeping.store(0, Ordering::Relaxed);
    }
}

/// The receive loop every reader runs (the port driver through `Tube::recv*`, the loom
/// model, the fuzzer): `step` takes one packet (or message) out of the ring and hands it on,
/// `Ok(None)` when there is none; `counted(len)` is called for each. Up to `max` are taken;
/// space goes back to the producer every quarter ring in a long batch (so a lossy writer need
/// not drop and a reliable one need not wait) and at the end.
pub fn drain_records<M: RingMem>(
    rx: &mut Consumer<M>,
    max: usize,
    mut step: impl FnMut(&mut Consumer<M>) -> Result<Option<usize>, Corrupt>,
    mut counted: impl FnMut(usize),
) -> Result<usize, Corrupt> {
    let mut n = 0;
    while n < max {
        match step(rx)? {
            Some(len) => {
                n += 1;
                counted(len);
                if rx.unpublished() >= (rx.size / 4) as u64 {
                    rx.publish();
                }
            }
            None => break,
        }
    }
    rx.publish();
    Ok(n)
}

/// What the reader's sleep protocol decided ([`reader_sleep`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sleep {
    /// The reader may wait for a wake-up: the producer will send one for its next packet.
    /// False: data arrived meanwhile, drain again.
    pub may_sleep: bool,
    /// The publish before sleeping found the producer waiting for room: send it one wake-up.
    pub wake_writer: bool,
}

/// The reader's sleep protocol, run when a drain found the ring empty: give space back,
/// announce the sleep with the fence, re-check the ring.
pub fn reader_sleep<M: RingMem>(rx: &mut Consumer<M>) -> Sleep {
    let may_sleep = rx.prepare_sleep();
    Sleep { may_sleep, wake_writer: rx.take_writer_wake() }
}

/// What a reliable writer's wait protocol decided ([`writer_wait`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wait {
    /// The writer may wait for a wake-up: the reader will send one when it next frees room.
    /// False: the room is there, write again.
    pub may_wait: bool,
    /// Publishing what the writer wrote found the reader asleep: send it one wake-up.
    pub wake_reader: bool,
}

/// A reliable writer's wait protocol, run when the ring has no room for `need` bytes: make
/// what it wrote visible (the reader may be asleep on it), announce the wait with the fence,
/// re-check the room.
pub fn writer_wait<M: RingMem>(tx: &mut Producer<M>, need: usize) -> Result<Wait, Corrupt> {
    let wake_reader = tx.publish();
    let may_wait = tx.prepare_wait(need)?;
    Ok(Wait { may_wait, wake_reader })
}

/// Ring memory on the heap for the unit tests of this crate.
#[cfg(all(test, not(loom)))]
pub(crate) mod heap {
    use super::RingMem;
    use crate::layout::DirCtrl;
    use std::cell::UnsafeCell;

    /// A small single-threaded ring of `N` data bytes on the heap.
    pub(crate) struct HeapMem<const N: usize> {
        pub(crate) ctrl: DirCtrl,
        data: UnsafeCell<[u8; N]>,
    }

    impl<const N: usize> HeapMem<N> {
        pub(crate) fn new() -> Self {
            HeapMem { ctrl: DirCtrl::new(), data: UnsafeCell::new([0; N]) }
        }
    }

    impl<const N: usize> RingMem for &HeapMem<N> {
        fn size(&self) -> usize {
            N
        }
        fn ctrl(&self) -> &DirCtrl {
            &self.ctrl
        }
        fn write(&self, off: usize, src: &[u8]) -> bool {
            if off > N || src.len() > N - off {
                return false;
            }
            // SAFETY: single-threaded test; no reference into `data` is alive during the copy.
            unsafe { (&mut *self.data.get())[off..off + src.len()].copy_from_slice(src) };
            true
        }
        fn read(&self, off: usize, dst: &mut [u8]) -> bool {
            if off > N || dst.len() > N - off {
                return false;
            }
            // SAFETY: as in `write`.
            dst.copy_from_slice(unsafe { &(&*self.data.get())[off..off + dst.len()] });
            true
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::heap::HeapMem;
    use super::*;

    fn heap() -> HeapMem<64> {
        HeapMem::new()
    }

    #[test]
    fn packets_round_trip_across_the_wrap() {
        let m = heap();
        let (mut p, mut c) = (Producer::new(&m), Consumer::new(&m));
        let mut buf = [0u8; MAX_PACKET];
        for round in 0..50u8 {
            let len = 1 + (round as usize * 7) % 40;
            let pkt: Vec<u8> = (0..len).map(|i| round ^ i as u8).collect();
            assert_eq!(p.push(&pkt), Ok(true));
            p.publish();
            assert_eq!(c.pop(&mut buf), Ok(Some(len)));
            assert_eq!(&buf[..len], &pkt[..]);
            c.publish();
        }
    }

    #[test]
    fn full_ring_refuses_until_consumer_publishes() {
        let m = heap();
        let (mut p, mut c) = (Producer::new(&m), Consumer::new(&m));
        let mut buf = [0u8; MAX_PACKET];
        assert_eq!(p.push(&[1; 20]), Ok(true)); // 32 bytes
        assert_eq!(p.push(&[2; 24]), Ok(true)); // 32 bytes: ring full
        assert_eq!(p.push(&[3; 1]), Ok(false));
        p.publish();
        assert_eq!(c.pop(&mut buf), Ok(Some(20)));
        assert_eq!(p.push(&[3; 1]), Ok(false), "space not published yet");
        c.publish();
        assert_eq!(p.push(&[3; 1]), Ok(true));
    }

    #[test]
    fn bad_indices_and_lengths_are_corrupt() {
        let m = heap();
        let mut c = Consumer::new(&m);
        let mut buf = [0u8; MAX_PACKET];
        m.ctrl.prod.0.store(65, Ordering::Relaxed);
        assert!(c.pop(&mut buf).is_err());
        let mut c = Consumer::new(&m);
        m.ctrl.prod.0.store(u64::MAX, Ordering::Relaxed);
        assert!(c.pop(&mut buf).is_err());
        let mut c = Consumer::new(&m);
        m.ctrl.prod.0.store(16, Ordering::Relaxed);
        assert!((&m).write(0, &9u32.to_le_bytes()));
        assert_eq!(c.pop(&mut buf), Err(Corrupt("record runs past the producer index")));
        let mut c = Consumer::new(&m);
        assert!((&m).write(0, &0u32.to_le_bytes()));
        assert_eq!(c.pop(&mut buf), Err(Corrupt("record length out of range")));
        let mut c = Consumer::new(&m);
        assert!((&m).write(0, &5000u32.to_le_bytes()));
        assert_eq!(c.pop(&mut buf), Err(Corrupt("record length out of range")));
    }

    #[test]
    fn bogus_consumer_index_is_corrupt_for_the_producer() {
        let m = heap();
        let mut p = Producer::new(&m);
        for _ in 0..4 {
            assert_eq!(p.push(&[0; 8]), Ok(true));
        }
        m.ctrl.cons.0.store(1000, Ordering::Relaxed);
        assert!(p.push(&[0; 8]).is_err());
    }

    #[test]
    fn sleep_flag_yields_one_wakeup() {
        let m = heap();
        let (mut p, mut c) = (Producer::new(&m), Consumer::new(&m));
        assert!(c.prepare_sleep());
        assert_eq!(p.push(&[1]), Ok(true));
        assert!(p.publish());
        assert_eq!(p.push(&[2]), Ok(true));
        assert!(!p.publish());
        assert!(!c.prepare_sleep(), "data is waiting");
    }

    #[test]
    fn a_waiting_writer_is_owed_one_wakeup() {
        let m = heap();
        let (mut p, mut c) = (Producer::new(&m), Consumer::new(&m));
        let mut buf = [0u8; MAX_PACKET];
        assert_eq!(p.push(&[1; 24]), Ok(true));
        assert_eq!(p.push(&[2; 24]), Ok(true));
        p.publish();
        assert_eq!(p.prepare_wait(32), Ok(true), "ring full: wait");
        assert_eq!(c.pop(&mut buf), Ok(Some(24)));
        c.publish();
        assert!(c.take_writer_wake());
        assert!(!c.take_writer_wake(), "one wake-up per wait");
        assert_eq!(c.pop(&mut buf), Ok(Some(24)));
        c.publish();
        assert!(!c.take_writer_wake(), "nobody waits any more");
        assert_eq!(p.prepare_wait(32), Ok(false), "room is there: no wait");
        assert_eq!(p.push_flagged(&[3; 8], REC_MSG_LEN), Ok(true));
        p.publish();
        let got = c.pop_record_into(|len, flags| Some((&mut buf[..len], flags)));
        assert_eq!(got, Ok(Some((8, REC_MSG_LEN, REC_MSG_LEN))));
    }

    #[test]
    fn staying_awake_withdraws_the_sleep() {
        let m = heap();
        let (mut p, mut c) = (Producer::new(&m), Consumer::new(&m));
        assert!(c.prepare_sleep());
        c.stay_awake();
        assert_eq!(p.push(&[1]), Ok(true));
        assert!(!p.publish(), "a consumer that polls needs no wake-up");
        let mut buf = [0u8; MAX_PACKET];
        assert_eq!(c.pop(&mut buf), Ok(Some(1)));
        assert!(c.prepare_sleep());
        assert_eq!(p.push(&[2]), Ok(true));
        assert!(p.publish(), "sleeping again asks for wake-ups again");
    }
}
