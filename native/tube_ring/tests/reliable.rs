//! Reliable tubes: messages of any size go through in order and whole, with the writer
//! waiting for room on the event channel (the real wait protocol) instead of dropping.

mod common;

use std::time::{Duration, Instant};

use common::{wait_readable, PATIENCE};
use tube_ring::{connect, Assembly, Offer, RingError, Tube, MAX_PACKET, RESUME_ROOM};

fn pair() -> (Tube, Tube) {
    let offer = Offer::new().unwrap();
    let (ch, tx, rx) = (offer.event_channel(), offer.tx_ring_ref(), offer.rx_ring_ref());
    let t = std::thread::spawn(move || connect(&ch, &tx, &rx, PATIENCE).unwrap());
    let a = offer.accept(PATIENCE).unwrap();
    (a, t.join().unwrap())
}

/// Message `i` of the test: its size and a pattern that tells it apart from its neighbours.
fn message(i: usize, len: usize) -> Vec<u8> {
    (0..len).map(|k| (k.wrapping_mul(31) ^ i.wrapping_mul(7)) as u8).collect()
}

const SIZES: &[usize] = &[
    0, 1, 7, MAX_PACKET - 1, MAX_PACKET, MAX_PACKET + 1, 65_536 + 40, 300_000, 3 << 20, 0, 13,
];

/// Sends every message, waiting for room on the fd whenever the outbox is not empty.
fn writer(mut t: Tube, rounds: usize) -> Tube {
    let deadline = Instant::now() + PATIENCE * 3;
    for r in 0..rounds {
        for (i, &len) in SIZES.iter().enumerate() {
            let m = message(r * SIZES.len() + i, len);
            // Two pieces, so that records straddle the pieces of an iovec.
            let cut = len / 3;
            t.send_message(&[&m[..cut], &m[cut..]]).unwrap();
            while t.queued_bytes() > 0 {
                if t.prepare_wait_room(RESUME_ROOM) {
                    let left = deadline.saturating_duration_since(Instant::now());
                    assert!(wait_readable(t.fd(), left), "writer never woken: lost wake-up");
                    t.on_readable().unwrap();
                }
                t.flush().unwrap();
            }
        }
    }
    t
}

#[test]
fn messages_of_every_size_arrive_whole_and_in_order() {
    let (a, mut b) = pair();
    let rounds = 3;
    let w = std::thread::spawn(move || writer(a, rounds));
    let mut asm: Option<Assembly<Vec<u8>>> = None;
    let mut got: Vec<Vec<u8>> = Vec::new();
    let want = rounds * SIZES.len();
    let deadline = Instant::now() + PATIENCE * 3;
    while got.len() < want {
        let n = b.recv_messages(&mut asm, 64, |len| Some(vec![0u8; len]), |m, len| {
            assert_eq!(m.len(), len);
            got.push(m);
        });
        if n.unwrap() > 0 {
            continue;
        }
        if b.prepare_sleep() {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(wait_readable(b.fd(), left), "reader never woken after {} messages", got.len());
            let _ = b.on_readable();
        }
    }
    let a = w.join().unwrap();
    for (k, m) in got.iter().enumerate() {
        let len = SIZES[k % SIZES.len()];
        assert_eq!(m.len(), len, "message {k}");
        assert!(m == &message(k, len), "message {k} differs");
    }
    let (sa, sb) = (a.stats(), b.stats());
    assert_eq!(sa.sent_pkts, want as u64);
    assert_eq!(sb.recv_pkts, want as u64);
    assert_eq!(sa.sent_bytes, sb.recv_bytes);
    assert_eq!(sa.dropped, 0);
    assert!(asm.is_none());
}

#[test]
fn a_writer_waiting_for_room_sees_the_reader_die() {
    let (mut a, b) = pair();
    a.send_message(&[&vec![1u8; 1 << 20]]).unwrap();
    assert!(a.queued_bytes() > 0, "1 MiB cannot fit in the ring");
    assert!(a.prepare_wait_room(RESUME_ROOM));
    drop(b);
    assert!(wait_readable(a.fd(), Duration::from_secs(5)));
    assert!(matches!(a.on_readable(), Err(RingError::PeerGone)));
}
