//! Handing the shared memory over: only a peer holding the grant gets it, refusals do not
//! end the offer, and bad references are rejected before any connection is made.
#![cfg(not(loom))]

use std::io::Write;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixStream};
use std::time::Duration;

use tube_ring::{connect, Offer, RingError};

const PATIENCE: Duration = Duration::from_secs(20);

/// The same ref with its grant's last hex digit changed.
fn forge(r: &str) -> String {
    let mut s = r.to_string();
    let last = s.pop().unwrap();
    s.push(if last == '0' { '1' } else { '0' });
    s
}

#[test]
fn wrong_grant_is_refused_and_offer_keeps_waiting() {
    let offer = Offer::new().unwrap();
    let (ch, tx, rx) = (offer.event_channel(), offer.tx_ring_ref(), offer.rx_ring_ref());
    let acceptor = std::thread::spawn(move || offer.accept(PATIENCE));
    let forged = connect(&ch, &forge(&tx), &forge(&rx), PATIENCE);
    assert!(matches!(forged, Err(RingError::Denied)), "{forged:?}");
    let mut nock = connect(&ch, &tx, &rx, PATIENCE).unwrap();
    let mut tip = acceptor.join().unwrap().unwrap();
    nock.send(b"in").unwrap();
    assert_eq!(tip.recv(8, |p| assert_eq!(p, b"in")).unwrap(), 1);
    assert_eq!(tip.peer_pid(), Some(std::process::id() as i32));
}

#[test]
fn silent_connection_does_not_block_the_real_peer() {
    let offer = Offer::new().unwrap();
    let (ch, tx, rx) = (offer.event_channel(), offer.tx_ring_ref(), offer.rx_ring_ref());
    let addr = SocketAddr::from_abstract_name(&ch.as_bytes()[1..]).unwrap();
    let mut squatter = UnixStream::connect_addr(&addr).unwrap();
    squatter.write_all(b"short").unwrap();
    let acceptor = std::thread::spawn(move || offer.accept(PATIENCE));
    let _nock = connect(&ch, &tx, &rx, PATIENCE).unwrap();
    assert!(acceptor.join().unwrap().is_ok());
}

#[test]
fn accept_times_out_without_peer() {
    let r = Offer::new().unwrap().accept(Duration::from_millis(100));
    assert!(matches!(r, Err(RingError::Timeout)), "{r:?}");
}

#[test]
fn bad_references_are_rejected() {
    let offer = Offer::new().unwrap();
    let (ch, tx, rx) = (offer.event_channel(), offer.tx_ring_ref(), offer.rx_ring_ref());
    let t = Duration::from_millis(200);
    assert!(matches!(connect(&ch, &rx, &tx, t), Err(RingError::BadRef(_))), "swapped refs");
    assert!(matches!(connect(&ch, &tx, &forge(&rx), t), Err(RingError::BadRef(_))), "mixed grants");
    assert!(matches!(connect("/tmp/x", &tx, &rx, t), Err(RingError::BadRef(_))));
    assert!(matches!(connect(&ch, "garbage", &rx, t), Err(RingError::BadRef(_))));
    drop(offer);
    assert!(matches!(connect(&ch, &tx, &rx, t), Err(RingError::Io(_))), "offer gone");
}

#[test]
fn tube_is_send() {
    fn assert_send<T: Send>() {}
    assert_send::<tube_ring::Tube>();
    assert_send::<Offer>();
}
