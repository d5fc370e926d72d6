//! Handing a tube's shared memory to exactly one peer.
//!
//! The offerer creates a sealed memfd and a listening Unix socket in the abstract namespace
//! (no filesystem entry; the name vanishes with the socket, even on kill -9). The ring refs
//! it publishes (through Xenstore) carry a 128-bit random grant. The connector connects,
//! sends the grant, and receives the memfd over SCM_RIGHTS. The offerer drops connections
//! that present a wrong grant or come from another uid, and keeps waiting. The accepted
//! connection then serves as the tube's event channel. The offer is accepted only once the
//! connector says it has mapped the memory, so an accepted tube always has a live peer: a
//! connector that cannot map it (out of descriptors, say) just closes the connection.
//!
//! Wire format of the handshake: connector -> offerer: the 16 grant bytes; offerer ->
//! connector: one byte `b'K'` carrying the memfd; connector -> offerer: one byte `b'M'` once
//! the memfd is mapped and its header checked. Wake-ups follow on the same connection.
//!
//! String formats: event channel `@tube-<32 hex>` (`@` marks the abstract namespace);
//! ring refs `<dir>:<32 hex grant>`, dir 0 = offerer transmits, dir 1 = offerer receives.

use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use crate::error::RingError;
use crate::layout::{region_bytes, valid_ring_bytes, MAGIC, RING_BYTES, VERSION};
use crate::sys::{self, Mapping};
use crate::tube::Tube;

/// Bytes of the grant (128 bits).
const GRANT_BYTES: usize = 16;
/// Longest a single connecting candidate may take to present its grant, so a silent
/// connection cannot hold up the real peer for the whole accept timeout.
const HANDSHAKE_LIMIT: Duration = Duration::from_secs(2);
/// The byte that accompanies the memfd.
const ACK: u8 = b'K';
/// The byte the connector sends once it has mapped the memfd.
const MAPPED: u8 = b'M';

/// Offering side ("tip" in the Xenstore handshake): owns the shared memory and the
/// listening socket until a peer with the right grant connects.
#[derive(Debug)]
pub struct Offer {
    map: Mapping,
    ring: usize,
    memfd: OwnedFd,
    listener: OwnedFd,
    name: String,
    grant: [u8; GRANT_BYTES],
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let s = s.as_bytes();
    if s.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (o, pair) in out.iter_mut().zip(s.chunks_exact(2)) {
        let digit = |c: u8| (c as char).to_digit(16);
        *o = (digit(pair[0])? * 16 + digit(pair[1])?) as u8;
    }
    Some(out)
}

/// Compares grants in time independent of where they differ.
fn grant_eq(a: &[u8; GRANT_BYTES], b: &[u8; GRANT_BYTES]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// Writes the region header (magic, version, ring size) into a fresh mapping.
fn write_header(map: &Mapping, ring: usize) {
    // SAFETY: offsets 0..16 are inside the mapping, which is page-aligned; nobody else has
    // the memfd yet, so these plain writes race with nothing.
    unsafe {
        let p = map.ptr().as_ptr();
        p.cast::<u64>().write(MAGIC.to_le());
        p.add(8).cast::<u32>().write(VERSION.to_le());
        p.add(12).cast::<u32>().write((ring as u32).to_le());
    }
}

/// Checks the region header written by the offerer against the ring size this end expects.
fn check_header(map: &Mapping, expect_ring: usize) -> Result<(), RingError> {
    // SAFETY: offsets 0..16 are inside the page-aligned mapping; volatile because the other
    // process may write them at any time.
    let (magic, version, ring) = unsafe {
        let p = map.ptr().as_ptr();
        (
            u64::from_le(p.cast::<u64>().read_volatile()),
            u32::from_le(p.add(8).cast::<u32>().read_volatile()),
            u32::from_le(p.add(12).cast::<u32>().read_volatile()),
        )
    };
    if magic != MAGIC || version != VERSION || ring as usize != expect_ring {
        return Err(RingError::Corrupt("shared memory header mismatch"));
    }
    Ok(())
}

impl Offer {
    /// Creates the shared memory, with the seed's ring size, and the listening socket.
    pub fn new() -> Result<Offer, RingError> {
        Offer::with_ring_bytes(RING_BYTES)
    }

    /// As [`Offer::new`], with rings of `ring` bytes each (see `layout::valid_ring_bytes`;
    /// another size is `BadRef`). The connector must expect the same size.
    pub fn with_ring_bytes(ring: usize) -> Result<Offer, RingError> {
        if !valid_ring_bytes(ring) {
            return Err(RingError::BadRef(format!("ring size {ring}")));
        }
        let mut rnd = [0u8; 32];
        sys::random_bytes(&mut rnd)?;
        let name = format!("tube-{}", hex(&rnd[..16]));
        let mut grant = [0u8; GRANT_BYTES];
        grant.copy_from_slice(&rnd[16..]);
        let memfd = sys::sealed_memfd(region_bytes(ring))?;
        let map = Mapping::new(&memfd, region_bytes(ring))?;
        write_header(&map, ring);
        let listener = sys::listen_abstract(name.as_bytes())?;
        Ok(Offer { map, ring, memfd, listener, name, grant })
    }

    /// The event channel: the abstract socket name, `@tube-<32 hex>`.
    pub fn event_channel(&self) -> String {
        format!("@{}", self.name)
    }

    /// Ref of the ring this (offering) side transmits on.
    pub fn tx_ring_ref(&self) -> String {
        format!("0:{}", hex(&self.grant))
    }

    /// Ref of the ring this side receives on.
    pub fn rx_ring_ref(&self) -> String {
        format!("1:{}", hex(&self.grant))
    }

    /// Waits (up to `timeout`) for the peer to connect and present the grant, hands it the
    /// memfd, and waits for its word that the memory is mapped. Connections with a wrong
    /// grant or another uid are dropped and waiting continues; a peer that took the memfd
    /// and closed without mapping it is `PeerGone`. Blocking: run it off the BEAM schedulers.
    pub fn accept(self, timeout: Duration) -> Result<Tube, RingError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(conn) = sys::accept(&self.listener)? {
                if let Some(pid) = self.admit(&conn, deadline)? {
                    mapped(&conn, deadline)?;
                    // The listener closes here, removing the name; the memfd closes too: the
                    // mapping keeps the memory alive.
                    return Ok(Tube::new(self.map, self.ring, conn, 0, Some(pid)));
                }
                continue;
            }
            let left = sys::remaining(deadline);
            if left.is_zero() {
                return Err(RingError::Timeout);
            }
            sys::poll_fd(std::os::fd::AsRawFd::as_raw_fd(&self.listener), libc::POLLIN, left)?;
        }
    }

    /// Runs the handshake with one candidate. `Ok(Some(pid))` if admitted and the memfd sent,
    /// `Ok(None)` if refused (wrong grant or uid, silent, or gone).
    fn admit(&self, conn: &OwnedFd, deadline: Instant) -> Result<Option<i32>, RingError> {
        let cred = match sys::peer_cred(conn) {
            Ok(c) if c.uid == sys::euid() => c,
            _ => return Ok(None),
        };
        let mut got = [0u8; GRANT_BYTES];
        let until = deadline.min(Instant::now() + HANDSHAKE_LIMIT);
        if sys::read_exact_until(conn, &mut got, until).is_err() || !grant_eq(&got, &self.grant) {
            return Ok(None);
        }
        match sys::send_fd(conn, ACK, &self.memfd) {
            Ok(()) => Ok(Some(cred.pid)),
            Err(_) => Ok(None),
        }
    }
}

/// Waits for the connector's word that it mapped the memory.
fn mapped(conn: &OwnedFd, deadline: Instant) -> Result<(), RingError> {
    let mut b = [0u8; 1];
    match sys::read_exact_until(conn, &mut b, deadline) {
        Ok(()) if b[0] == MAPPED => Ok(()),
        Ok(()) => Err(RingError::Corrupt("unexpected byte in place of the mapped word")),
        Err(e) if matches!(e.kind(), std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset) => {
            Err(RingError::PeerGone)
        }
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => Err(RingError::Timeout),
        Err(e) => Err(RingError::Io(e)),
    }
}

/// Parses a ring ref, returning its direction and grant.
fn parse_ref(r: &str) -> Result<(u8, [u8; GRANT_BYTES]), RingError> {
    let bad = || RingError::BadRef(r.chars().take(80).collect());
    let (dir, grant) = r.split_once(':').ok_or_else(bad)?;
    let dir = match dir {
        "0" => 0,
        "1" => 1,
        _ => return Err(bad()),
    };
    Ok((dir, unhex::<GRANT_BYTES>(grant).ok_or_else(bad)?))
}

/// Parses the event channel, returning the abstract socket name.
fn parse_channel(ch: &str) -> Result<&str, RingError> {
    match ch.strip_prefix('@') {
        Some(name) if name.starts_with("tube-") && unhex::<16>(&name[5..]).is_some() => Ok(name),
        _ => Err(RingError::BadRef(ch.chars().take(80).collect())),
    }
}

/// Connecting side ("nock"): the refs are the *offerer's* names, so this end transmits on
/// the offerer's rx ring.
pub fn connect(
    event_channel: &str,
    tx_ring_ref: &str,
    rx_ring_ref: &str,
    timeout: Duration,
) -> Result<Tube, RingError> {
    connect_ring(event_channel, tx_ring_ref, rx_ring_ref, RING_BYTES, timeout)
}

/// As [`connect`], expecting rings of `ring` bytes ([`Connecting::expect_ring_bytes`]).
pub fn connect_ring(
    event_channel: &str,
    tx_ring_ref: &str,
    rx_ring_ref: &str,
    ring: usize,
    timeout: Duration,
) -> Result<Tube, RingError> {
    let deadline = Instant::now() + timeout;
    Connecting::start_until(event_channel, tx_ring_ref, rx_ring_ref, deadline)?
        .expect_ring_bytes(ring)?
        .finish_until(deadline)
}

/// A connection to an offer that has presented its grant and waits for the shared memory:
/// [`connect`] in two steps, so that the offerer can be reached without blocking and the wait
/// for its answer can happen elsewhere.
#[derive(Debug)]
pub struct Connecting {
    sock: OwnedFd,
    peer_pid: i32,
    /// The ring size this end expects of the offer.
    ring: usize,
}

impl Connecting {
    /// Connects and presents the grant without waiting: a full backlog on the offer's socket
    /// is `Io` of kind `WouldBlock` (then [`connect`] waits for room).
    pub fn start(event_channel: &str, tx_ring_ref: &str, rx_ring_ref: &str) -> Result<Connecting, RingError> {
        Connecting::start_until(event_channel, tx_ring_ref, rx_ring_ref, Instant::now())
    }

    fn start_until(
        event_channel: &str,
        tx_ring_ref: &str,
        rx_ring_ref: &str,
        deadline: Instant,
    ) -> Result<Connecting, RingError> {
        let name = parse_channel(event_channel)?;
        let (tx_dir, grant) = parse_ref(tx_ring_ref)?;
        let (rx_dir, rx_grant) = parse_ref(rx_ring_ref)?;
        if tx_dir != 0 || rx_dir != 1 || grant != rx_grant {
            return Err(RingError::BadRef(format!("{tx_ring_ref} / {rx_ring_ref}")));
        }
        let sock = sys::connect_abstract(name.as_bytes(), deadline)?;
        let cred = sys::peer_cred(&sock)?;
        if cred.uid != sys::euid() {
            return Err(RingError::Denied);
        }
        sys::send_all(&sock, &grant)?;
        Ok(Connecting { sock, peer_pid: cred.pid, ring: RING_BYTES })
    }

    /// Expects rings of `ring` bytes instead of the seed's size: an offer of any other size
    /// (in its header or in its memfd's length) is refused as `Corrupt`.
    pub fn expect_ring_bytes(mut self, ring: usize) -> Result<Connecting, RingError> {
        if !valid_ring_bytes(ring) {
            return Err(RingError::BadRef(format!("ring size {ring}")));
        }
        self.ring = ring;
        Ok(self)
    }

    /// Waits (up to `timeout`) for the offerer's shared memory and maps it. Blocking: run it
    /// off the BEAM schedulers.
    pub fn finish(self, timeout: Duration) -> Result<Tube, RingError> {
        self.finish_until(Instant::now() + timeout)
    }

    fn finish_until(self, deadline: Instant) -> Result<Tube, RingError> {
        let memfd = match sys::recv_fd(&self.sock, deadline)? {
            Some((ACK, Some(fd))) => fd,
            _ => return Err(RingError::Denied),
        };
        // The size is what this end expects, never what the offer claims: the memfd's length
        // (sealed) and the header must both agree with it.
        let region = region_bytes(self.ring);
        sys::check_memfd(&memfd, region).map_err(RingError::Corrupt)?;
        let map = Mapping::new(&memfd, region)?;
        check_header(&map, self.ring)?;
        sys::send_all(&self.sock, &[MAPPED])?;
        Ok(Tube::new(map, self.ring, self.sock, 1, Some(self.peer_pid)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SendError;

    #[test]
    fn refs_round_trip_and_bad_refs_are_rejected() {
        let g = [0xa5u8; GRANT_BYTES];
        let r = format!("1:{}", hex(&g));
        assert_eq!(parse_ref(&r).unwrap(), (1, g));
        for bad in ["", "1:", "2:00", "1:zz", "x", "0:0123"] {
            assert!(parse_ref(bad).is_err(), "{bad}");
        }
        assert!(parse_channel("@tube-00112233445566778899aabbccddeeff").is_ok());
        assert!(parse_channel("tube-00112233445566778899aabbccddeeff").is_err());
        assert!(parse_channel("@tube-../etc").is_err());
    }

    #[test]
    fn connecting_in_two_steps() {
        let offer = Offer::new().unwrap();
        let c = Connecting::start(&offer.event_channel(), &offer.tx_ring_ref(), &offer.rx_ring_ref()).unwrap();
        let t = std::thread::spawn(move || offer.accept(Duration::from_secs(10)).unwrap());
        let mut nock = c.finish(Duration::from_secs(10)).unwrap();
        let mut tip = t.join().unwrap();
        tip.send(b"x").unwrap();
        assert_eq!(nock.recv(10, |p| assert_eq!(p, b"x")).unwrap(), 1);
    }

    /// A connector that receives the memfd but never maps it (closes instead) leaves the
    /// offer unaccepted: the offerer never gets a tube without a peer.
    #[test]
    fn offer_is_accepted_only_once_mapped() {
        let offer = Offer::new().unwrap();
        let (name, grant) = (parse_channel(&offer.event_channel()).unwrap().to_owned(), offer.grant);
        let t = std::thread::spawn(move || offer.accept(Duration::from_secs(10)));
        drop(take_memfd(&name, &grant));
        assert!(matches!(t.join().unwrap(), Err(RingError::PeerGone)));
    }

    /// Until the connector's word comes, the offer waits, up to its timeout.
    #[test]
    fn offer_without_the_mapped_word_times_out() {
        let offer = Offer::new().unwrap();
        let (name, grant) = (parse_channel(&offer.event_channel()).unwrap().to_owned(), offer.grant);
        let t = std::thread::spawn(move || offer.accept(Duration::from_millis(300)));
        let sock = take_memfd(&name, &grant);
        assert!(matches!(t.join().unwrap(), Err(RingError::Timeout)));
        drop(sock);
    }

    /// Does a connector's first half on the offer's channel `name`: sends `grant` and checks
    /// that the memfd comes back; returns the connection, which has not said it mapped.
    fn take_memfd(name: &str, grant: &[u8]) -> std::os::fd::OwnedFd {
        let deadline = Instant::now() + Duration::from_secs(10);
        let sock = sys::connect_abstract(name.as_bytes(), deadline).unwrap();
        sys::send_all(&sock, grant).unwrap();
        assert!(matches!(sys::recv_fd(&sock, deadline).unwrap(), Some((ACK, Some(_)))));
        sock
    }

    /// A tube with large rings carries a message bigger than the seed's whole region; a
    /// connector that expects another size refuses the offer, whatever the header says.
    #[test]
    fn ring_size_is_chosen_by_the_offer_and_checked_by_the_connector() {
        let big = crate::layout::DIST_RING_BYTES;
        let offer = Offer::with_ring_bytes(big).unwrap();
        let (ch, tx, rx) = (offer.event_channel(), offer.tx_ring_ref(), offer.rx_ring_ref());
        let t = std::thread::spawn(move || connect_ring(&ch, &tx, &rx, big, Duration::from_secs(10)).unwrap());
        let mut a = offer.accept(Duration::from_secs(10)).unwrap();
        let mut b = t.join().unwrap();
        assert_eq!((a.ring_bytes(), b.ring_bytes()), (big, big));
        let msg = vec![7u8; 400 << 10];
        a.send_message(&[&msg]).unwrap();
        assert_eq!(a.queued_bytes(), 0, "400 KiB fits in a 512 KiB ring at once");
        let mut asm = None;
        let mut got = Vec::new();
        b.recv_messages(&mut asm, 10, |len| Some(vec![0u8; len]), |m, len| got.push(m[..len].to_vec())).unwrap();
        assert_eq!(got, vec![msg]);

        for (offered, expected) in [(RING_BYTES, big), (big, RING_BYTES)] {
            let offer = Offer::with_ring_bytes(offered).unwrap();
            let (ch, tx, rx) = (offer.event_channel(), offer.tx_ring_ref(), offer.rx_ring_ref());
            let t = std::thread::spawn(move || offer.accept(Duration::from_millis(500)));
            let r = connect_ring(&ch, &tx, &rx, expected, Duration::from_secs(10));
            assert!(matches!(r, Err(RingError::Corrupt(_))), "{offered} offered, {expected} expected: {r:?}");
            assert!(t.join().unwrap().is_err());
        }
        assert!(matches!(Offer::with_ring_bytes(RING_BYTES + 8), Err(RingError::BadRef(_))));
    }

    /// Each end says its delivery; ends that differ are both closed with `DeliveryMismatch`,
    /// whichever says first, and ends that agree carry on.
    #[test]
    fn delivery_mismatch_closes_both_ends() {
        use crate::proto::{DELIVERY_LOSSY, DELIVERY_RELIABLE};
        let pair = || {
            let offer = Offer::new().unwrap();
            let (ch, tx, rx) = (offer.event_channel(), offer.tx_ring_ref(), offer.rx_ring_ref());
            let t = std::thread::spawn(move || connect(&ch, &tx, &rx, Duration::from_secs(10)).unwrap());
            (offer.accept(Duration::from_secs(10)).unwrap(), t.join().unwrap())
        };
        let (mut a, mut b) = pair();
        a.declare_delivery(DELIVERY_RELIABLE as u32).unwrap();
        b.declare_delivery(DELIVERY_RELIABLE as u32).unwrap();
        a.send(b"x").unwrap();
        assert_eq!(b.recv(10, |_| {}).unwrap(), 1);

        let (mut a, mut b) = pair();
        a.declare_delivery(DELIVERY_LOSSY as u32).unwrap();
        assert!(matches!(b.declare_delivery(DELIVERY_RELIABLE as u32), Err(RingError::DeliveryMismatch)));
        assert!(matches!(b.send(b"x"), Err(SendError::Closed)));
        assert!(matches!(b.recv(10, |_| {}), Err(RingError::DeliveryMismatch)));
        drop(b);
        let fd = a.fd();
        sys::poll_fd(fd, libc::POLLIN, Duration::from_secs(10)).unwrap();
        assert!(matches!(a.on_readable(), Err(RingError::DeliveryMismatch)));
        assert!(matches!(a.recv(10, |_| {}), Err(RingError::DeliveryMismatch)));

        // A word no honest peer writes is a corrupt ring, not a mismatch.
        let (mut a, b) = pair();
        b.delivery_slot(false).store(77, std::sync::atomic::Ordering::Relaxed);
        assert!(matches!(a.declare_delivery(DELIVERY_LOSSY as u32), Err(RingError::Corrupt(_))));
    }

    #[test]
    fn grant_compare() {
        assert!(grant_eq(&[1; 16], &[1; 16]));
        let mut b = [1; 16];
        b[15] = 0;
        assert!(!grant_eq(&[1; 16], &b));
    }

    #[test]
    fn same_process_tube_passes_packets() {
        let offer = Offer::new().unwrap();
        let (ch, tx, rx) = (offer.event_channel(), offer.tx_ring_ref(), offer.rx_ring_ref());
        let t = std::thread::spawn(move || connect(&ch, &tx, &rx, Duration::from_secs(10)).unwrap());
        let mut a = offer.accept(Duration::from_secs(10)).unwrap();
        let mut b = t.join().unwrap();
        a.send(b"hello").unwrap();
        let mut got = Vec::new();
        assert_eq!(b.recv(10, |p| got.push(p.to_vec())).unwrap(), 1);
        assert_eq!(got, vec![b"hello".to_vec()]);
        b.send(b"back").unwrap();
        assert!(a.has_data());
        assert_eq!(a.recv(10, |p| assert_eq!(p, b"back")).unwrap(), 1);
        let pkt = [9u8; 64];
        let sent = a.send_many(vec![&pkt[..]; 3000]).unwrap();
        let s = a.stats();
        assert_eq!((s.sent_pkts - 1, s.dropped), (sent as u64, 3000 - sent as u64));
        assert!(sent > 1000 && sent < 3000, "{sent}");
        assert_eq!(b.recv(usize::MAX, |p| assert_eq!(p, &pkt[..])).unwrap(), sent);
    }
}
