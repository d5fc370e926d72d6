//! `ring-bench`: the tube ring against a Unix datagram socketpair, between two processes.
//! See `ring_bench/bench.rs`. (Under `--cfg loom`, used only for model checking, it is empty.)

#[cfg(not(loom))]
#[path = "ring_bench/bench.rs"]
mod bench;

fn main() {
    #[cfg(not(loom))]
    bench::main();
}
