//! Two real processes exchanging packets through a tube: content, ordering, every size
//! 1..=4096 across wrap-around, drops on a full ring, and sleeping readers being woken.
#![cfg(not(loom))]

mod common;

use std::io::Write;
use std::time::Duration;

use common::*;
use tube_ring::{Offer, SendError, Tube, MAX_PACKET};

/// Packets of every size 1..=MAX_PACKET, twice: ~16 MB through 126 KiB rings, so records
/// start and wrap at many different offsets.
const ECHO_PACKETS: u32 = 2 * MAX_PACKET as u32;
const WAKE_ROUNDS: u32 = 20_000;
const FLOOD: u64 = 5000;

fn size_of_seq(seq: u32) -> usize {
    seq as usize % MAX_PACKET + 1
}

/// Entry point of child processes; a no-op in the normal test run.
#[test]
fn child_entry() {
    let Some(role) = child_role() else { return };
    let mut tube = connect_from_env();
    match role.as_str() {
        "echo" => child_echo(&mut tube),
        "idle_then_drain" => child_idle_then_drain(&mut tube),
        "pong" => child_pong(&mut tube),
        other => panic!("unknown role {other}"),
    }
}

/// Verifies each packet against its expected content and sends it back.
fn child_echo(tube: &mut Tube) {
    let (mut seq, mut want, mut sum) = (0u32, Vec::new(), CHECKSUM_INIT);
    let mut got = Vec::new();
    while seq < ECHO_PACKETS {
        got.clear();
        recv_wait(tube, 256, PATIENCE, |p| got.push(p.to_vec())).expect("child recv");
        for p in &got {
            payload(seq, size_of_seq(seq), &mut want);
            assert_eq!(p, &want, "packet {seq} differs");
            sum = checksum(sum, p);
            let _ = send_lossless(tube, p, |_| {});
            seq += 1;
        }
    }
    println!("RESULT {seq} {sum}");
}

#[test]
fn every_size_crosses_both_rings_intact() {
    if child_role().is_some() {
        return;
    }
    let offer = Offer::new().unwrap();
    let mut child = spawn("child_entry", "echo", &refs_env(&offer));
    let mut tube = offer.accept(PATIENCE).unwrap();
    let (mut echoed, mut sum, mut pkt, mut want) = (0u32, CHECKSUM_INIT, Vec::new(), Vec::new());
    let mut verify = |p: &[u8], echoed: &mut u32| {
        payload(*echoed, size_of_seq(*echoed), &mut want);
        assert_eq!(p, &want[..], "echo {echoed} differs");
        sum = checksum(sum, p);
        *echoed += 1;
    };
    let mut full = 0;
    for seq in 0..ECHO_PACKETS {
        payload(seq, size_of_seq(seq), &mut pkt);
        full += send_lossless(&mut tube, &pkt, |t| {
            t.recv(usize::MAX, |p| verify(p, &mut echoed)).unwrap();
        });
    }
    while echoed < ECHO_PACKETS {
        recv_wait(&mut tube, usize::MAX, PATIENCE, |p| verify(p, &mut echoed)).expect("echoes stopped");
    }
    let result = read_result(&mut child);
    expect_success(&mut child);
    assert_eq!(result, format!("{ECHO_PACKETS} {sum}"));
    let s = tube.stats();
    assert_eq!((s.sent_pkts, s.recv_pkts, s.dropped), (ECHO_PACKETS as u64, ECHO_PACKETS as u64, full));
    assert_eq!(s.sent_bytes, s.recv_bytes);
}

/// Waits for "go" on stdin, then drains everything and reports count and checksum.
fn child_idle_then_drain(tube: &mut Tube) {
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).unwrap();
    let (mut n, mut sum) = (0u64, CHECKSUM_INIT);
    let mut want = Vec::new();
    loop {
        let got = tube.recv(usize::MAX, |p| {
            payload(n as u32, 64, &mut want);
            assert_eq!(p, &want[..], "packet {n} differs");
            sum = checksum(sum, p);
            n += 1;
        });
        if got.unwrap() == 0 {
            break;
        }
    }
    println!("RESULT {n} {sum}");
}

#[test]
fn full_ring_drops_and_counts() {
    if child_role().is_some() {
        return;
    }
    let offer = Offer::new().unwrap();
    let mut child = spawn("child_entry", "idle_then_drain", &refs_env(&offer));
    let mut tube = offer.accept(PATIENCE).unwrap();
    let (mut pkt, mut sum, mut sent) = (Vec::new(), CHECKSUM_INIT, 0u64);
    for i in 0..FLOOD {
        payload(sent as u32, 64, &mut pkt);
        match tube.send(&pkt) {
            Ok(()) => {
                sum = checksum(sum, &pkt);
                sent += 1;
            }
            Err(SendError::Full) => {}
            Err(e) => panic!("send {i}: {e}"),
        }
    }
    let s = tube.stats();
    assert_eq!(s.sent_pkts, sent);
    assert_eq!(s.sent_pkts + s.dropped, FLOOD);
    assert!(s.dropped > 0, "{FLOOD} packets of 64 bytes must overflow one ring");
    assert!(sent > 1000, "a direction holds well over 1000 packets of 64 bytes, got {sent}");
    assert_eq!(tube.send(&[]), Err(SendError::BadSize(0)));
    assert_eq!(tube.send(&[0; MAX_PACKET + 1]), Err(SendError::BadSize(MAX_PACKET + 1)));
    assert_eq!(tube.stats().dropped, s.dropped, "bad sizes are not drops");
    child.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    let result = read_result(&mut child);
    expect_success(&mut child);
    assert_eq!(result, format!("{sent} {sum}"));
}

/// Answers each ping with the same packet, sleeping on the fd in between.
fn child_pong(tube: &mut Tube) {
    let mut got = Vec::new();
    let mut n = 0u32;
    while n < WAKE_ROUNDS {
        got.clear();
        recv_wait(tube, 16, PATIENCE, |p| got.push(p.to_vec())).expect("lost wake-up in child");
        for p in &got {
            assert_eq!(p[..4], n.to_le_bytes());
            let _ = send_lossless(tube, p, |_| {});
            n += 1;
        }
    }
    println!("RESULT {n}");
}

#[test]
fn sleeping_readers_are_always_woken() {
    if child_role().is_some() {
        return;
    }
    let offer = Offer::new().unwrap();
    let mut child = spawn("child_entry", "pong", &refs_env(&offer));
    let mut tube = offer.accept(PATIENCE).unwrap();
    let mut pkt = Vec::new();
    for n in 0..WAKE_ROUNDS {
        payload(n, 8 + (n as usize % 56), &mut pkt);
        let _ = send_lossless(&mut tube, &pkt, |_| {});
        // Vary the timing so the reply races our going to sleep in different ways.
        if n % 3 == 0 {
            std::thread::sleep(Duration::from_micros(n as u64 % 50));
        }
        let mut got = None;
        recv_wait(&mut tube, 1, PATIENCE, |p| got = Some(p.to_vec())).expect("lost wake-up in parent");
        assert_eq!(got.as_deref(), Some(&pkt[..]));
    }
    assert_eq!(read_result(&mut child), WAKE_ROUNDS.to_string());
    expect_success(&mut child);
}
