//! Model check of the ring index protocol and the wake-up suppression, on the very
//! `Producer`/`Consumer` code that ships, with loom's atomics and data-race-checked cells.
//!
//! Run: `native/tube_ring/loom.sh` (or see README). The event channel is modelled as a
//! counting semaphore (mutex + condvar): a lost wake-up leaves the consumer waiting forever,
//! which loom reports as a deadlock. Unsynchronised access to record bytes is reported by
//! loom's `UnsafeCell` tracking, and torn/misordered records by the content checks.
#![cfg(loom)]

use loom::cell::UnsafeCell;
use loom::sync::{Arc, Condvar, Mutex};
use loom::thread;

use tube_ring::layout::{record_bytes, DirCtrl};
use tube_ring::ring::{drain_records, reader_sleep, writer_wait, Consumer, Producer, RingMem};
use tube_ring::MAX_PACKET;

/// Ring bytes in the model: small enough to fill and wrap with a few packets.
const MODEL_RING: usize = 48;

struct Shared {
    ctrl: DirCtrl,
    /// The data ring, one loom cell per 8-byte word (records are 8-aligned, so a word never
    /// belongs to two records).
    words: Vec<UnsafeCell<[u8; 8]>>,
    /// Wake-up bytes in flight on the event channel, to the reader.
    wakeups: Mutex<u32>,
    readable: Condvar,
    /// Wake-up bytes in flight to the writer (room freed).
    writer_wakeups: Mutex<u32>,
    writable: Condvar,
}

#[derive(Clone)]
struct Mem(Arc<Shared>);

impl Mem {
    fn new() -> Mem {
        Mem(Arc::new(Shared {
            ctrl: DirCtrl::new(),
            words: (0..MODEL_RING / 8).map(|_| UnsafeCell::new([0; 8])).collect(),
            wakeups: Mutex::new(0),
            readable: Condvar::new(),
            writer_wakeups: Mutex::new(0),
            writable: Condvar::new(),
        }))
    }

    /// Runs `f(word, range in word, range in buffer)` for each word that `off..off+len` touches.
    fn each_word(off: usize, len: usize, mut f: impl FnMut(usize, std::ops::Range<usize>, std::ops::Range<usize>)) {
        let mut done = 0;
        while done < len {
            let at = off + done;
            let (w, i) = (at / 8, at % 8);
            let n = (8 - i).min(len - done);
            f(w, i..i + n, done..done + n);
            done += n;
        }
    }

    fn wake(&self) {
        *self.0.wakeups.lock().unwrap() += 1;
        self.0.readable.notify_one();
    }

    fn sleep(&self) {
        let mut w = self.0.wakeups.lock().unwrap();
        while *w == 0 {
            w = self.0.readable.wait(w).unwrap();
        }
        *w -= 1;
    }

    fn wake_writer(&self) {
        *self.0.writer_wakeups.lock().unwrap() += 1;
        self.0.writable.notify_one();
    }

    fn writer_sleep(&self) {
        let mut w = self.0.writer_wakeups.lock().unwrap();
        while *w == 0 {
            w = self.0.writable.wait(w).unwrap();
        }
        *w -= 1;
    }
}

impl RingMem for Mem {
    fn size(&self) -> usize {
        MODEL_RING
    }

    fn ctrl(&self) -> &DirCtrl {
        &self.0.ctrl
    }

    fn write(&self, off: usize, src: &[u8]) -> bool {
        if off > MODEL_RING || src.len() > MODEL_RING - off {
            return false;
        }
        Self::each_word(off, src.len(), |w, in_word, in_buf| {
            // SAFETY: loom checks that no other access to this cell is concurrent.
            self.0.words[w].with_mut(|p| unsafe { (&mut *p)[in_word].copy_from_slice(&src[in_buf]) });
        });
        true
    }

    fn read(&self, off: usize, dst: &mut [u8]) -> bool {
        if off > MODEL_RING || dst.len() > MODEL_RING - off {
            return false;
        }
        Self::each_word(off, dst.len(), |w, in_word, in_buf| {
            // SAFETY: loom checks that no write to this cell is concurrent.
            self.0.words[w].with(|p| dst[in_buf].copy_from_slice(unsafe { &(&*p)[in_word] }));
        });
        true
    }
}

/// Producer side of the model: sends `lens` losslessly (spinning while full) and signals
/// the consumer whenever `publish` says it went to sleep.
fn produce(mem: Mem, lens: &'static [usize]) {
    let mut p = Producer::new(mem.clone());
    for (i, &len) in lens.iter().enumerate() {
        let pkt = vec![i as u8 + 1; len];
        while !p.push(&pkt).expect("honest ring") {
            thread::yield_now();
        }
        if p.publish() {
            mem.wake();
        }
    }
}

/// Every interleaving (within the preemption bound) of `producer` sending `lens` and the
/// consumer (`consume_waking`) receiving them.
fn model_with(producer: fn(Mem, &'static [usize]), lens: &'static [usize]) {
    let mut b = loom::model::Builder::new();
    if b.preemption_bound.is_none() {
        b.preemption_bound = Some(3);
    }
    b.check(move || {
        let mem = Mem::new();
        let m = mem.clone();
        let t = thread::spawn(move || producer(m, lens));
        consume_waking(mem, lens);
        t.join().unwrap();
    });
}

/// A producer that spins while the ring is full.
fn model(lens: &'static [usize]) {
    model_with(produce, lens);
}

/// Producer of a reliable tube: when the ring is full it does not spin but waits on its own
/// channel with the shipped wait protocol (`writer_wait`), so a lost "room freed" wake-up
/// leaves it waiting forever, which loom reports.
fn produce_waiting(mem: Mem, lens: &'static [usize]) {
    let mut p = Producer::new(mem.clone());
    for (i, &len) in lens.iter().enumerate() {
        let pkt = vec![i as u8 + 1; len];
        while !p.push(&pkt).expect("honest ring") {
            let wait = writer_wait(&mut p, record_bytes(len)).expect("honest ring");
            if wait.wake_reader {
                mem.wake();
            }
            if wait.may_wait {
                mem.writer_sleep();
            }
        }
        if p.publish() {
            mem.wake();
        }
    }
}

/// Consumer: drains with the receive loop the tube ships (`drain_records`), checks every
/// packet, and sleeps with the shipped sleep protocol (`reader_sleep`); it owes the writer a wake-up
/// whenever a publish finds it waiting for room (a writer that spins never waits).
fn consume_waking(mem: Mem, lens: &'static [usize]) {
    let mut c = Consumer::new(mem.clone());
    let mut buf = [0u8; MAX_PACKET];
    let mut got = 0;
    while got < lens.len() {
        let mut step = |c: &mut Consumer<Mem>| c.pop(&mut buf).map(|r| r.map(|len| (len, buf[..len].to_vec())));
        let mut seen = Vec::new();
        let n = drain_records(&mut c, usize::MAX, |c| Ok(step(c)?.map(|(len, b)| { seen.push(b); len })), |_| {})
            .expect("honest ring");
        for pkt in seen {
            assert_eq!(pkt.len(), lens[got]);
            assert!(pkt.iter().all(|&b| b == got as u8 + 1), "packet {got} torn");
            got += 1;
        }
        if c.take_writer_wake() {
            mem.wake_writer();
        }
        if n > 0 {
            continue;
        }
        let sleep = reader_sleep(&mut c);
        if sleep.wake_writer {
            mem.wake_writer();
        }
        if sleep.may_sleep {
            mem.sleep();
        }
    }
}

/// A producer that waits on its channel for room (`produce_waiting`).
fn model_waiting(lens: &'static [usize]) {
    model_with(produce_waiting, lens);
}

/// A writer that must wait for room twice (records of 32, 32 and 24 bytes through a ring
/// of 48) is always woken when the reader frees it: no lost "room freed" wake-up.
#[test]
fn no_lost_writer_wakeup() {
    model_waiting(&[20, 20, 12]);
}

/// Two small packets: the wake-up protocol alone (no full ring).
#[test]
fn no_lost_wakeup() {
    model(&[1, 9]);
}

/// Packets that fill the ring and wrap: 16 + 24 + 16 + 32 bytes through 48 bytes, with the
/// third payload and the fourth record split across the end.
#[test]
fn full_and_wrapping_ring() {
    model(&[3, 12, 7, 20]);
}
