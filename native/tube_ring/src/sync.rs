//! The atomics the ring protocol uses: `std` normally, `loom` under `--cfg loom` so the
//! index and wake-up protocol can be model-checked with the very code that ships.

#[cfg(loom)]
pub use loom::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
#[cfg(not(loom))]
pub use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
