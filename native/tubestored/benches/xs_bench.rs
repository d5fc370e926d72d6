//! Throughput and watch latency of tubestored over its Unix socket.
//! Run: `cargo bench -p tubestored --bench xs_bench` (an in-process daemon on a private socket).
//! Env: BENCH_SECS (per figure, default 2); BENCH_DB=1 runs the daemon with `--db` persistence
//! and its history; BENCH_SOCKET=PATH measures a daemon already running there instead (to
//! compare two builds with the same client); BENCH_OPEN_TX=1 keeps a transaction open on a
//! connection of its own for the whole run, so every change also keeps the old version a
//! transaction's snapshot needs.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};
use tube_xs::wire::{Decoder, Message, MsgType};

struct Conn {
    s: UnixStream,
    dec: Decoder,
    buf: Vec<u8>,
}

impl Conn {
    fn new(p: &Path) -> Conn {
        Conn { s: UnixStream::connect(p).unwrap(), dec: Decoder::new(), buf: vec![0; 64 * 1024] }
    }
    fn recv(&mut self) -> Message {
        loop {
            if let Some(m) = self.dec.next().unwrap() {
                return m;
            }
            let n = self.s.read(&mut self.buf).unwrap();
            assert!(n > 0, "daemon closed the connection");
            self.dec.push(&self.buf[..n]);
        }
    }
}

fn encode(ty: MsgType, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    Message::new(ty, 1, 0, payload.to_vec()).encode(&mut v);
    v
}

/// Requests/s from `clients` threads, each keeping `window` requests in flight.
fn throughput(p: &Path, ty: MsgType, clients: usize, window: usize, secs: f64) -> f64 {
    let barrier = Arc::new(Barrier::new(clients));
    let threads: Vec<_> = (0..clients)
        .map(|i| {
            let p = p.to_owned();
            let b = barrier.clone();
            std::thread::spawn(move || {
                let mut c = Conn::new(&p);
                let payload = match ty {
                    MsgType::Read => b"/bench/key\0".to_vec(),
                    _ => format!("/bench/w{i}\0value").into_bytes(),
                };
                let req = encode(ty, &payload);
                let batch: Vec<u8> = req.iter().copied().cycle().take(req.len() * window).collect();
                b.wait();
                let t0 = Instant::now();
                let mut done = 0u64;
                while t0.elapsed().as_secs_f64() < secs {
                    c.s.write_all(&batch).unwrap();
                    for _ in 0..window {
                        let m = c.recv();
                        assert_eq!(m.ty, ty as u32, "{m:?}");
                    }
                    done += window as u64;
                }
                done as f64 / t0.elapsed().as_secs_f64()
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).sum()
}

/// Latency from sending a WRITE to the watcher receiving its event.
fn watch_latency(p: &Path, samples: usize) -> (Duration, Duration) {
    let mut watcher = Conn::new(p);
    watcher.s.write_all(&encode(MsgType::Watch, b"/lat\0tok\0")).unwrap();
    let _reply = watcher.recv();
    let _initial = watcher.recv();
    let mut writer = Conn::new(p);
    let req = encode(MsgType::Write, b"/lat/k\0v");
    let mut lat = Vec::with_capacity(samples);
    for _ in 0..samples {
        let t0 = Instant::now();
        writer.s.write_all(&req).unwrap();
        let ev = watcher.recv();
        lat.push(t0.elapsed());
        assert_eq!(ev.ty, MsgType::WatchEvent as u32);
        let _ = writer.recv();
    }
    lat.sort();
    (lat[samples / 2], lat[samples * 99 / 100])
}

fn main() {
    let secs: f64 = std::env::var("BENCH_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(2.0);
    let dir = std::env::temp_dir().join(format!("xs-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let persist = std::env::var_os("BENCH_DB").is_some();
    let db = persist.then(|| dir.join("bench.db"));
    let external = std::env::var_os("BENCH_SOCKET").map(std::path::PathBuf::from);
    let h = match &external {
        Some(_) => None,
        None => {
            let opts = tubestored::Options {
                socket: Some(dir.join("socket")),
                db,
                history_bytes: if persist { 32 << 20 } else { 0 },
                ..Default::default()
            };
            Some(tubestored::Server::bind(opts).unwrap().spawn().unwrap())
        }
    };
    let p = external.unwrap_or_else(|| h.as_ref().unwrap().path().to_owned());
    let mut held_tx = std::env::var_os("BENCH_OPEN_TX").map(|_| {
        let mut t = Conn::new(&p);
        t.s.write_all(&encode(MsgType::TransactionStart, b"\0")).unwrap();
        assert_eq!(t.recv().ty, MsgType::TransactionStart as u32);
        t
    });
    let mut c = Conn::new(&p);
    c.s.write_all(&encode(MsgType::Write, b"/bench/key\0some value of 24 bytes")).unwrap();
    c.recv();

    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "tubestored bench: {cores} cores, {secs} s per figure, {}, open transaction {}",
        match std::env::var_os("BENCH_SOCKET") {
            Some(s) => format!("daemon on {}", s.to_string_lossy()),
            None => format!("in-process daemon, persistence {}", if persist { "on" } else { "off" }),
        },
        if held_tx.is_some() { "held" } else { "none" }
    );
    println!("{:<8} {:>8} {:>12} {:>14}", "op", "clients", "in flight", "requests/s");
    for (ty, name) in [(MsgType::Read, "READ"), (MsgType::Write, "WRITE")] {
        for (clients, window) in [(1, 1), (1, 64), (16, 1), (16, 16)] {
            let r = throughput(&p, ty, clients, window, secs);
            println!("{name:<8} {clients:>8} {window:>12} {r:>14.0}");
        }
    }
    let (p50, p99) = watch_latency(&p, 20_000);
    println!("watch event latency (WRITE sent -> event received), 20000 samples: p50 {p50:?}  p99 {p99:?}");
    held_tx.take();
    drop(h);
    let _ = std::fs::remove_dir_all(dir);
}
