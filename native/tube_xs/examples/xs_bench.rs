//! Round-trip rate of the client: `THREADS` threads each doing `N` reads of one node over one connection
//! (so requests are pipelined), against the daemon at `--socket PATH` (or the default socket).
//!
//! `cargo run --release -p tube_xs --example xs_bench -- [--socket PATH] [THREADS] [N]`

use std::path::PathBuf;
use std::time::Instant;

use tube_xs::client::Client;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let socket = if args.first().map(String::as_str) == Some("--socket") && args.len() > 1 {
        let p = PathBuf::from(args.remove(1));
        args.remove(0);
        p
    } else {
        tube_xs::client::default_socket_path()
    };
    let threads: usize = args.first().map_or(Ok(1), |s| s.parse())?;
    let n: usize = args.get(1).map_or(Ok(20_000), |s| s.parse())?;
    let xs = Client::connect(&socket)?;
    xs.write(0, "/bench/node", b"0123456789")?;
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                for _ in 0..n {
                    xs.read(0, "/bench/node").expect("read");
                }
            });
        }
    });
    let secs = start.elapsed().as_secs_f64();
    let total = threads * n;
    println!(
        "{threads} thread(s) x {n} reads: {:.0} reads/s, {:.1} us per read per thread",
        total as f64 / secs,
        secs * 1e6 / n as f64
    );
    xs.rm(0, "/bench")?;
    Ok(())
}
