//! What a hostile peer writes: single random corruptions of the shared region, a raw producer
//! that writes records (honest or with impossible lengths) without the ring engine's checks,
//! and the event-channel byte that wakes the victim up to read them.

use std::os::fd::RawFd;

use tube_ring::layout::{HDR_BYTES, RING_BYTES};
use tube_ring::MAX_PACKET;

use crate::region::{cons_offset, prod_offset, ring_byte, sleeping_offset, Region};
use crate::rng::Rng;

/// Kinds of corruption, in the order of [`Scribbler::counts`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// One random byte at a random offset of the whole region.
    RandomByte,
    /// One random aligned u64 at a random offset of the whole region.
    RandomWord,
    /// The producer index the victim reads, set near or past the valid window.
    ProdIndex,
    /// The consumer index the victim's writer reads, set near or past the valid window.
    ConsIndex,
    /// A record length the victim is about to read, set to an edge or impossible value.
    Length,
    /// One of the two reader-sleeping flags, set to a random value.
    SleepFlag,
    /// The region header (magic, version, ring size).
    Header,
}

/// Every kind, for reports.
pub const KINDS: [Kind; 7] =
    [Kind::RandomByte, Kind::RandomWord, Kind::ProdIndex, Kind::ConsIndex, Kind::Length, Kind::SleepFlag, Kind::Header];

/// Applies random corruptions to a region. `victim_rx` is the direction the victim reads.
#[derive(Debug)]
pub struct Scribbler {
    rng: Rng,
    victim_rx: usize,
    /// How many corruptions of each kind of [`KINDS`] were applied.
    pub counts: [u64; 7],
}

impl Scribbler {
    /// A scribbler against a victim that reads direction `victim_rx` (0 or 1).
    pub fn new(seed: u64, victim_rx: usize) -> Scribbler {
        Scribbler { rng: Rng::new(seed), victim_rx: victim_rx & 1, counts: [0; 7] }
    }

    /// Total corruptions applied.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Applies one corruption, chosen with weights that favour what rarely kills a tube
    /// (random bytes in the data rings), so one tube takes many hits. `blind_only`: only the
    /// two random kinds.
    pub fn one(&mut self, region: &Region<'_>, blind_only: bool) -> Kind {
        let roll = self.rng.below(100);
        let kind = match roll {
            _ if blind_only && roll < 70 => Kind::RandomByte,
            _ if blind_only => Kind::RandomWord,
            0..=59 => Kind::RandomByte,
            60..=79 => Kind::RandomWord,
            80..=84 => Kind::ProdIndex,
            85..=89 => Kind::ConsIndex,
            90..=94 => Kind::Length,
            95..=98 => Kind::SleepFlag,
            _ => Kind::Header,
        };
        self.apply(region, kind);
        self.counts[KINDS.iter().position(|&k| k == kind).unwrap_or(0)] += 1;
        kind
    }

    /// Applies one corruption of `kind`.
    pub fn apply(&mut self, region: &Region<'_>, kind: Kind) {
        let rx = self.victim_rx;
        let tx = 1 - rx;
        let r = &mut self.rng;
        match kind {
            Kind::RandomByte => {
                region.store_u8(r.below(region.len() as u64) as usize, r.next_u64() as u8);
            }
            Kind::RandomWord => {
                region.store_u64(r.below(region.len() as u64 / 8) as usize * 8, r.next_u64());
            }
            Kind::ProdIndex => {
                let cons = region.load_u64(cons_offset(rx)).unwrap_or(0);
                let ahead = match r.below(4) {
                    0 => RING_BYTES as u64 + 8 * (1 + r.below(8)),
                    1 => r.next_u64(),
                    2 => r.below(RING_BYTES as u64 + 64),
                    _ => r.below(RING_BYTES as u64) & !7,
                };
                region.store_u64(prod_offset(rx), cons.wrapping_add(ahead));
            }
            Kind::ConsIndex => {
                let prod = region.load_u64(prod_offset(tx)).unwrap_or(0);
                let back = if r.one_in(2) { r.next_u64() } else { r.below(RING_BYTES as u64 + 64) };
                region.store_u64(cons_offset(tx), prod.wrapping_sub(back));
            }
            Kind::Length => {
                let cons = region.load_u64(cons_offset(rx)).unwrap_or(0);
                let pos = cons.wrapping_add(r.below(64) * 8) & !7;
                let len = [0, 1, 4095, 4096, 4097, u32::MAX, r.next_u64() as u32][r.below(7) as usize];
                region.store_u32(ring_byte(rx, pos), len.to_le());
            }
            Kind::SleepFlag => {
                region.store_u32(sleeping_offset(r.below(2) as usize), r.next_u64() as u32);
            }
            Kind::Header => {
                region.store_u64(r.below(2) as usize * 8, r.next_u64());
            }
        }
    }
}

/// Writes records into the ring of one direction the way a producer would, but with no
/// checks of its own, so it can also publish records no honest producer writes.
#[derive(Debug)]
pub struct RawProducer {
    dir: usize,
    prod: u64,
}

impl RawProducer {
    /// A producer on direction `dir`, continuing from the producer index published now.
    pub fn new(region: &Region<'_>, dir: usize) -> RawProducer {
        let dir = dir & 1;
        RawProducer { dir, prod: region.load_u64(prod_offset(dir)).unwrap_or(0) & !7 }
    }

    /// Pushes an honest record and publishes it, if the reader left room. True if written.
    pub fn push(&mut self, region: &Region<'_>, pkt: &[u8]) -> bool {
        let cons = region.load_u64(cons_offset(self.dir)).unwrap_or(0);
        let used = self.prod.wrapping_sub(cons);
        let need = (HDR_BYTES + ((pkt.len() + 7) & !7)) as u64;
        if pkt.is_empty() || pkt.len() > MAX_PACKET || used > RING_BYTES as u64 || used + need > RING_BYTES as u64 {
            return false;
        }
        self.push_claiming(region, pkt.len() as u32, pkt);
        true
    }

    /// Publishes a record whose header claims `claimed` bytes while `body` is what follows
    /// (the index advances past the body): lengths of 0, over 4096, or past the published
    /// end, whatever the reader's checks must refuse.
    pub fn push_claiming(&mut self, region: &Region<'_>, claimed: u32, body: &[u8]) {
        region.store_u32(ring_byte(self.dir, self.prod), claimed.to_le());
        region.store_u32(ring_byte(self.dir, self.prod + 4), 0);
        region.write_ring(self.dir, self.prod + HDR_BYTES as u64, body);
        self.prod = self.prod.wrapping_add((HDR_BYTES + ((body.len() + 7) & !7)) as u64);
        region.store_u64(prod_offset(self.dir), self.prod);
    }

    /// Publishes a record of a reliable tube with record flags `flags` in its header.
    pub fn push_flagged(&mut self, region: &Region<'_>, flags: u32, body: &[u8]) {
        region.store_u32(ring_byte(self.dir, self.prod), (body.len() as u32).to_le());
        region.store_u32(ring_byte(self.dir, self.prod + 4), flags.to_le());
        region.write_ring(self.dir, self.prod + HDR_BYTES as u64, body);
        self.prod = self.prod.wrapping_add((HDR_BYTES + ((body.len() + 7) & !7)) as u64);
        region.store_u64(prod_offset(self.dir), self.prod);
    }

    /// True once the reader has consumed everything published so far.
    pub fn drained(&self, region: &Region<'_>) -> bool {
        region.load_u64(cons_offset(self.dir)) == Some(self.prod)
    }

    /// Publishes a producer index the reader must refuse (more than a ring ahead of its
    /// consumer index, or behind it).
    pub fn publish_impossible(&mut self, region: &Region<'_>, rng: &mut Rng) {
        let cons = region.load_u64(cons_offset(self.dir)).unwrap_or(0);
        let bad = match rng.below(3) {
            0 => cons.wrapping_add(RING_BYTES as u64 + 8),
            1 => cons.wrapping_sub(8),
            _ => cons.wrapping_add(1u64 << 63),
        };
        region.store_u64(prod_offset(self.dir), bad);
    }
}

/// Consumes everything the victim sent on direction `dir` without reading it (publishes its
/// producer index as our consumer index), so its writer keeps finding room.
pub fn discard_all(region: &Region<'_>, dir: usize) {
    if let Some(prod) = region.load_u64(prod_offset(dir)) {
        region.store_u64(cons_offset(dir), prod);
    }
}

/// Sends one wake-up byte on the event channel. `false` once the victim's end is gone.
pub fn wake(fd: RawFd) -> bool {
    let byte = 1u8;
    // SAFETY: `byte` is valid for a read of 1 byte; `fd` is the caller's open socket.
    let r = unsafe { libc::send(fd, (&byte as *const u8).cast(), 1, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
    r == 1 || std::io::Error::last_os_error().kind() == std::io::ErrorKind::WouldBlock
}

/// Whether the victim has closed its end of the event channel (reads and drops any bytes
/// waiting; never blocks).
pub fn peer_gone(fd: RawFd) -> bool {
    let mut buf = [0u8; 256];
    for _ in 0..64 {
        // SAFETY: `buf` is valid for writes of its length; `fd` is the caller's open socket.
        let r = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
        if r == 0 {
            return true;
        }
        if r < 0 {
            let e = std::io::Error::last_os_error();
            return !matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted);
        }
    }
    false
}
