//! `Tube::send_prefix`, the send of `tube:send_batch/2`: packets go in order up to the first
//! that finds the ring full, that one and the rest are dropped and counted, and the receiver
//! gets exactly the packets the answer names. Both ends live in this process (the connector
//! on a thread while the offerer accepts).

mod common;

use common::PATIENCE;
use tube_ring::{Offer, SendError, Tube};

fn pair() -> (Tube, Tube) {
    let offer = Offer::new().unwrap();
    let (ch, tx, rx) = (offer.event_channel(), offer.tx_ring_ref(), offer.rx_ring_ref());
    let connector = std::thread::spawn(move || tube_ring::connect(&ch, &tx, &rx, PATIENCE).unwrap());
    let offerer = offer.accept(PATIENCE).unwrap();
    (offerer, connector.join().unwrap())
}

/// Packet `i` of `len` bytes: its number, then bytes that depend on it.
fn packet(i: u32, len: usize) -> Vec<u8> {
    let mut p = i.to_be_bytes().to_vec();
    p.resize(len.max(4), (i % 251) as u8);
    p.truncate(len);
    p
}

fn received(rx: &mut Tube) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    while rx.recv(usize::MAX, |p| got.push(p.to_vec())).unwrap() > 0 {}
    got
}

#[test]
fn a_prefix_goes_in_the_rest_is_dropped_and_counted() {
    let (mut tx, mut rx) = pair();
    // 3000 records of 112 bytes are far more than a ring of 126 KiB holds.
    let pkts: Vec<Vec<u8>> = (0..3000).map(|i| packet(i, 100 + (i as usize % 5))).collect();
    let refs: Vec<&[u8]> = pkts.iter().map(|p| &p[..]).collect();
    let sent = tx.send_prefix(&refs).unwrap();
    assert!(sent > 0 && sent < pkts.len(), "sent {sent}");
    let s = tx.stats();
    assert_eq!((s.sent_pkts, s.dropped), (sent as u64, (pkts.len() - sent) as u64));
    assert_eq!(received(&mut rx), pkts[..sent].to_vec());
    // Room again: a smaller call goes in whole.
    assert_eq!(tx.send_prefix(&refs[..10]), Ok(10));
    assert_eq!(received(&mut rx), pkts[..10].to_vec());
}

#[test]
fn a_bad_size_sends_nothing() {
    let (mut tx, mut rx) = pair();
    let big = vec![1u8; tube_ring::MAX_PACKET + 1];
    let ok = packet(1, 10);
    assert_eq!(tx.send_prefix(&[&ok, &[]]), Err(SendError::BadSize(0)));
    assert_eq!(tx.send_prefix(&[&ok, &big]), Err(SendError::BadSize(big.len())));
    assert_eq!(tx.send_prefix(&[]), Ok(0));
    assert_eq!(tx.stats().sent_pkts + tx.stats().dropped, 0);
    assert!(received(&mut rx).is_empty());
    let edges = [packet(2, 1), packet(3, tube_ring::MAX_PACKET)];
    assert_eq!(tx.send_prefix(&[&edges[0], &edges[1]]), Ok(2));
    assert_eq!(received(&mut rx), edges.to_vec());
}
