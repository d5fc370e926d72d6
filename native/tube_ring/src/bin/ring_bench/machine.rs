//! References for the machine itself, measured with no ring code at all, so
//! that a figure of ours can be told apart from the state of the machine it
//! ran on:
//!
//! * the price of moving a cache line between CPU 0 and CPU 1: two threads,
//!   one pinned to each CPU, take turns incrementing one counter. A ring's
//!   one-way rate is bounded by how fast its indices and slots cross between
//!   the cores. On a virtual machine the two virtual CPUs may share a
//!   physical core (a line crosses in its L1/L2) or sit on two cores (it
//!   crosses the mesh), and the host may change that at any time;
//! * the speed of each CPU: the same fixed single-threaded work pinned to
//!   CPU 0, then CPU 1. A virtual CPU whose physical core is shared with
//!   another guest, or clocked down, runs everything slower, ours included;
//! * the speed of its caches: 64-byte copies walking through a 256 KiB
//!   buffer (the size of a tube's ring) pinned to CPU 0, then CPU 1. Another
//!   guest on the same physical core or sharing its caches slows this one
//!   far more than the register-only work above.

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

/// Iterations of the fixed work of `speed_mops`.
const SPEED_ITERATIONS: u64 = 20_000_000;

/// Millions of iterations per second of a fixed dependent chain of integer
/// work (a xorshift generator, no memory traffic), pinned to `cpu`.
pub fn speed_mops(cpu: usize) -> f64 {
    super::pin_to(cpu);
    let start = Instant::now();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..SPEED_ITERATIONS {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
    }
    std::hint::black_box(x);
    let s = start.elapsed().as_secs_f64();
    super::unpin();
    SPEED_ITERATIONS as f64 / s / 1e6
}

/// Copies of the cache reference: enough to take a few tenths of a second.
const COPIES: usize = 40_000_000;
/// The buffer the cache reference walks through.
const COPY_BUFFER: usize = 256 * 1024;

/// Millions of 64-byte copies per second from one half of a 256 KiB buffer
/// to the other, walking through it, pinned to `cpu`.
pub fn copy_mops(cpu: usize) -> f64 {
    super::pin_to(cpu);
    let mut buf = vec![1u8; COPY_BUFFER];
    let half = COPY_BUFFER / 2;
    let start = Instant::now();
    let mut off = 0;
    for _ in 0..COPIES {
        let (src, dst) = buf.split_at_mut(half);
        dst[off..off + 64].copy_from_slice(&src[off..off + 64]);
        std::hint::black_box(&dst[off]);
        off = (off + 72) % (half - 64);
    }
    let s = start.elapsed().as_secs_f64();
    super::unpin();
    COPIES as f64 / s / 1e6
}

/// One line of JSON with the references, for other benches to record
/// beside their own figures (`ring-bench --machine`).
pub fn print_json() {
    let (cpu0, cpu1) = (speed_mops(0), speed_mops(1));
    let (copy0, copy1) = (copy_mops(0), copy_mops(1));
    let line = round_trip_ns(super::LINE_ROUND_TRIPS);
    println!(
        "{{\"cpu0_mops\": {cpu0:.1}, \"cpu1_mops\": {cpu1:.1}, \"copy0_mops\": {copy0:.1}, \"copy1_mops\": {copy1:.1}, \"line_rtt_ns\": {line:.1}}}"
    );
}
