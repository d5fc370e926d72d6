//! Handing the shared memory over: only a peer holding the grant and running as the same
//! user gets it, refusals do not end the offer, bad references are rejected before any
//! connection is made, and memory that could shrink under the peer is refused.
#![cfg(not(loom))]

mod common;

use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::time::Duration;

use common::PATIENCE;
use tube_ring::{connect, Offer, RingError, TUBE_BYTES};

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

/// Every byte of the grant is checked: a grant that differs from the right one in any one
/// byte (first, last or between) is refused, and the offer keeps waiting. The comparison
/// itself is branch-free (`grant_eq` folds the XOR of every byte), so how long a refusal
/// takes does not tell how much of a forged grant was right; time is not asserted here.
#[test]
fn a_grant_wrong_in_any_one_byte_is_refused() {
    let offer = Offer::new().unwrap();
    let (ch, tx, rx) = (offer.event_channel(), offer.tx_ring_ref(), offer.rx_ring_ref());
    let acceptor = std::thread::spawn(move || offer.accept(PATIENCE));
    for byte in 0..16 {
        let (ftx, frx) = (flip_byte(&tx, byte), flip_byte(&rx, byte));
        let forged = connect(&ch, &ftx, &frx, PATIENCE);
        assert!(matches!(forged, Err(RingError::Denied)), "byte {byte}: {forged:?}");
    }
    let mut nock = connect(&ch, &tx, &rx, PATIENCE).unwrap();
    let mut tip = acceptor.join().unwrap().unwrap();
    tip.send(b"granted").unwrap();
    assert_eq!(nock.recv(8, |p| assert_eq!(p, b"granted")).unwrap(), 1);
}

/// `r` (`<dir>:<32 hex>`) with every bit of grant byte `byte` inverted.
fn flip_byte(r: &str, byte: usize) -> String {
    let (dir, hex) = r.split_once(':').unwrap();
    let mut b = u8::from_str_radix(&hex[2 * byte..2 * byte + 2], 16).unwrap();
    b ^= 0xff;
    format!("{dir}:{}{b:02x}{}", &hex[..2 * byte], &hex[2 * byte + 2..])
}

// ---- another uid (SO_PEERCRED) ---------------------------------------------------------

/// The uid of `nobody`, which children of these tests take.
const NOBODY: u32 = 65534;

/// Drops to uid/gid `nobody` (the process must be root).
fn become_nobody() {
    // SAFETY: plain syscalls; order matters (the gid first, while still root).
    unsafe {
        assert_eq!(libc::setgroups(0, std::ptr::null()), 0, "setgroups");
        assert_eq!(libc::setgid(NOBODY), 0, "setgid");
        assert_eq!(libc::setuid(NOBODY), 0, "setuid");
        assert_eq!(libc::geteuid(), NOBODY);
    }
}

/// True when this process may start children that change uid; said loudly when not.
fn can_change_uid(test: &str) -> bool {
    // SAFETY: plain syscall.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("\n*** {test}: NOT RUN: needs root to start a child as `nobody` ***\n");
    }
    root
}

/// Entry point of child processes; a no-op in the normal test run.
#[test]
fn child_entry() {
    let Some(role) = common::child_role() else { return };
    become_nobody();
    match role.as_str() {
        // An offerer of another uid that would hand its memory to anyone: prints refs, takes
        // one connection and says whether a grant came before it was closed. Only the
        // connector's own uid check keeps the grant from it.
        "foreign-offer" => {
            let name = format!("tube-{:032x}", 0xf0e1_u128 << 64 | std::process::id() as u128);
            let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
            let listener = UnixListener::bind_addr(&addr).unwrap();
            let grant = "5a".repeat(16);
            println!("REFS @{name} 0:{grant} 1:{grant}");
            let (mut conn, _) = listener.accept().unwrap();
            let mut got = [0u8; 16];
            match std::io::Read::read_exact(&mut conn, &mut got) {
                Ok(()) => {
                    send_with_fd(&conn, b'K', &memfd(TUBE_BYTES, libc::F_SEAL_SHRINK | libc::F_SEAL_GROW));
                    println!("RESULT grant-presented");
                }
                Err(_) => println!("RESULT no-grant"),
            }
        }
        // A connector of another uid that presents the right grant on the wire (skipping its
        // own uid check): the offer must close the connection without sending the memory.
        "foreign-connector" => {
            let ch = std::env::var("TUBE_CH").unwrap();
            let grant = std::env::var("TUBE_GRANT").unwrap();
            let addr = SocketAddr::from_abstract_name(&ch.as_bytes()[1..]).unwrap();
            let mut s = UnixStream::connect_addr(&addr).unwrap();
            let bytes: Vec<u8> = (0..16).map(|i| u8::from_str_radix(&grant[2 * i..2 * i + 2], 16).unwrap()).collect();
            s.set_read_timeout(Some(PATIENCE)).unwrap();
            let mut buf = [0u8; 1];
            // Closed before or after the grant (a reset, a broken pipe, end of file):
            // refused; a byte (with the memory): answered.
            let closed = |e: &std::io::Error| {
                matches!(e.kind(), std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe)
            };
            let refused = match s.write_all(&bytes) {
                Err(e) if closed(&e) => true,
                Err(e) => panic!("{e}"),
                Ok(()) => match std::io::Read::read(&mut s, &mut buf) {
                    Ok(0) => true,
                    Err(e) if closed(&e) => true,
                    Ok(_) => false,
                    Err(e) => panic!("{e}"),
                },
            };
            println!("RESULT {}", if refused { "refused" } else { "answered" });
        }
        other => panic!("unknown role {other}"),
    }
}

#[test]
fn an_offer_of_another_uid_is_refused_by_the_connector() {
    if common::child_role().is_some() || !can_change_uid("an_offer_of_another_uid_is_refused_by_the_connector") {
        return;
    }
    let mut child = common::spawn("child_entry", "foreign-offer", &[]);
    let out = child.stdout.take().unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(out)).map(Result::unwrap);
    let refs = lines.find_map(|l| l.strip_prefix("REFS ").map(str::to_string)).expect("REFS from the child");
    let refs: Vec<&str> = refs.split(' ').collect();
    let r = connect(refs[0], refs[1], refs[2], PATIENCE);
    assert!(matches!(r, Err(RingError::Denied)), "{r:?}");
    let result = lines.find_map(|l| l.strip_prefix("RESULT ").map(str::to_string));
    assert_eq!(result.as_deref(), Some("no-grant"));
    assert!(child.wait().unwrap().success());
}

#[test]
fn a_connector_of_another_uid_is_refused_by_the_offer() {
    if common::child_role().is_some() || !can_change_uid("a_connector_of_another_uid_is_refused_by_the_offer") {
        return;
    }
    let offer = Offer::new().unwrap();
    let (ch, tx, rx) = (offer.event_channel(), offer.tx_ring_ref(), offer.rx_ring_ref());
    let grant = tx.split_once(':').unwrap().1.to_string();
    let acceptor = std::thread::spawn(move || offer.accept(PATIENCE));
    let mut child = common::spawn("child_entry", "foreign-connector", &[("TUBE_CH", ch.clone()), ("TUBE_GRANT", grant)]);
    assert_eq!(common::read_result(&mut child), "refused");
    common::expect_success(&mut child);
    // The offer is still waiting, and admits its own uid.
    let mut nock = connect(&ch, &tx, &rx, PATIENCE).unwrap();
    let mut tip = acceptor.join().unwrap().unwrap();
    nock.send(b"same uid").unwrap();
    assert_eq!(tip.recv(8, |p| assert_eq!(p, b"same uid")).unwrap(), 1);
}

// ---- the memory handed over -------------------------------------------------------------

/// A fake offerer on a fresh `@tube-<hex>` name: takes the grant from one connector and
/// answers as an offerer does (`K` with an fd), handing over `memfd`.
fn fake_offer(memfd: OwnedFd) -> (String, String, String, std::thread::JoinHandle<()>) {
    let name = format!("tube-{:032x}", std::process::id() as u128 * 7919 + memfd.as_raw_fd() as u128);
    let listener = UnixListener::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap();
    let grant = "5a".repeat(16);
    let t = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut got = [0u8; 16];
        std::io::Read::read_exact(&mut conn, &mut got).unwrap();
        assert_eq!(got, [0x5a; 16]);
        send_with_fd(&conn, b'K', &memfd);
        // Keep the connection until the connector has looked at the memory.
        let _ = std::io::Read::read(&mut conn, &mut [0u8; 1]);
    });
    (format!("@{name}"), format!("0:{grant}"), format!("1:{grant}"), t)
}

/// Sends one byte with `fd` attached (SCM_RIGHTS).
fn send_with_fd(sock: &UnixStream, byte: u8, fd: &OwnedFd) {
    let mut data = [byte];
    let mut iov = libc::iovec { iov_base: data.as_mut_ptr().cast(), iov_len: 1 };
    let mut cbuf = [0u64; 4];
    // SAFETY: zero is a valid msghdr; every pointer set below outlives the sendmsg call, and
    // the control buffer (32 bytes, aligned) holds CMSG_SPACE(4).
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = libc::CMSG_SPACE(4) as usize;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(4) as usize;
        libc::CMSG_DATA(cmsg).cast::<i32>().write_unaligned(fd.as_raw_fd());
        assert_eq!(libc::sendmsg(sock.as_raw_fd(), &msg, 0), 1);
    }
}

/// A memfd of `len` bytes with `seals` added (0: none).
fn memfd(len: usize, seals: i32) -> OwnedFd {
    // SAFETY: plain syscalls on a fresh fd that the OwnedFd then owns.
    unsafe {
        let fd = libc::memfd_create(c"fake".as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING);
        assert!(fd >= 0);
        let fd = OwnedFd::from_raw_fd(fd);
        assert_eq!(libc::ftruncate(fd.as_raw_fd(), len as libc::off_t), 0);
        if seals != 0 {
            assert_eq!(libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals), 0);
        }
        fd
    }
}

#[test]
fn memory_that_can_still_shrink_or_grow_is_refused() {
    if common::child_role().is_some() {
        return;
    }
    let cases = [
        (0, "not sealed"),
        (libc::F_SEAL_GROW, "not sealed"),
        (libc::F_SEAL_SHRINK, "not sealed"),
    ];
    for (seals, why) in cases {
        let (ch, tx, rx, t) = fake_offer(memfd(TUBE_BYTES, seals));
        let r = connect(&ch, &tx, &rx, PATIENCE);
        assert!(matches!(&r, Err(RingError::Corrupt(m)) if m.contains(why)), "seals {seals:#x}: {r:?}");
        drop(r);
        t.join().unwrap();
    }
    // Sealed, but not the size of a tube.
    let (ch, tx, rx, t) = fake_offer(memfd(TUBE_BYTES / 2, libc::F_SEAL_SHRINK | libc::F_SEAL_GROW));
    let r = connect(&ch, &tx, &rx, PATIENCE);
    assert!(matches!(&r, Err(RingError::Corrupt(m)) if m.contains("size")), "{r:?}");
    drop(r);
    t.join().unwrap();
}

/// A region whose header says `ring` bytes per ring (magic and version right).
fn region_claiming(len: usize, ring: usize) -> OwnedFd {
    let fd = memfd(len, libc::F_SEAL_SHRINK | libc::F_SEAL_GROW);
    let mut hdr = Vec::new();
    hdr.extend_from_slice(&tube_ring::layout::MAGIC.to_le_bytes());
    hdr.extend_from_slice(&tube_ring::layout::VERSION.to_le_bytes());
    hdr.extend_from_slice(&(ring as u32).to_le_bytes());
    // SAFETY: `hdr` is valid for reads of its length; the fd is ours.
    let n = unsafe { libc::pwrite(fd.as_raw_fd(), hdr.as_ptr().cast(), hdr.len(), 0) };
    assert_eq!(n, hdr.len() as isize);
    fd
}

/// The connector takes the ring size its Tid asks for, never the one the offer claims: a
/// header or a memfd of another size is refused, whichever of the two lies.
#[test]
fn an_offer_of_another_ring_size_is_refused() {
    if common::child_role().is_some() {
        return;
    }
    use tube_ring::layout::{region_bytes, DIST_RING_BYTES, RING_BYTES};
    let cases = [
        // (memfd length, ring size in the header, ring size expected, what is refused)
        (region_bytes(DIST_RING_BYTES), DIST_RING_BYTES, RING_BYTES, "size"),
        (TUBE_BYTES, DIST_RING_BYTES, RING_BYTES, "header"),
        (TUBE_BYTES, RING_BYTES, DIST_RING_BYTES, "size"),
        (region_bytes(DIST_RING_BYTES), RING_BYTES, DIST_RING_BYTES, "header"),
    ];
    for (len, claimed, expected, why) in cases {
        let (ch, tx, rx, t) = fake_offer(region_claiming(len, claimed));
        let r = tube_ring::connect_ring(&ch, &tx, &rx, expected, PATIENCE);
        assert!(
            matches!(&r, Err(RingError::Corrupt(m)) if m.contains(why)),
            "{len} bytes claiming {claimed}, {expected} expected: {r:?}"
        );
        drop(r);
        t.join().unwrap();
    }
    // Told the right size, the same kind of region is taken.
    let (ch, tx, rx, t) = fake_offer(region_claiming(region_bytes(DIST_RING_BYTES), DIST_RING_BYTES));
    let r = tube_ring::connect_ring(&ch, &tx, &rx, DIST_RING_BYTES, PATIENCE);
    assert_eq!(r.map(|tube| tube.ring_bytes()).ok(), Some(DIST_RING_BYTES));
    t.join().unwrap();
}
