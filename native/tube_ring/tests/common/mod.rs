//! Helpers for tests that run two real processes: the test binary re-runs itself with
//! `TUBE_RING_TEST_ROLE` set, and a `#[test] fn child_entry` in each file runs that role.
#![allow(dead_code)]

use std::os::fd::RawFd;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tube_ring::{Offer, RingError, SendError, Tube};

/// Environment variable naming the role a re-run test binary plays.
pub const ROLE_ENV: &str = "TUBE_RING_TEST_ROLE";
/// Generous bound for any single wait in a test; hitting it is a failure, never a pass.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// The role this process was started for, if it is a child.
pub fn child_role() -> Option<String> {
    std::env::var(ROLE_ENV).ok()
}

/// Re-runs this test binary as a child playing `role`, running only test `entry`.
pub fn spawn(entry: &str, role: &str, env: &[(&str, String)]) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args([entry, "--exact", "--nocapture", "--test-threads=1", "-q"])
        .env(ROLE_ENV, role)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn child")
}

/// The three strings a connector needs, as environment variables.
pub fn refs_env(offer: &Offer) -> Vec<(&'static str, String)> {
    vec![
        ("TUBE_CH", offer.event_channel()),
        ("TUBE_TX", offer.tx_ring_ref()),
        ("TUBE_RX", offer.rx_ring_ref()),
    ]
}

/// Connects using the refs in the environment (see `refs_env`).
pub fn connect_from_env() -> Tube {
    let v = |k: &str| std::env::var(k).unwrap();
    tube_ring::connect(&v("TUBE_CH"), &v("TUBE_TX"), &v("TUBE_RX"), PATIENCE).expect("connect")
}

/// Waits until `fd` is readable (or hung up). False on timeout.
pub fn wait_readable(fd: RawFd, timeout: Duration) -> bool {
    let mut p = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    let deadline = Instant::now() + timeout;
    loop {
        let ms = deadline.saturating_duration_since(Instant::now()).as_millis() as i32;
        // SAFETY: `p` is one valid pollfd.
        let r = unsafe { libc::poll(&mut p, 1, ms) };
        if r > 0 {
            return true;
        }
        if r == 0 || Instant::now() >= deadline {
            return false;
        }
    }
}

/// Receives at least one packet, sleeping on the fd between attempts: the receive pass and
/// the sleep protocol the port driver runs (`Tube::receive_pass`, `Tube::prepare_sleep`).
/// `Err(Timeout)` if nothing comes within `timeout`: a lost wake-up shows as this.
pub fn recv_wait(tube: &mut Tube, max: usize, timeout: Duration, mut f: impl FnMut(&[u8])) -> Result<usize, RingError> {
    let deadline = Instant::now() + timeout;
    loop {
        let (_, n) = tube.receive_pass(max, 0, usize::MAX, |t, m| t.recv(m, &mut f), |_| false)?;
        if n > 0 {
            return Ok(n);
        }
        if !tube.prepare_sleep() {
            continue;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || !wait_readable(tube.fd(), left) {
            return Err(RingError::Timeout);
        }
        // After PeerGone, `recv` still hands out what the peer sent before it went, then
        // reports PeerGone itself.
        match tube.on_readable() {
            Ok(()) | Err(RingError::PeerGone) => {}
            Err(e) => return Err(e),
        }
    }
}

/// Deterministic content of packet `seq` of `len` bytes: the first 4 bytes (when they fit)
/// are the sequence number, the rest a pattern derived from it.
pub fn payload(seq: u32, len: usize, out: &mut Vec<u8>) {
    out.clear();
    let mut x = seq.wrapping_mul(0x9e37_79b9) | 1;
    for i in 0..len {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        out.push(if i < 4 { seq.to_le_bytes()[i] } else { x as u8 });
    }
}

/// FNV-1a checksum, to report what a process received in one number.
pub fn checksum(acc: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(acc, |h, b| (h ^ *b as u64).wrapping_mul(0x100_0000_01b3))
}

/// Initial checksum value.
pub const CHECKSUM_INIT: u64 = 0xcbf2_9ce4_8422_2325;

/// Sends `pkt` losslessly: while the ring is full, runs `on_full` (e.g. drain the other
/// direction) and retries, up to `PATIENCE`. Returns how many attempts found the ring full.
pub fn send_lossless(tube: &mut Tube, pkt: &[u8], mut on_full: impl FnMut(&mut Tube)) -> u64 {
    let deadline = Instant::now() + PATIENCE;
    let mut full = 0;
    loop {
        match tube.send(pkt) {
            Ok(()) => return full,
            Err(SendError::Full) => {
                full += 1;
                assert!(Instant::now() < deadline, "peer stopped draining");
                on_full(tube);
                std::thread::yield_now();
            }
            Err(e) => panic!("send failed: {e}"),
        }
    }
}

/// Reads the child's `RESULT <text>` line from its stdout.
pub fn read_result(child: &mut Child) -> String {
    use std::io::BufRead;
    let out = child.stdout.take().unwrap();
    let mut result = String::new();
    for line in std::io::BufReader::new(out).lines() {
        let line = line.unwrap();
        if let Some(r) = line.strip_prefix("RESULT ") {
            result = r.to_string();
        }
    }
    result
}

/// Waits for a child, failing the test if it does not exit within `PATIENCE` or fails.
pub fn expect_success(child: &mut Child) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            assert!(st.success(), "child failed: {st}");
            return;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("child did not finish in time");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
