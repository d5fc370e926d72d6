//! A peer that exits or is killed (kill -9) is seen at once through the fd, and nothing of a
//! tube remains anywhere once both processes are gone.
#![cfg(not(loom))]

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Lines};
use std::process::{Child, ChildStdout};
use std::time::Duration;

use common::*;
use tube_ring::{Offer, RingError, SendError, Tube};

/// Packets a child sends before it reports ready (and gets killed).
const LAST_WORDS: usize = 3;

/// Entry point of child processes; a no-op in the normal test run.
#[test]
fn child_entry() {
    let Some(role) = child_role() else { return };
    let mut tube = match role.as_str() {
        "offer" => {
            let offer = Offer::new().unwrap();
            println!("REFS {} {} {}", offer.event_channel(), offer.tx_ring_ref(), offer.rx_ring_ref());
            offer.accept(PATIENCE).unwrap()
        }
        "connect" => connect_from_env(),
        other => panic!("unknown role {other}"),
    };
    for i in 0..LAST_WORDS {
        tube.send(&[i as u8; 100]).unwrap();
    }
    println!("READY");
    // Stay alive until killed; the bound only keeps a broken test from leaving a process.
    std::thread::sleep(PATIENCE);
}

fn lines(child: &mut Child) -> Lines<BufReader<ChildStdout>> {
    BufReader::new(child.stdout.take().unwrap()).lines()
}

/// The next line with `prefix`, without it.
fn expect_line(lines: &mut Lines<BufReader<ChildStdout>>, prefix: &str) -> String {
    for line in lines.by_ref() {
        if let Some(rest) = line.unwrap().strip_prefix(prefix) {
            return rest.trim().to_string();
        }
    }
    panic!("child ended before printing {prefix}");
}

fn kill9(child: &mut Child) {
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
}

/// The other end has just been killed: the fd must report it, undelivered packets still
/// arrive, and every call then returns an error.
fn assert_sees_death(tube: &mut Tube) {
    assert!(wait_readable(tube.fd(), PATIENCE), "death not signalled on the fd");
    // Packets are still waiting, so the caller is told to drain them first.
    assert!(tube.on_readable().is_ok());
    assert!(!tube.is_open());
    let mut got = 0;
    assert_eq!(tube.recv(usize::MAX, |p| got += p.len()).unwrap(), LAST_WORDS);
    assert_eq!(got, LAST_WORDS * 100);
    assert!(matches!(tube.recv(1, |_| {}), Err(RingError::PeerGone)));
    assert!(matches!(tube.on_readable(), Err(RingError::PeerGone)));
    assert!(wait_readable(tube.fd(), Duration::ZERO), "the fd stays readable");
    assert_eq!(tube.send(b"anyone?"), Err(SendError::Closed));
    assert!(!tube.prepare_sleep());
}

#[test]
fn killed_connector_is_seen_by_offerer() {
    if child_role().is_some() {
        return;
    }
    let offer = Offer::new().unwrap();
    let mut child = spawn("child_entry", "connect", &refs_env(&offer));
    let mut tube = offer.accept(PATIENCE).unwrap();
    assert_eq!(tube.peer_pid(), Some(child.id() as i32));
    expect_line(&mut lines(&mut child), "READY");
    kill9(&mut child);
    assert_sees_death(&mut tube);
}

#[test]
fn killed_offerer_is_seen_by_connector() {
    if child_role().is_some() {
        return;
    }
    let mut child = spawn("child_entry", "offer", &[]);
    let mut out = lines(&mut child);
    let refs = expect_line(&mut out, "REFS");
    let r: Vec<&str> = refs.split(' ').collect();
    let mut tube = tube_ring::connect(r[0], r[1], r[2], PATIENCE).unwrap();
    expect_line(&mut out, "READY");
    kill9(&mut child);
    assert_sees_death(&mut tube);
}

/// Abstract Unix socket names on this box (`@name`): all of them (accepted connections
/// show their listener's name), or only those of listening sockets.
fn abstract_sockets_where(listening_only: bool) -> BTreeSet<String> {
    let table = std::fs::read_to_string("/proc/net/unix").unwrap();
    table
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        // Columns: Num RefCount Protocol Flags Type St Inode Path; flag 0x10000 = listening.
        .filter(|c| c.len() > 7 && c[7].starts_with('@'))
        .filter(|c| !listening_only || c[3] == "00010000")
        .map(|c| c[7].to_string())
        .collect()
}

fn abstract_sockets() -> BTreeSet<String> {
    abstract_sockets_where(false)
}

fn listening_sockets() -> BTreeSet<String> {
    abstract_sockets_where(true)
}

fn dir_entries(dir: &str) -> BTreeSet<String> {
    std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect()
}

#[test]
fn nothing_remains_after_both_are_killed() {
    if child_role().is_some() {
        return;
    }
    let shm_before = dir_entries("/dev/shm");
    let tmp = std::env::temp_dir().join(format!("tube-ring-leftovers-{}", std::process::id()));
    std::fs::create_dir(&tmp).unwrap();
    let tmp_env = ("TMPDIR", tmp.to_string_lossy().into_owned());
    let mut offerer = spawn("child_entry", "offer", std::slice::from_ref(&tmp_env));
    let mut out = lines(&mut offerer);
    let refs = expect_line(&mut out, "REFS");
    let r: Vec<String> = refs.split(' ').map(String::from).collect();
    assert!(listening_sockets().contains(&r[0]), "the listening name is visible while offered");
    let env = vec![tmp_env, ("TUBE_CH", r[0].clone()), ("TUBE_TX", r[1].clone()), ("TUBE_RX", r[2].clone())];
    let mut connector = spawn("child_entry", "connect", &env);
    expect_line(&mut out, "READY");
    expect_line(&mut lines(&mut connector), "READY");
    assert!(!listening_sockets().contains(&r[0]), "nobody listens once the peer is admitted");
    assert!(abstract_sockets().contains(&r[0]), "the connection shows the name while alive");
    kill9(&mut offerer);
    kill9(&mut connector);
    // Socket teardown after kill -9 completes asynchronously; allow it a bounded moment.
    let deadline = std::time::Instant::now() + PATIENCE;
    while abstract_sockets().contains(&r[0]) {
        assert!(std::time::Instant::now() < deadline, "socket name {} outlived both processes", r[0]);
        std::thread::sleep(Duration::from_millis(10));
    }
    let new_shm: Vec<_> = dir_entries("/dev/shm").difference(&shm_before).cloned().collect();
    assert!(new_shm.iter().all(|n| !n.contains("tube")), "left in /dev/shm: {new_shm:?}");
    assert!(dir_entries(tmp.to_str().unwrap()).is_empty(), "left in TMPDIR");
    std::fs::remove_dir(&tmp).unwrap();
}
