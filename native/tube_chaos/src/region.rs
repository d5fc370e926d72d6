//! Raw access to this process's mapping of a tube's shared region, for writing into it what
//! a hostile peer would: `tube_ring` offers no such hook (on purpose), so the mapping is found
//! in `/proc/self/maps` (`memfd:tube`), as `tube_ring`'s own hostile-peer test does.

use std::marker::PhantomData;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};

use std::mem::offset_of;

use tube_ring::layout::{dir_ctrl_offset, ring_offset, DirCtrl, WakeFlags, RING_BYTES};
use tube_ring::{Tube, TUBE_BYTES};

use crate::ChaosError;

/// Offset of the producer index of direction `dir` (`DirCtrl::prod`).
pub fn prod_offset(dir: usize) -> usize {
    dir_ctrl_offset(dir) + offset_of!(DirCtrl, prod)
}

/// Offset of the consumer index of direction `dir` (`DirCtrl::cons`).
pub fn cons_offset(dir: usize) -> usize {
    dir_ctrl_offset(dir) + offset_of!(DirCtrl, cons)
}

/// Offset of the reader-sleeping flag of direction `dir` (`DirCtrl::wake`'s `sleeping`).
pub fn sleeping_offset(dir: usize) -> usize {
    dir_ctrl_offset(dir) + offset_of!(DirCtrl, wake) + offset_of!(WakeFlags, sleeping)
}

/// Offset in the region of byte `pos` (taken modulo the ring size) of the ring of `dir`.
pub fn ring_byte(dir: usize, pos: u64) -> usize {
    ring_offset(dir) + (pos % RING_BYTES as u64) as usize
}

/// The whole shared region of one tube, as mapped in this process; valid while the tube it
/// was found for lives. Every access is atomic (the peer writes concurrently) and
/// bounds-checked: an offset outside the region is refused, never followed.
#[derive(Debug, Clone, Copy)]
pub struct Region<'a> {
    base: usize,
    _tube: PhantomData<&'a Tube>,
}

/// One `memfd:tube` line of /proc/self/maps: start address, length, inode.
fn tube_mappings() -> Result<Vec<(usize, usize, u64)>, ChaosError> {
    let maps = std::fs::read_to_string("/proc/self/maps")?;
    let mut found = Vec::new();
    for line in maps.lines().filter(|l| l.contains("/memfd:tube")) {
        let mut f = line.split_whitespace();
        let range = f.next().unwrap_or("");
        let inode = f.nth(3).and_then(|i| i.parse::<u64>().ok());
        let (start, end) = range.split_once('-').unwrap_or(("", ""));
        match (usize::from_str_radix(start, 16), usize::from_str_radix(end, 16), inode) {
            (Ok(s), Ok(e), Some(i)) if e > s => found.push((s, e - s, i)),
            _ => return Err(ChaosError::Protocol(format!("unparsable maps line {line:?}"))),
        }
    }
    Ok(found)
}

impl<'a> Region<'a> {
    /// The region of `tube`. This process must map no other tube's memfd (a second mapping of
    /// the same memfd, the other end in the same process, is fine): mappings do not say which
    /// `Tube` they belong to, so several candidates are refused rather than guessed.
    pub fn of(tube: &'a Tube) -> Result<Region<'a>, ChaosError> {
        let _ = tube;
        let maps = tube_mappings()?;
        let Some(&(base, len, inode)) = maps.first() else {
            return Err(ChaosError::Protocol("no tube mapping in /proc/self/maps".into()));
        };
        if len != TUBE_BYTES || maps.iter().any(|&(_, l, i)| l != TUBE_BYTES || i != inode) {
            return Err(ChaosError::Protocol(format!("ambiguous tube mappings: {maps:x?}")));
        }
        Ok(Region { base, _tube: PhantomData })
    }

    /// Bytes in the region.
    pub fn len(&self) -> usize {
        TUBE_BYTES
    }

    /// Never empty; for clippy's sake.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The address of `off` if `size` (a power of two) bytes from it are inside the region and aligned to `size`.
    fn addr(&self, off: usize, size: usize) -> Option<usize> {
        (off & (size - 1) == 0 && off.checked_add(size)? <= TUBE_BYTES).then_some(self.base + off)
    }

    /// Stores one byte; false if `off` is outside the region.
    pub fn store_u8(&self, off: usize, v: u8) -> bool {
        let Some(a) = self.addr(off, 1) else { return false };
        // SAFETY: `a` is inside the live shared mapping (the borrowed Tube keeps it mapped);
        // every byte pattern is valid, and the access is atomic, as are the peer's.
        unsafe { AtomicU8::from_ptr(a as *mut u8) }.store(v, Ordering::Relaxed);
        true
    }

    /// Stores a 4-byte-aligned u32 (native order, as the ring engine reads it).
    pub fn store_u32(&self, off: usize, v: u32) -> bool {
        let Some(a) = self.addr(off, 4) else { return false };
        // SAFETY: as in store_u8; `addr` checked the alignment.
        unsafe { AtomicU32::from_ptr(a as *mut u32) }.store(v, Ordering::Release);
        true
    }

    /// Stores an 8-byte-aligned u64 with Release, so data written before is visible first.
    pub fn store_u64(&self, off: usize, v: u64) -> bool {
        let Some(a) = self.addr(off, 8) else { return false };
        // SAFETY: as in store_u32.
        unsafe { AtomicU64::from_ptr(a as *mut u64) }.store(v, Ordering::Release);
        true
    }

    /// Loads an 8-byte-aligned u64 with Acquire; `None` if outside the region or unaligned.
    pub fn load_u64(&self, off: usize) -> Option<u64> {
        let a = self.addr(off, 8)?;
        // SAFETY: as in store_u32.
        Some(unsafe { AtomicU64::from_ptr(a as *mut u64) }.load(Ordering::Acquire))
    }

    /// Writes `bytes` into the ring of `dir` from free-running position `pos`, wrapping at
    /// the end of the ring as the ring engine does.
    pub fn write_ring(&self, dir: usize, pos: u64, bytes: &[u8]) {
        for (i, &b) in bytes.iter().enumerate() {
            self.store_u8(ring_byte(dir, pos.wrapping_add(i as u64)), b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_are_the_fields_of_the_layout() {
        // A DirCtrl on the heap: each offset must land on the field of that name.
        let ctrl = DirCtrl::new();
        let base = &ctrl as *const DirCtrl as usize;
        let at = |f: *const u8| f as usize - base;
        assert_eq!(prod_offset(1) - dir_ctrl_offset(1), at(&ctrl.prod.0 as *const _ as *const u8));
        assert_eq!(cons_offset(1) - dir_ctrl_offset(1), at(&ctrl.cons.0 as *const _ as *const u8));
        assert_eq!(sleeping_offset(0) - dir_ctrl_offset(0), at(&ctrl.wake.0.sleeping as *const _ as *const u8));
        // Each on its own block, all inside the control page, before the rings.
        let offs = [prod_offset(0), cons_offset(0), sleeping_offset(0), prod_offset(1), cons_offset(1), sleeping_offset(1)];
        for w in offs.windows(2) {
            assert!(w[0] < w[1], "{offs:?}");
        }
        assert!(sleeping_offset(1) + 4 <= ring_offset(0));
        assert_eq!(ring_byte(1, RING_BYTES as u64 + 3), ring_offset(1) + 3);
    }
}
