//! Where things live in the shared region of one tube.
//!
//! ```text
//! offset 0        header: magic u64, version u32, ring bytes R u32         (written once by the offerer)
//! offset 16       delivery of the offerer's end u32, of the connector's u32 (each written by its end)
//! offset 128      DirCtrl of direction 0 (offerer -> connector)           384 bytes
//! offset 512      DirCtrl of direction 1 (connector -> offerer)           384 bytes
//! offset 4096     data ring of direction 0                                R bytes
//! offset 4096+R   data ring of direction 1                                R bytes
//! ```
//!
//! R is [`RING_BYTES`] (a region of [`TUBE_BYTES`], 256 KiB, as every lossy tube has) unless
//! the tube's Tid asks for more ([`ring_bytes_for_tid`]): the distribution carrier's tubes
//! have rings of [`DIST_RING_BYTES`], so that several 64 KiB fragments fit before the writer
//! has to wait. The connector knows the size to expect from the Tid and refuses any other,
//! whatever the header or the memfd's size claim.
//!
//! Each `DirCtrl` holds the producer index, the consumer index and the two wake-up flags
//! (reader sleeping, writer waiting for room), each on its own 128-byte block so the writer's
//! and the reader's index stores never share a cache line (128 rather than 64 because of the
//! adjacent-line prefetcher). The two flags share a block: each is written only when its
//! side is about to wait, which is off the fast path.
//!
//! Records are `len: u32 LE, flags: u32 LE, payload, padding to 8`. Lossy tubes write flags 0
//! and their readers ignore them. Reliable tubes carry messages of any size: a message of
//! `1..=MAX_PACKET` bytes is one record with flags 0; any other (empty, or longer) is a
//! [`REC_MSG_LEN`] record whose 8-byte payload is the message length (u64 LE), followed by
//! plain records that carry the message's bytes in order.

use crate::sync::{AtomicU32, AtomicU64};

/// Size of the whole shared region of one tube (control page and both directions).
pub const TUBE_BYTES: usize = 256 * 1024;
/// Largest packet of a lossy tube; packets are `1..=MAX_PACKET` bytes (shared with Erlang).
pub const MAX_PACKET: usize = crate::proto::MAX_PACKET as usize;
/// The control page at the start of the region.
pub const CTRL_BYTES: usize = 4096;
/// Bytes of one data ring (one direction): 126 KiB, which holds 1792 packets of 64 bytes.
pub const RING_BYTES: usize = (TUBE_BYTES - CTRL_BYTES) / 2;
/// Bytes of one data ring of a distribution tube: 512 KiB, 8 fragments of 64 KiB.
pub const DIST_RING_BYTES: usize = crate::proto::DIST_RING_BYTES as usize;
/// Largest ring size any tube may have (a bound on what a header may claim).
pub const MAX_RING_BYTES: usize = 64 << 20;

/// Ring size of the tube with Tid `tid`: distribution Tids get [`DIST_RING_BYTES`], the others
/// the seed's [`RING_BYTES`].
pub const fn ring_bytes_for_tid(tid: u32) -> usize {
    match tid {
        crate::proto::DIST_TID_MIN..=crate::proto::DIST_TID_MAX => DIST_RING_BYTES,
        _ => RING_BYTES,
    }
}

/// Whether `r` may be the ring size of a region: the seed's [`RING_BYTES`], or a multiple of
/// 4096 (so both rings start on a page and headers stay 8-aligned) from 64 KiB to
/// [`MAX_RING_BYTES`].
pub const fn valid_ring_bytes(r: usize) -> bool {
    r == RING_BYTES || (r % 4096 == 0 && r >= 64 * 1024 && r <= MAX_RING_BYTES)
}

/// Bytes of the whole region of a tube whose rings are `ring` bytes each.
pub const fn region_bytes(ring: usize) -> usize {
    CTRL_BYTES + 2 * ring
}

/// Offset in the control page of the delivery word of the offerer's (`end` 0) or the
/// connector's (`end` 1) end: 0 until that end's owner says, then 1 + its delivery word.
pub const fn delivery_offset(end: usize) -> usize {
    16 + 4 * end
}

/// Record header: payload length as little-endian u32, then the record flags (u32 LE).
pub const HDR_BYTES: usize = 8;
/// Record flag of a reliable tube: this record announces a message of the length its 8-byte
/// payload holds; the message's bytes follow in plain records.
pub const REC_MSG_LEN: u32 = 1;
/// Largest message a reliable tube carries (and reassembles): 256 MiB (shared with Erlang).
pub const MAX_MESSAGE: usize = crate::proto::MAX_MESSAGE as usize;
/// Magic at offset 0 of the region: identifies a tube region and its byte order.
pub const MAGIC: u64 = u64::from_le_bytes(*b"TUBERNG\0");
/// Layout version at offset 8.
pub const VERSION: u32 = 1;

/// Offset of the `DirCtrl` of direction `dir` (0 or 1).
pub const fn dir_ctrl_offset(dir: usize) -> usize {
    128 + dir * core::mem::size_of::<DirCtrl>()
}

/// Offset of the data ring of direction `dir` (0 or 1) of a seed-sized region.
pub const fn ring_offset(dir: usize) -> usize {
    ring_offset_in(dir, RING_BYTES)
}

/// Offset of the data ring of direction `dir` (0 or 1) in a region of `ring`-byte rings.
pub const fn ring_offset_in(dir: usize, ring: usize) -> usize {
    CTRL_BYTES + dir * ring
}

/// Bytes one packet of `len` bytes takes in a ring: header plus payload rounded up to 8.
pub const fn record_bytes(len: usize) -> usize {
    HDR_BYTES + ((len + 7) & !7)
}

/// A value alone on its own 128-byte block.
#[repr(C, align(128))]
#[derive(Debug)]
pub struct Padded<T>(pub T);

/// The shared control block of one direction. Any field may hold any value written by a
/// hostile peer; readers validate before use.
#[repr(C)]
#[derive(Debug)]
pub struct DirCtrl {
    /// Bytes ever written by the producer (free-running; position = index % ring size).
    pub prod: Padded<AtomicU64>,
    /// Bytes ever consumed by the consumer (free-running); `prod - cons` in `0..=ring size`.
    pub cons: Padded<AtomicU64>,
    /// The wake-up flags of this direction.
    pub wake: Padded<WakeFlags>,
}

/// The two "wake me" flags of one direction, set by the side about to wait and swapped back
/// to 0 by the side that then owes it one wake-up byte.
#[repr(C)]
#[derive(Debug)]
pub struct WakeFlags {
    /// 1 while the consumer is (about to be) asleep on the event channel, else 0.
    pub sleeping: AtomicU32,
    /// 1 while the producer of a reliable tube waits on the event channel for free room.
    pub space_wanted: AtomicU32,
}

impl DirCtrl {
    /// A zeroed control block (for rings on the heap: tests and model checking).
    pub fn new() -> DirCtrl {
        DirCtrl {
            prod: Padded(AtomicU64::new(0)),
            cons: Padded(AtomicU64::new(0)),
            wake: Padded(WakeFlags { sleeping: AtomicU32::new(0), space_wanted: AtomicU32::new(0) }),
        }
    }
}

impl Default for DirCtrl {
    fn default() -> Self {
        DirCtrl::new()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn layout_fits_in_the_region() {
        assert_eq!(core::mem::size_of::<DirCtrl>(), 384);
        assert!(dir_ctrl_offset(1) + core::mem::size_of::<DirCtrl>() <= CTRL_BYTES);
        assert_eq!(ring_offset(1) + RING_BYTES, TUBE_BYTES);
        assert_eq!(RING_BYTES % 8, 0);
        assert!(RING_BYTES / record_bytes(64) > 1000);
        // The reader's flag stays where the first layout put it (offset 256 of a DirCtrl).
        assert_eq!(core::mem::offset_of!(DirCtrl, wake), 256);
        assert_eq!(core::mem::offset_of!(WakeFlags, sleeping), 0);
        assert!(delivery_offset(1) + 4 <= dir_ctrl_offset(0));
    }

    #[test]
    fn ring_sizes_by_tid() {
        assert_eq!(region_bytes(ring_bytes_for_tid(0)), TUBE_BYTES);
        assert_eq!(ring_bytes_for_tid(crate::proto::DIST_TID_MIN - 1), RING_BYTES);
        assert_eq!(ring_bytes_for_tid(crate::proto::DIST_TID_MIN), DIST_RING_BYTES);
        assert_eq!(ring_bytes_for_tid(crate::proto::DIST_TID_MAX), DIST_RING_BYTES);
        assert!(valid_ring_bytes(RING_BYTES) && valid_ring_bytes(DIST_RING_BYTES));
        for bad in [0, 8, 4096, RING_BYTES + 8, MAX_RING_BYTES + 4096, usize::MAX & !4095] {
            assert!(!valid_ring_bytes(bad), "{bad}");
        }
        // A distribution fragment (64 KiB and its headers) is 17 records; seven fit whole.
        let fragment = 16 * record_bytes(MAX_PACKET) + record_bytes(64);
        assert!(DIST_RING_BYTES / fragment >= 7);
    }

    #[test]
    fn records_are_padded_to_eight() {
        assert_eq!(record_bytes(1), 16);
        assert_eq!(record_bytes(8), 16);
        assert_eq!(record_bytes(9), 24);
        assert_eq!(record_bytes(MAX_PACKET), 8 + 4096);
    }
}
