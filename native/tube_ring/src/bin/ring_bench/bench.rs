//! Tube ring benchmark: two OS processes (this binary re-runs itself as the peer).
//!
//! Jobs, each for the tube ring and, in the same run, a Unix datagram socketpair:
//! * one-way throughput for 64, 1500 and 4096-byte packets: the child sends as fast as it
//!   can (batches of 32, never blocking, full = drop, `sched_yield` after a wholly dropped
//!   batch), the parent counts what it receives in a fixed window, spinning when the ring is
//!   empty and then sleeping on the fd like a real reader;
//! * 64-byte ping-pong round trip, p50/p99, with the reader spinning or sleeping on the fd;
//! * at the start of each run, the machine's own cache-line round trip between CPU 0 and 1
//!   (`machine.rs`), which no ring code touches: the reference that tells which state the
//!   machine was in during that run.
//!
//! Every figure is the median of `--runs` runs (default 5). Prints a table and writes JSON to
//! `bench/results/ring-<date>.json` (or `--out PATH`).
//!
//! `ring-bench --machine` prints only the machine's references (CPU speeds, line round trip)
//! as one line of JSON, for other benches to record beside their figures.
//!
//! `cargo run --release -p tube_ring --bin ring-bench [-- --runs N --window-ms MS --rtt-samples N
//!  --jobs line,oneway,rtt --out PATH]`

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tube_ring::{Offer, RingError, Tube};

#[path = "machine.rs"]
mod machine;

/// Round trips of the reference cache-line ping-pong (`machine.rs`).
const LINE_ROUND_TRIPS: u64 = 2_000_000;

const ROLE_ENV: &str = "RING_BENCH_ROLE";
/// Whether the current job runs pinned (parent on CPU 0, peer on CPU 1).
static PINNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
const SIZES: [usize; 3] = [64, 1500, 4096];
const BATCH: usize = 32;
const WARMUP: Duration = Duration::from_millis(200);
const RTT_WARMUP: usize = 2_000;
const WAIT_LIMIT: Duration = Duration::from_secs(10);
/// Polls of an empty ring before a throughput receiver sleeps on the fd.
const SPINS: u32 = 20_000;

#[derive(Clone, Copy)]
struct Opts {
    runs: usize,
    window: Duration,
    rtt_samples: usize,
    /// Run the one-way throughput jobs (`--jobs oneway`).
    one_way: bool,
    /// Run the round-trip jobs (`--jobs rtt`).
    rtt: bool,
    /// Run the reference cache-line ping-pong between CPU 0 and 1 (`--jobs line`), before
    /// each run's ring jobs, so each run says which state the machine was in.
    line: bool,
    /// Leave both processes unpinned (`--no-pin`). By default jobs where both sides spin run
    /// with the parent on CPU 0 and the peer on CPU 1, so a busy box cannot stack both on one
    /// core; jobs where the reader sleeps always run unpinned, so a woken reader can take
    /// whichever core is free.
    no_pin: bool,
}

/// Restricts this process to `cpu` (ignored if the box lacks it).
fn pin_to(cpu: usize) {
    set_cpus(&[cpu]);
}

/// Lets this process run on any CPU again.
fn unpin() {
    let n = std::thread::available_parallelism().map_or(1, |n| n.get());
    set_cpus(&(0..n).collect::<Vec<_>>());
}

fn set_cpus(cpus: &[usize]) {
    // SAFETY: cpu_set_t is a plain bit set; all-zero is valid.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &cpu in cpus {
        // SAFETY: `cpu` is below CPU_SETSIZE for any box this runs on; CPU_SET sets a bit.
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    // SAFETY: `set` is a valid cpu_set_t of the size passed.
    unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
}

pub fn main() {
    if let Ok(role) = std::env::var(ROLE_ENV) {
        if let Ok(cpu) = std::env::var("PIN_CPU") {
            pin_to(cpu.parse().unwrap_or(1));
        }
        if let Err(e) = child(&role) {
            eprintln!("ring-bench child {role}: {e}");
            std::process::exit(1);
        }
        return;
    }
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--machine") {
        machine::print_json();
        return;
    }
    if let Some(i) = args.iter().position(|a| a == "--self-loop") {
        let n = args.get(i + 1).and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
        self_loop(n);
        return;
    }
    let arg = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let jobs = arg("--jobs").unwrap_or_else(|| "line,oneway,rtt".to_string());
    let opts = Opts {
        runs: arg("--runs").map_or(5, |v| v.parse().expect("--runs N")),
        window: Duration::from_millis(arg("--window-ms").map_or(1000, |v| v.parse().expect("--window-ms MS"))),
        rtt_samples: arg("--rtt-samples").map_or(50_000, |v| v.parse().expect("--rtt-samples N")),
        one_way: jobs.contains("oneway"),
        rtt: jobs.contains("rtt"),
        line: jobs.contains("line"),
        no_pin: args.iter().any(|a| a == "--no-pin"),
    };
    let out = arg("--out").unwrap_or_else(|| {
        format!("{}/../../bench/results/ring-{}.json", env!("CARGO_MANIFEST_DIR"), today())
    });
    run_all(opts, &out);
}

// ---------------------------------------------------------------- parent: orchestration

/// One measured figure: a name and its value in each run.
struct Figure {
    name: String,
    unit: &'static str,
    values: Vec<f64>,
}

impl Figure {
    fn median(&self) -> f64 {
        let mut v = self.values.clone();
        v.sort_by(|a, b| a.total_cmp(b));
        if v.is_empty() {
            return f64::NAN;
        }
        v[v.len() / 2]
    }
}

fn run_all(opts: Opts, out: &str) {
    let load_before = loadavg();
    let mut figs: Vec<Figure> = Vec::new();
    let mut record = |name: String, unit: &'static str, v: f64| match figs.iter_mut().find(|f| f.name == name) {
        Some(f) => f.values.push(v),
        None => figs.push(Figure { name, unit, values: vec![v] }),
    };
    for run in 0..opts.runs {
        eprintln!("run {}/{} ...", run + 1, opts.runs);
        if opts.line {
            record("line round trip CPU0-CPU1".to_string(), "ns", machine::round_trip_ns(LINE_ROUND_TRIPS));
        }
        for size in SIZES.into_iter().filter(|_| opts.one_way) {
            for transport in ["ring", "unix"] {
                set_pinning(!opts.no_pin);
                let r = one_way(transport, size, opts.window);
                record(format!("{transport} one-way {size}B pps"), "pkt/s", r.pps);
                record(format!("{transport} one-way {size}B MB/s"), "MB/s", r.pps * size as f64 / 1e6);
                record(format!("{transport} one-way {size}B drop%"), "%", r.drop_pct);
            }
        }
        for transport in ["ring", "unix"].into_iter().filter(|_| opts.rtt) {
            for mode in ["spin", "sleep"] {
                set_pinning(!opts.no_pin && mode == "spin");
                let (p50, p99) = ping_pong(transport, mode, opts.rtt_samples);
                record(format!("{transport} rtt 64B {mode} p50"), "us", p50);
                record(format!("{transport} rtt 64B {mode} p99"), "us", p99);
            }
        }
    }
    let load_after = loadavg();
    print_table(&figs, opts, &load_before, &load_after);
    write_json(out, &figs, opts, &load_before, &load_after);
}

fn print_table(figs: &[Figure], opts: Opts, before: &str, after: &str) {
    println!("tube_ring bench: median of {} runs, window {} ms, spinning jobs pinned {}; loadavg before [{before}] after [{after}]",
        opts.runs, opts.window.as_millis(), !opts.no_pin);
    println!("{:<34} {:>14} {:>6}   runs", "figure", "median", "unit");
    for f in figs {
        let runs: Vec<String> = f.values.iter().map(|v| format!("{v:.3}")).collect();
        println!("{:<34} {:>14.3} {:>6}   {}", f.name, f.median(), f.unit, runs.join(" "));
    }
    let get = |n: &str| figs.iter().find(|f| f.name == n).map_or(f64::NAN, Figure::median);
    let (ring, unix) = (get("ring one-way 64B pps"), get("unix one-way 64B pps"));
    println!("64B one-way: ring {:.2} Mpps, unix dgram {:.3} Mpps, ratio {:.1}x", ring / 1e6, unix / 1e6, ring / unix);
}

fn write_json(path: &str, figs: &[Figure], opts: Opts, before: &str, after: &str) {
    let mut s = String::from("{\n");
    s += &format!("  \"bench\": \"tube_ring ring-bench\",\n  \"date\": \"{}\",\n", today());
    s += &format!("  \"runs\": {},\n  \"window_ms\": {},\n  \"rtt_samples\": {},\n", opts.runs, opts.window.as_millis(), opts.rtt_samples);
    s += &format!("  \"cpus\": {},\n  \"pinned_spinning_jobs\": {},\n", std::thread::available_parallelism().map_or(0, |n| n.get()), !opts.no_pin);
    s += &format!("  \"loadavg_before\": \"{before}\",\n  \"loadavg_after\": \"{after}\",\n  \"figures\": [\n");
    let rows: Vec<String> = figs
        .iter()
        .map(|f| {
            let runs: Vec<String> = f.values.iter().map(|v| format!("{v:.4}")).collect();
            format!("    {{\"name\": \"{}\", \"unit\": \"{}\", \"median\": {:.4}, \"runs\": [{}]}}", f.name, f.unit, f.median(), runs.join(", "))
        })
        .collect();
    s += &rows.join(",\n");
    s += "\n  ]\n}\n";
    match std::fs::write(path, s) {
        Ok(()) => println!("wrote {path}"),
        Err(e) => eprintln!("cannot write {path}: {e}"),
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg").map_or(String::new(), |s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
}

/// Today's UTC date as YYYY-MM-DD (civil-from-days, Howard Hinnant's algorithm).
fn today() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let z = (secs / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Starts this binary as the peer playing `role`, with `env`, keeping `keep_fd` open in it.
fn spawn_peer(role: &str, env: &[(&str, String)], keep_fd: Option<RawFd>) -> std::process::Child {
    let mut cmd = Command::new(std::env::current_exe().expect("own path"));
    cmd.env(ROLE_ENV, role).envs(env.iter().map(|(k, v)| (*k, v.as_str()))).stdout(Stdio::piped());
    if PINNED.load(std::sync::atomic::Ordering::Relaxed) {
        cmd.env("PIN_CPU", "1");
    }
    if let Some(fd) = keep_fd {
        // SAFETY: clearing FD_CLOEXEC on an fd we own, in the parent before spawning.
        unsafe { libc::fcntl(fd, libc::F_SETFD, 0) };
    }
    let child = cmd.spawn().expect("spawn peer");
    if let Some(fd) = keep_fd {
        // SAFETY: as above; the child has inherited it, the parent's copy goes back to CLOEXEC.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    child
}

fn finish(child: std::process::Child) -> String {
    let out = child.wait_with_output().expect("wait peer");
    assert!(out.status.success(), "peer failed: {}", out.status);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn refs(offer: &Offer) -> Vec<(&'static str, String)> {
    vec![("CH", offer.event_channel()), ("TX", offer.tx_ring_ref()), ("RX", offer.rx_ring_ref())]
}

/// A datagram socketpair; the second end goes to the child.
fn dgram_pair() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two fds socketpair writes.
    let r = unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr()) };
    assert_eq!(r, 0, "socketpair: {}", std::io::Error::last_os_error());
    // SAFETY: both fds were just created and are owned by nobody else.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

struct OneWay {
    pps: f64,
    drop_pct: f64,
}

/// Child sends `size`-byte packets flat out; we count what arrives during `window`.
/// Pins this process to CPU 0 (and the next peer to CPU 1) if `pin`, else unpins.
fn set_pinning(pin: bool) {
    PINNED.store(pin, std::sync::atomic::Ordering::Relaxed);
    if pin {
        pin_to(0);
    } else {
        unpin();
    }
}

fn one_way(transport: &str, size: usize, window: Duration) -> OneWay {
    let send_for = WARMUP + window + Duration::from_millis(100);
    let env_common = vec![("SIZE", size.to_string()), ("SEND_MS", send_for.as_millis().to_string())];
    let (received, child) = if transport == "ring" {
        let offer = Offer::new().expect("offer");
        let mut env = refs(&offer);
        env.extend(env_common);
        let child = spawn_peer("ring_send", &env, None);
        let mut tube = offer.accept(WAIT_LIMIT).expect("accept");
        (count_ring(&mut tube, window), child)
    } else {
        let (mine, theirs) = dgram_pair();
        let mut env = vec![("FD", theirs.as_raw_fd().to_string())];
        env.extend(env_common);
        let child = spawn_peer("unix_send", &env, Some(theirs.as_raw_fd()));
        drop(theirs);
        (count_unix(&mine, size, window), child)
    };
    let report = finish(child);
    let mut it = report.split_whitespace().map(|v| v.parse::<f64>().unwrap_or(f64::NAN));
    let (attempted, sent) = (it.next().unwrap_or(f64::NAN), it.next().unwrap_or(f64::NAN));
    OneWay { pps: received as f64 / window.as_secs_f64(), drop_pct: 100.0 * (attempted - sent) / attempted }
}

/// Drains like a real reader: spin briefly when empty, then sleep on the fd until woken (so
/// a receiver that shares a core with the sender lets it run).
fn count_ring(tube: &mut Tube, window: Duration) -> u64 {
    let start = Instant::now();
    let (mut n, mut counting_from) = (0u64, None);
    loop {
        let k = match tube.recv(1024, |p| {
            std::hint::black_box(p);
        }) {
            Ok(k) => k,
            Err(RingError::PeerGone) => 0,
            Err(e) => panic!("recv: {e}"),
        };
        let now = Instant::now();
        match counting_from {
            None if now - start >= WARMUP => counting_from = Some(now),
            None => {}
            Some(t) if now - t >= window => return n,
            Some(_) => n += k as u64,
        }
        if k == 0 && !tube.spin_for_data(SPINS) && tube.prepare_sleep() {
            let mut p = libc::pollfd { fd: tube.fd(), events: libc::POLLIN, revents: 0 };
            // SAFETY: one valid pollfd; the short timeout keeps the window check running.
            unsafe { libc::poll(&mut p, 1, 10) };
            let _ = tube.on_readable();
        }
        assert!(now - start < WAIT_LIMIT, "window never ended");
    }
}

fn count_unix(sock: &OwnedFd, size: usize, window: Duration) -> u64 {
    let mut buf = vec![0u8; size.max(64)];
    let start = Instant::now();
    let (mut n, mut counting_from) = (0u64, None);
    set_rcvtimeo(sock, Duration::from_millis(100));
    loop {
        // SAFETY: `buf` is valid for writes of its length.
        let r = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        let now = Instant::now();
        match counting_from {
            None if now - start >= WARMUP => counting_from = Some(now),
            None => {}
            Some(t) if now - t >= window => return n,
            Some(_) => n += u64::from(r > 0),
        }
        assert!(now - start < WAIT_LIMIT, "window never ended");
    }
}

fn set_rcvtimeo(sock: &OwnedFd, t: Duration) {
    let tv = libc::timeval { tv_sec: t.as_secs() as _, tv_usec: t.subsec_micros() as _ };
    // SAFETY: `tv` is a valid timeval of the size passed.
    unsafe {
        libc::setsockopt(sock.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVTIMEO, (&tv as *const libc::timeval).cast(), std::mem::size_of::<libc::timeval>() as u32)
    };
}

/// Round trips of 64-byte packets: returns (p50, p99) in microseconds.
fn ping_pong(transport: &str, mode: &str, samples: usize) -> (f64, f64) {
    let total = samples + RTT_WARMUP;
    let env_common = vec![("MODE", mode.to_string()), ("COUNT", total.to_string())];
    let mut rtts = Vec::with_capacity(total);
    let pkt = [0x5au8; 64];
    let child = if transport == "ring" {
        let offer = Offer::new().expect("offer");
        let mut env = refs(&offer);
        env.extend(env_common);
        let child = spawn_peer("ring_pong", &env, None);
        let mut tube = offer.accept(WAIT_LIMIT).expect("accept");
        for _ in 0..total {
            let t0 = Instant::now();
            tube.send(&pkt).expect("send ping");
            ring_wait_one(&mut tube, mode, &mut [0; 64]).expect("pong");
            rtts.push(t0.elapsed());
        }
        child
    } else {
        let (mine, theirs) = dgram_pair();
        let mut env = vec![("FD", theirs.as_raw_fd().to_string())];
        env.extend(env_common);
        let child = spawn_peer("unix_pong", &env, Some(theirs.as_raw_fd()));
        drop(theirs);
        let mut buf = [0u8; 64];
        for _ in 0..total {
            let t0 = Instant::now();
            unix_send(&mine, &pkt, 0);
            unix_wait_one(&mine, mode, &mut buf);
            rtts.push(t0.elapsed());
        }
        child
    };
    finish(child);
    let mut v: Vec<f64> = rtts[RTT_WARMUP..].iter().map(|d| d.as_secs_f64() * 1e6).collect();
    v.sort_by(|a, b| a.total_cmp(b));
    (v[v.len() / 2], v[v.len() * 99 / 100])
}

// ---------------------------------------------------------------- both sides: primitives

/// Receives exactly one packet into `buf`, spinning or sleeping on the fd.
fn ring_wait_one(tube: &mut Tube, mode: &str, buf: &mut [u8]) -> Result<usize, RingError> {
    let deadline = Instant::now() + WAIT_LIMIT;
    let mut polls = 0u32;
    loop {
        polls = polls.wrapping_add(1);
        let mut len = 0;
        if tube.recv(1, |p| {
            len = p.len().min(buf.len());
            buf[..len].copy_from_slice(&p[..len]);
        })? == 1
        {
            return Ok(len);
        }
 // Reading the clock costs as much as polling the ring; look at it now and then.
        if polls & 1023 == 0 && Instant::now() > deadline {
            return Err(RingError::Timeout);
        }
        if mode == "spin" || !tube.prepare_sleep() {
            std::hint::spin_loop();
            continue;
        }
        let mut p = libc::pollfd { fd: tube.fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut p, 1, WAIT_LIMIT.as_millis() as i32) };
        tube.on_readable()?;
    }
}

fn unix_send(sock: &OwnedFd, pkt: &[u8], flags: i32) -> bool {
    // SAFETY: `pkt` is valid for reads of its length.
    unsafe { libc::send(sock.as_raw_fd(), pkt.as_ptr().cast(), pkt.len(), flags) == pkt.len() as isize }
}

fn unix_wait_one(sock: &OwnedFd, mode: &str, buf: &mut [u8]) -> usize {
    let flags = if mode == "spin" { libc::MSG_DONTWAIT } else { 0 };
    let deadline = Instant::now() + WAIT_LIMIT;
    loop {
        // SAFETY: `buf` is valid for writes of its length.
        let r = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), flags) };
        if r > 0 {
            return r as usize;
        }
        assert!(Instant::now() < deadline, "no reply");
        std::hint::spin_loop();
    }
}

/// One thread sends and drains `n` 64-byte packets through a tube in batches of 32: the
/// per-packet instruction cost without cross-core effects (run it under callgrind).
fn self_loop(n: u64) {
    let offer = Offer::new().expect("offer");
    let (ch, tx, rx) = (offer.event_channel(), offer.tx_ring_ref(), offer.rx_ring_ref());
    let peer = std::thread::spawn(move || tube_ring::connect(&ch, &tx, &rx, WAIT_LIMIT).expect("connect"));
    let mut a = offer.accept(WAIT_LIMIT).expect("accept");
    let mut b = peer.join().expect("peer");
    let pkt = [0x5au8; 64];
    let batch: Vec<&[u8]> = vec![&pkt[..]; BATCH];
    let start = Instant::now();
    let mut got = 0u64;
    while got < n {
        a.send_many(batch.iter().copied()).expect("send");
        got += b.recv(BATCH, |p| {
            std::hint::black_box(p);
        }).expect("recv") as u64;
    }
    let dt = start.elapsed().as_secs_f64();
    println!("self-loop: {got} packets in {dt:.3} s = {:.1} Mpps (one thread doing both sides)", got as f64 / dt / 1e6);
}

// ---------------------------------------------------------------- child roles

fn env_num(k: &str) -> u64 {
    std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("env {k}"))
}

fn child_tube() -> Result<Tube, RingError> {
    let v = |k: &str| std::env::var(k).unwrap_or_default();
    tube_ring::connect(&v("CH"), &v("TX"), &v("RX"), WAIT_LIMIT)
}

fn child_fd() -> OwnedFd {
    // SAFETY: the parent left this fd open for us; we are its only owner in this process.
    unsafe { OwnedFd::from_raw_fd(env_num("FD") as RawFd) }
}

fn child(role: &str) -> Result<(), RingError> {
    match role {
        "ring_send" => {
            let mut tube = child_tube()?;
            let pkt = vec![0xa5u8; env_num("SIZE") as usize];
            let batch: Vec<&[u8]> = vec![&pkt[..]; BATCH];
            let until = Instant::now() + Duration::from_millis(env_num("SEND_MS"));
            let mut attempted = 0u64;
            while Instant::now() < until {
                for _ in 0..64 {
                    match tube.send_many(batch.iter().copied()) {
                        // A wholly dropped batch means the receiver is behind; if it shares
                        // our core (a busy 2-core box), spinning would only keep it off.
                        Ok(0) => {
                            attempted += BATCH as u64;
                            std::thread::yield_now();
                        }
                        Ok(_) => attempted += BATCH as u64,
                        Err(_) => return Err(RingError::PeerGone),
                    }
                }
            }
            println!("{attempted} {}", tube.stats().sent_pkts);
        }
        "unix_send" => {
            let sock = child_fd();
            let pkt = vec![0xa5u8; env_num("SIZE") as usize];
            let until = Instant::now() + Duration::from_millis(env_num("SEND_MS"));
            let (mut attempted, mut sent) = (0u64, 0u64);
            while Instant::now() < until {
                for _ in 0..64 {
                    // Same policy as the ring sender: batches of 32, yield after a wholly
                    // refused batch.
                    let before = sent;
                    for _ in 0..BATCH {
                        sent += u64::from(unix_send(&sock, &pkt, libc::MSG_DONTWAIT));
                    }
                    attempted += BATCH as u64;
                    if sent == before {
                        std::thread::yield_now();
                    }
                }
            }
            println!("{attempted} {sent}");
        }
        "ring_pong" => {
            let mut tube = child_tube()?;
            let mode = std::env::var("MODE").unwrap_or_default();
            let mut buf = [0u8; 64];
            for _ in 0..env_num("COUNT") {
                let n = ring_wait_one(&mut tube, &mode, &mut buf)?;
                tube.send(&buf[..n]).map_err(|_| RingError::PeerGone)?;
            }
        }
        "unix_pong" => {
            let sock = child_fd();
            let mode = std::env::var("MODE").unwrap_or_default();
            let mut buf = [0u8; 64];
            for _ in 0..env_num("COUNT") {
                let n = unix_wait_one(&sock, &mode, &mut buf);
                unix_send(&sock, &buf[..n], 0);
            }
        }
        other => panic!("unknown role {other}"),
    }
    Ok(())
}
