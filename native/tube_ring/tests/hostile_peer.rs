//! A peer that scribbles random bytes over the whole shared region (indices, lengths, flags
//! and data) while we send and drain. Every call must return a value (never crash, hang or
//! read out of bounds); once corruption is seen the tube stays dead.
#![cfg(not(loom))]

mod common;

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use tube_ring::layout::{dir_ctrl_offset, ring_offset, DirCtrl, RING_BYTES};
use tube_ring::{Offer, RingError, SendError, Tube, TUBE_BYTES};

const ROUNDS: usize = 5;
const SCRIBBLE_FOR: Duration = Duration::from_millis(400);

/// Entry point of child processes; a no-op in the normal test run.
#[test]
fn child_entry() {
    let Some(role) = child_role() else { return };
    assert_eq!(role, "scribbler");
    let mut tube = connect_from_env();
    let base = find_tube_mapping();
    let seed: u64 = std::env::var("SEED").unwrap().parse().unwrap();
    scribble(&mut tube, base, seed, SCRIBBLE_FOR);
}

/// Start of this process's mapping of the tube memfd, from /proc/self/maps.
fn find_tube_mapping() -> usize {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let line = maps.lines().find(|l| l.contains("/memfd:tube")).expect("tube mapping");
    let (start, end) = line.split_whitespace().next().unwrap().split_once('-').unwrap();
    let (start, end) = (usize::from_str_radix(start, 16).unwrap(), usize::from_str_radix(end, 16).unwrap());
    assert_eq!(end - start, TUBE_BYTES);
    start
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Writes garbage all over the region for `dur`: sometimes blind, sometimes plausible values
/// aimed at the checks (indices just inside or outside the window, lengths near the limits).
fn scribble(tube: &mut Tube, base: usize, seed: u64, dur: Duration) {
    let mut rng = Rng(seed | 1);
    // Direction 1 is what the offerer (the test process) reads; direction 0 what it writes.
    let ctrl = |dir: usize| (base + dir_ctrl_offset(dir)) as *const DirCtrl;
    let deadline = Instant::now() + dur;
    let mut n = 0u64;
    while Instant::now() < deadline {
        n += 1;
        let r = rng.next();
        // SAFETY (whole block): every address is inside our own live TUBE_BYTES mapping of the
        // memfd (kept alive by `tube`); DirCtrl fields are written only through atomics.
        unsafe {
            let rx_ctrl = &*ctrl(1);
            let tx_ctrl = &*ctrl(0);
            match r % 8 {
                0 => {
                    let off = rng.below(TUBE_BYTES as u64 / 8) as usize * 8;
                    (*((base + off) as *const AtomicU64)).store(rng.next(), Ordering::Relaxed);
                }
                1 => {
                    let off = rng.below(TUBE_BYTES as u64) as usize;
                    ((base + off) as *mut u8).write_volatile(rng.next() as u8);
                }
                2 => {
                    let cons = rx_ctrl.cons.0.load(Ordering::Relaxed);
                    let ahead = rng.below(RING_BYTES as u64 + 64) & !7;
                    rx_ctrl.prod.0.store(cons.wrapping_add(ahead), Ordering::Relaxed);
                }
                3 => {
                    let cons = rx_ctrl.cons.0.load(Ordering::Relaxed);
                    let pos = (cons.wrapping_add(rng.below(64) * 8) % RING_BYTES as u64) as usize & !7;
                    let len = [0, 1, 4095, 4096, 4097, u32::MAX, rng.next() as u32][rng.below(7) as usize];
                    let hdr = (base + ring_offset(1) + pos) as *const AtomicU32;
                    (*hdr).store(len, Ordering::Relaxed);
                }
                4 => {
                    let prod = tx_ctrl.prod.0.load(Ordering::Relaxed);
                    let back = rng.below(RING_BYTES as u64 + 64);
                    tx_ctrl.cons.0.store(prod.wrapping_sub(back), Ordering::Relaxed);
                }
                5 => {
                    rx_ctrl.wake.0.sleeping.store(rng.next() as u32, Ordering::Relaxed);
                    rx_ctrl.wake.0.space_wanted.store(rng.next() as u32, Ordering::Relaxed);
                }
                6 => {
                    tx_ctrl.wake.0.sleeping.store(rng.next() as u32, Ordering::Relaxed);
                    tx_ctrl.wake.0.space_wanted.store(rng.next() as u32, Ordering::Relaxed);
                    // A record header with random flags: reliable framing no honest peer writes.
                    let cons = rx_ctrl.cons.0.load(Ordering::Relaxed);
                    let pos = (cons % RING_BYTES as u64) as usize & !7;
                    let flags = (base + ring_offset(1) + pos + 4) as *const AtomicU32;
                    (*flags).store(rng.below(4) as u32, Ordering::Relaxed);
                }
                _ => {
                    let len = 1 + rng.below(4096) as usize;
                    let _ = tube.send(&vec![r as u8; len]);
                }
            }
        }
    }
    println!("RESULT {n}");
}

/// Sends, drains and services the fd until the scribbler is done. Returns whether the tube
/// was found corrupt.
fn hammer(tube: &mut Tube, child: &mut std::process::Child) -> bool {
    let mut rng = Rng(0x1234_5678);
    let mut corrupt = false;
    let deadline = Instant::now() + PATIENCE;
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "scribbler did not finish");
        let pkt = vec![7u8; 1 + rng.below(4096) as usize];
        match tube.send(&pkt) {
            Ok(()) | Err(SendError::Full) | Err(SendError::Closed) => {}
            Err(SendError::Corrupt) => corrupt = true,
            Err(e) => panic!("unexpected {e}"),
        }
        let _ = tube.send_many([&pkt[..1], &pkt[..]]);
        match tube.recv(64, |p| assert!(!p.is_empty() && p.len() <= 4096)) {
            Ok(_) | Err(RingError::PeerGone) => {}
            Err(RingError::Corrupt(_)) => corrupt = true,
            Err(e) => panic!("unexpected {e}"),
        }
        // The reliable paths too: messages of any size into an outbox, and reassembly of
        // whatever the scribbler left (memory asked for is capped, as a driver's would be).
        if tube.queued_bytes() < (1 << 20) {
            match tube.send_message(&[&pkt, &pkt]) {
                Ok(()) | Err(SendError::Closed) => {}
                Err(SendError::Corrupt) => corrupt = true,
                Err(e) => panic!("unexpected {e}"),
            }
        }
        let _ = tube.prepare_wait_room(4096);
        let _ = tube.flush();
        let mut asm = None;
        let alloc = |len: usize| (len <= 1 << 20).then(|| vec![0u8; len]);
        match tube.recv_messages(&mut asm, 16, alloc, |m, len| assert!(m.len() >= len)) {
            Ok(_) | Err(RingError::PeerGone) => {}
            Err(RingError::Corrupt(_)) => corrupt = true,
            Err(e) => panic!("unexpected {e}"),
        }
        let _ = tube.has_data();
        let _ = tube.prepare_sleep();
        if wait_readable(tube.fd(), Duration::ZERO) {
            let _ = tube.on_readable();
        }
        if corrupt {
            assert_eq!(tube.send(b"x"), Err(SendError::Corrupt), "dead tubes stay dead");
            assert!(matches!(tube.recv(1, |_| {}), Err(RingError::Corrupt(_))));
            assert!(!tube.prepare_sleep());
            assert!(!tube.is_open());
        }
    }
    corrupt
}

#[test]
fn scribbling_peer_only_causes_errors() {
    if child_role().is_some() {
        return;
    }
    let mut corrupt_rounds = 0;
    for round in 0..ROUNDS {
        let offer = Offer::new().unwrap();
        let mut env = refs_env(&offer);
        env.push(("SEED", (round as u64 * 7919 + 17).to_string()));
        let mut child = spawn("child_entry", "scribbler", &env);
        let mut tube = offer.accept(PATIENCE).unwrap();
        if hammer(&mut tube, &mut child) {
            corrupt_rounds += 1;
        }
        let result = read_result(&mut child);
        expect_success(&mut child);
        assert!(result.parse::<u64>().unwrap() > 0, "the child scribbled");
    }
    // Random writes into the indices cannot go unnoticed for 400 ms; if no round saw
    // corruption, validation is missing somewhere.
    assert!(corrupt_rounds > 0, "no round detected corruption");
}
