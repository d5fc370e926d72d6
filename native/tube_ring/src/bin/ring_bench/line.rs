//! The machine's own price for moving a cache line between CPU 0 and CPU 1,
//! measured with no ring code at all: two threads, one pinned to each CPU,
//! take turns incrementing one counter. A ring's one-way rate is bounded by
//! how fast its indices and slots cross between the cores, so this figure,
//! printed next to the ring's, tells a slow ring from a slow placement: on
//! a virtual machine the two virtual CPUs may share a physical core (a line
//! crosses in its L1/L2) or sit on two cores (it crosses the mesh), and the
//! host may change that between runs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// One counter alone on its 128-byte block (two lines, so the adjacent-line
/// prefetcher does not drag a neighbour along).
#[repr(align(128))]
struct Line(AtomicU64);

/// Round trips of the line between the two CPUs; returns nanoseconds per
/// round trip. Each side waits for the value it expects, then writes the
/// next one, so every round trip moves the line there and back once.
pub fn round_trip_ns(round_trips: u64) -> f64 {
    let line = Arc::new(Line(AtomicU64::new(0)));
    let other = Arc::clone(&line);
    let responder = std::thread::spawn(move || {
        super::pin_to(1);
        for i in 0..round_trips {
            wait_for(&other.0, 2 * i + 1);
            other.0.store(2 * i + 2, Ordering::Release);
        }
    });
    super::pin_to(0);
    // A short warm-up lets the responder reach its CPU before the clock runs.
    let warm = round_trips.min(1_000);
    for i in 0..warm {
        line.0.store(2 * i + 1, Ordering::Release);
        wait_for(&line.0, 2 * i + 2);
    }
    let start = Instant::now();
    for i in warm..round_trips {
        line.0.store(2 * i + 1, Ordering::Release);
        wait_for(&line.0, 2 * i + 2);
    }
    let ns = start.elapsed().as_nanos() as f64;
    responder.join().expect("line responder");
    super::unpin();
    ns / (round_trips - warm).max(1) as f64
}

fn wait_for(v: &AtomicU64, want: u64) {
    while v.load(Ordering::Acquire) != want {
        std::hint::spin_loop();
    }
}
