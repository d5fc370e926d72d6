//! The client against a scripted fake daemon on a socketpair: request formats, error replies, watch events
//! interleaved with replies, out-of-order replies to pipelined requests, and daemons that die or talk garbage.
//!
//! Every wait is bounded: the fake daemon's socket has a read timeout (it panics and hangs up instead of
//! waiting forever), and a hang-up ends every client request with an error.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::RecvTimeoutError;
use tube_xs::client::{Client, Error, Watch, WatchEvent};
use tube_xs::perms::PermList;
use tube_xs::wire::{
    directory_part_reply, Decoder, Header, Message, MsgType, XsError, PAYLOAD_MAX,
};

/// Bounds every blocking step so a broken client fails the test instead of hanging it.
const GUARD: Duration = Duration::from_secs(20);

/// The daemon side of a connection.
struct Daemon {
    sock: UnixStream,
    decoder: Decoder,
}

impl Daemon {
    fn new(sock: UnixStream) -> Daemon {
        sock.set_read_timeout(Some(GUARD)).unwrap();
        Daemon {
            sock,
            decoder: Decoder::new(),
        }
    }

    /// The next request; panics on timeout, hang-up or framing error.
    fn recv(&mut self) -> Message {
        let mut buf = [0u8; 4096];
        loop {
            if let Some(m) = self.decoder.next().expect("client framing") {
                return m;
            }
            let n = self.sock.read(&mut buf).expect("read request");
            assert!(n > 0, "client hung up");
            self.decoder.push(&buf[..n]);
        }
    }

    /// Waits for a request of type `ty` with exactly `payload`.
    fn expect(&mut self, ty: MsgType, tx: u32, payload: &[u8]) -> Message {
        let m = self.recv();
        assert_eq!(m.msg_type(), Some(ty));
        assert_eq!(m.tx_id, tx, "tx id of {}", ty.name());
        assert_eq!(m.payload, payload, "payload of {}", ty.name());
        m
    }

    fn send(&mut self, m: &Message) {
        self.sock.write_all(&m.to_bytes()).unwrap();
    }

    /// Replies to `req` with its own type and `payload`.
    fn reply(&mut self, req: &Message, payload: &[u8]) {
        self.send(&Message {
            ty: req.ty,
            req_id: req.req_id,
            tx_id: req.tx_id,
            payload: payload.to_vec(),
        });
    }

    fn ack(&mut self, req: &Message) {
        self.reply(req, b"OK\0");
    }

    /// Reads until the client hangs up; panics if it sends anything else.
    fn wait_hangup(&mut self) {
        let mut buf = [0u8; 64];
        assert_eq!(self.sock.read(&mut buf).expect("read until hang-up"), 0);
    }
}

/// A client and a fake daemon running `script` on the other end of a socketpair.
fn pair(script: impl FnOnce(Daemon) + Send + 'static) -> (Client, JoinHandle<()>) {
    let (a, b) = UnixStream::pair().unwrap();
    let daemon = std::thread::spawn(move || script(Daemon::new(b)));
    (Client::from_stream(a).unwrap(), daemon)
}

#[test]
fn requests_use_xen_payload_formats() {
    let (xs, daemon) = pair(|mut d| {
        let r = d.expect(MsgType::Write, 0, b"/a/b\0hello");
        d.ack(&r);
        let r = d.expect(MsgType::Read, 0, b"/a/b\0");
        d.reply(&r, b"hello");
        let r = d.expect(MsgType::Mkdir, 0, b"/a/c\0");
        d.ack(&r);
        let r = d.expect(MsgType::Directory, 0, b"/a\0");
        d.reply(&r, b"b\0c\0");
        let r = d.expect(MsgType::Directory, 0, b"/a/b\0");
        d.reply(&r, b"");
        let r = d.expect(MsgType::SetPerms, 0, b"/a\0n1\0r2\0");
        d.ack(&r);
        let r = d.expect(MsgType::GetPerms, 0, b"/a\0");
        d.reply(&r, b"n1\0r2\0");
        let r = d.expect(MsgType::Rm, 0, b"/a/c\0");
        d.ack(&r);
        let r = d.expect(MsgType::GetDomainPath, 0, b"3\0");
        d.reply(&r, b"/local/domain/3\0");
        let r = d.expect(MsgType::IsDomainIntroduced, 0, b"3\0");
        d.reply(&r, b"F\0");
        let r = d.expect(MsgType::Introduce, 0, b"auto\0self\0");
        d.reply(&r, b"4\0");
        let r = d.expect(MsgType::Introduce, 0, b"9\0self\0");
        d.reply(&r, b"9\0");
        let r = d.expect(MsgType::Release, 0, b"9\0");
        d.ack(&r);
        let r = d.expect(MsgType::ResetWatches, 0, b"\0");
        d.ack(&r);
        d.wait_hangup();
    });
    xs.write(0, "/a/b", b"hello").unwrap();
    assert_eq!(xs.read(0, "/a/b").unwrap(), b"hello");
    xs.mkdir(0, "/a/c").unwrap();
    assert_eq!(xs.directory(0, "/a").unwrap(), ["b", "c"]);
    assert!(xs.directory(0, "/a/b").unwrap().is_empty());
    let perms = PermList::parse_str("n1,r2").unwrap();
    xs.set_perms(0, "/a", &perms).unwrap();
    assert_eq!(xs.get_perms(0, "/a").unwrap(), perms);
    xs.rm(0, "/a/c").unwrap();
    assert_eq!(xs.get_domain_path(3).unwrap(), "/local/domain/3");
    assert!(!xs.is_domain_introduced(3).unwrap());
    assert_eq!(xs.introduce_self(None).unwrap(), 4);
    assert_eq!(xs.introduce_self(Some(9)).unwrap(), 9);
    xs.release(9).unwrap();
    xs.reset_watches().unwrap();
    drop(xs);
    daemon.join().unwrap();
}

#[test]
fn transactions_carry_tx_id_and_report_conflicts() {
    let (xs, daemon) = pair(|mut d| {
        let r = d.expect(MsgType::TransactionStart, 0, b"\0");
        d.reply(&r, b"12\0");
        let r = d.expect(MsgType::Write, 12, b"/t\0v");
        d.ack(&r);
        let r = d.expect(MsgType::TransactionEnd, 12, b"T\0");
        d.send(&Message::error(r.req_id, r.tx_id, XsError::Eagain));
        let r = d.expect(MsgType::TransactionEnd, 13, b"F\0");
        d.ack(&r);
        d.wait_hangup();
    });
    let tx = xs.transaction_start().unwrap();
    assert_eq!(tx, 12);
    xs.write(tx, "/t", b"v").unwrap();
    assert!(matches!(
        xs.transaction_end(tx, true),
        Err(Error::Xs(XsError::Eagain))
    ));
    xs.transaction_end(13, false).unwrap();
    drop(xs);
    daemon.join().unwrap();
}

#[test]
fn error_reply_fails_only_that_request() {
    let (xs, daemon) = pair(|mut d| {
        let r = d.expect(MsgType::Read, 0, b"/missing\0");
        d.send(&Message::error(r.req_id, 0, XsError::Enoent));
        let r = d.expect(MsgType::Read, 0, b"/odd\0");
        d.send(&Message {
            ty: MsgType::Error as u32,
            req_id: r.req_id,
            tx_id: 0,
            payload: b"EWEIRD\0".to_vec(),
        });
        let r = d.expect(MsgType::Read, 0, b"/x\0");
        d.reply(&r, b"1");
        d.wait_hangup();
    });
    assert!(matches!(
        xs.read(0, "/missing"),
        Err(Error::Xs(XsError::Enoent))
    ));
    assert!(matches!(xs.read(0, "/odd"), Err(Error::Protocol(_))));
    assert_eq!(xs.read(0, "/x").unwrap(), b"1");
    drop(xs);
    daemon.join().unwrap();
}

#[test]
fn watch_events_interleave_with_replies() {
    let (xs, daemon) = pair(|mut d| {
        let r = d.expect(MsgType::Watch, 0, b"/w\0tok\0");
        // Xen fires a new watch once straight away; the event may overtake the reply.
        d.send(&Message::watch_event("/w", "tok"));
        d.ack(&r);
        let r = d.expect(MsgType::Write, 0, b"/w/x\0v");
        d.send(&Message::watch_event("/w/x", "tok"));
        d.ack(&r);
        let r = d.expect(MsgType::Unwatch, 0, b"/w\0tok\0");
        d.ack(&r);
        d.wait_hangup();
    });
    let events = xs.events();
    xs.watch("/w", "tok").unwrap();
    xs.write(0, "/w/x", b"v").unwrap();
    xs.unwatch("/w", "tok").unwrap();
    let got: Vec<WatchEvent> = (0..2)
        .map(|_| events.recv_timeout(GUARD).unwrap())
        .collect();
    assert_eq!(
        got[0],
        WatchEvent {
            path: "/w".into(),
            token: "tok".into()
        }
    );
    assert_eq!(
        got[1],
        WatchEvent {
            path: "/w/x".into(),
            token: "tok".into()
        }
    );
    assert!(events.is_empty());
    drop(xs);
    daemon.join().unwrap();
    assert_eq!(
        events.recv_timeout(GUARD),
        Err(RecvTimeoutError::Disconnected)
    );
}

#[test]
fn a_watch_handler_gets_events_in_wire_order_then_closed() {
    let (a, b) = UnixStream::pair().unwrap();
    let daemon = std::thread::spawn(move || {
        let mut d = Daemon::new(b);
        let r = d.expect(MsgType::Watch, 0, b"/w\0tok\0");
        d.send(&Message::watch_event("/w", "tok"));
        d.ack(&r);
        d.send(&Message::watch_event("/w/x", "tok"));
    });
    let (tx, rx) = crossbeam_channel::unbounded();
    let xs = Client::from_stream_with_handler(a, move |w| tx.send(w).unwrap()).unwrap();
    xs.watch("/w", "tok").unwrap();
    daemon.join().unwrap();
    let event = |path: &str| Watch::Event(WatchEvent { path: path.into(), token: "tok".into() });
    let got: Vec<Watch> = (0..3).map(|_| rx.recv_timeout(GUARD).unwrap()).collect();
    assert_eq!(got, vec![event("/w"), event("/w/x"), Watch::Closed]);
    assert!(xs.events().try_recv().is_err());
}

#[test]
fn pipelined_requests_get_their_own_out_of_order_replies() {
    const N: usize = 8;
    let (xs, daemon) = pair(|mut d| {
        let reqs: Vec<Message> = (0..N).map(|_| d.recv()).collect();
        let mut ids: Vec<u32> = reqs.iter().map(|r| r.req_id).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), N, "request ids are distinct");
        for r in reqs.iter().rev() {
            // The value is the path read, so each thread can tell whether it got its own reply.
            let path = r.fields()[0].to_vec();
            d.reply(r, &path);
        }
        d.wait_hangup();
    });
    let barrier = std::sync::Barrier::new(N);
    std::thread::scope(|s| {
        for i in 0..N {
            let (xs, barrier) = (&xs, &barrier);
            s.spawn(move || {
                barrier.wait();
                let path = format!("/p/{i}");
                assert_eq!(xs.read(0, &path).unwrap(), path.as_bytes());
            });
        }
    });
    drop(xs);
    daemon.join().unwrap();
}

#[test]
fn daemon_closing_mid_message_fails_pending_and_later_requests() {
    let (xs, daemon) = pair(|mut d| {
        let r = d.expect(MsgType::Read, 0, b"/a\0");
        let full = Message {
            ty: r.ty,
            req_id: r.req_id,
            tx_id: 0,
            payload: b"value".to_vec(),
        }
        .to_bytes();
        d.sock.write_all(&full[..20]).unwrap();
        // Dropping the socket here hangs up halfway through the reply.
    });
    let events = xs.events();
    assert!(matches!(xs.read(0, "/a"), Err(Error::Closed)));
    daemon.join().unwrap();
    assert!(matches!(xs.read(0, "/b"), Err(Error::Closed)));
    assert!(matches!(xs.watch("/b", "t"), Err(Error::Closed)));
    assert_eq!(
        events.recv_timeout(GUARD),
        Err(RecvTimeoutError::Disconnected)
    );
}

#[test]
fn oversize_reply_is_a_protocol_error() {
    let (xs, daemon) = pair(|mut d| {
        let r = d.expect(MsgType::Read, 0, b"/a\0");
        let h = Header {
            ty: r.ty,
            req_id: r.req_id,
            tx_id: 0,
            len: PAYLOAD_MAX as u32 + 1,
        };
        d.sock.write_all(&h.to_bytes()).unwrap();
        d.wait_hangup();
    });
    assert!(matches!(xs.read(0, "/a"), Err(Error::Protocol(_))));
    assert!(matches!(xs.read(0, "/a"), Err(Error::Closed)));
    daemon.join().unwrap();
}

#[test]
fn violations_make_the_client_hang_up() {
    let cases: Vec<Message> = vec![
        // Reply to an id nobody used.
        Message {
            ty: 2,
            req_id: 0xdead,
            tx_id: 0,
            payload: vec![],
        },
        // Watch event without a token.
        Message {
            ty: 15,
            req_id: 0,
            tx_id: 0,
            payload: b"/a\0".to_vec(),
        },
        // Watch event that is not UTF-8.
        Message {
            ty: 15,
            req_id: 0,
            tx_id: 0,
            payload: b"\xff\0t\0".to_vec(),
        },
    ];
    for bad in cases {
        let (xs, daemon) = pair(move |mut d| {
            let _ = d.recv();
            d.send(&bad);
            // The client, not the daemon, must end the connection.
            d.wait_hangup();
        });
        assert!(matches!(xs.read(0, "/a"), Err(Error::Protocol(_))));
        assert!(matches!(xs.read(0, "/a"), Err(Error::Closed)));
        daemon.join().unwrap();
    }
}

#[test]
fn wrong_reply_type_or_content_is_a_protocol_error() {
    let (xs, daemon) = pair(|mut d| {
        let r = d.recv();
        d.send(&Message {
            ty: MsgType::Write as u32,
            req_id: r.req_id,
            tx_id: 0,
            payload: b"OK\0".to_vec(),
        });
        let r = d.recv();
        d.reply(&r, b"maybe\0");
        let r = d.recv();
        d.reply(&r, b"-3\0");
        let r = d.recv();
        d.reply(&r, b"q9\0");
        d.wait_hangup();
    });
    assert!(matches!(xs.read(0, "/a"), Err(Error::Protocol(_))));
    assert!(matches!(
        xs.is_domain_introduced(1),
        Err(Error::Protocol(_))
    ));
    assert!(matches!(xs.transaction_start(), Err(Error::Protocol(_))));
    assert!(matches!(xs.get_perms(0, "/a"), Err(Error::Protocol(_))));
    drop(xs);
    daemon.join().unwrap();
}

#[test]
fn bad_arguments_are_refused_before_sending() {
    let (xs, daemon) = pair(|mut d| {
        let r = d.expect(MsgType::Read, 0, b"/ok\0");
        d.reply(&r, b"");
        d.wait_hangup();
    });
    assert!(matches!(
        xs.read(0, "/a\0b"),
        Err(Error::Xs(XsError::Einval))
    ));
    assert!(matches!(
        xs.write(0, "/a", &[b'x'; PAYLOAD_MAX]),
        Err(Error::Xs(XsError::E2big))
    ));
    assert_eq!(xs.read(0, "/ok").unwrap(), b"");
    drop(xs);
    daemon.join().unwrap();
}

#[test]
fn long_directory_is_read_in_parts() {
    let names: Vec<String> = (0..1500).map(|i| format!("node-{i:05}")).collect();
    let list: Vec<u8> = names.iter().flat_map(|n| n.bytes().chain([0])).collect();
    let (xs, daemon) = pair(move |mut d| {
        let r = d.expect(MsgType::Directory, 0, b"/big\0");
        d.send(&Message::error(r.req_id, 0, XsError::E2big));
        let mut restarted = false;
        loop {
            let r = d.recv();
            assert_eq!(r.msg_type(), Some(MsgType::DirectoryPart));
            let f = r.fields();
            assert_eq!(f[0], b"/big");
            let off: usize = std::str::from_utf8(f[1]).unwrap().parse().unwrap();
            // Change the generation once mid-listing: the client must start over.
            let gen = if off > 0 && !restarted { 2 } else { 1 };
            let reply = directory_part_reply(gen, &list, off);
            restarted |= gen == 2;
            let done = tube_xs::wire::DirectoryPart::parse(&reply)
                .unwrap()
                .complete;
            d.reply(&r, &reply);
            if done && restarted {
                break;
            }
        }
        d.wait_hangup();
    });
    let got = xs.directory(0, "/big").unwrap();
    drop(xs);
    daemon.join().unwrap();
    let want: Vec<String> = (0..1500).map(|i| format!("node-{i:05}")).collect();
    assert_eq!(got, want);
}

#[test]
fn drop_of_last_clone_closes_socket_and_ends_reader() {
    let (xs, daemon) = pair(|mut d| {
        let r = d.expect(MsgType::Read, 0, b"/a\0");
        d.reply(&r, b"1");
        d.wait_hangup();
    });
    let clone = xs.clone();
    let events = xs.events();
    drop(xs);
    // The clone still owns a working connection.
    assert_eq!(clone.read(0, "/a").unwrap(), b"1");
    assert_eq!(
        events.try_recv(),
        Err(crossbeam_channel::TryRecvError::Empty)
    );
    drop(clone);
    daemon.join().unwrap();
    assert_eq!(
        events.recv_timeout(GUARD),
        Err(RecvTimeoutError::Disconnected)
    );
}

#[test]
fn connects_by_path() {
    let dir = std::env::temp_dir().join(format!("tube_xs-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("socket");
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).unwrap();
    let daemon = std::thread::spawn(move || {
        let mut d = Daemon::new(listener.accept().unwrap().0);
        let r = d.expect(MsgType::GetDomainPath, 0, b"0\0");
        d.reply(&r, b"/local/domain/0\0");
        d.wait_hangup();
    });
    let xs = Client::connect(&path).unwrap();
    assert_eq!(xs.get_domain_path(0).unwrap(), "/local/domain/0");
    drop(xs);
    daemon.join().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(matches!(Client::connect(&path), Err(Error::Io(_))));
}

#[test]
fn timed_out_request_drops_its_late_reply() {
    let (xs, daemon) = pair(|mut d| {
        let slow = d.expect(MsgType::Read, 0, b"/slow\0");
        // /fast is only sent once the client gave up on /slow, so /slow's reply is surely late.
        let fast = d.expect(MsgType::Read, 0, b"/fast\0");
        d.reply(&slow, b"late");
        d.reply(&fast, b"fast");
        d.wait_hangup();
    });
    xs.set_timeout(Some(Duration::from_millis(1)));
    let r = xs.read(0, "/slow");
    assert!(
        matches!(&r, Err(Error::Io(e)) if e.kind() == std::io::ErrorKind::TimedOut),
        "{r:?}"
    );
    xs.set_timeout(None);
    assert_eq!(xs.read(0, "/fast").unwrap(), b"fast");
    drop(xs);
    daemon.join().unwrap();
}

#[test]
fn a_batch_is_sent_before_any_reply_and_answered_in_order() {
    let (xs, daemon) = pair(|mut d| {
        // All three requests arrive before the daemon answers any.
        let w = d.expect(MsgType::Write, 7, b"/a\0one");
        let r = d.expect(MsgType::Read, 7, b"/missing\0");
        let m = d.expect(MsgType::Mkdir, 0, b"/b\0");
        d.ack(&m);
        d.send(&Message::error(r.req_id, 7, XsError::Enoent));
        d.ack(&w);
        d.wait_hangup();
    });
    let results = xs.request_many(&[
        (MsgType::Write, 7, b"/a\0one"),
        (MsgType::Read, 7, b"/missing\0"),
        (MsgType::Mkdir, 0, b"/b\0"),
    ]);
    assert_eq!(results.len(), 3);
    assert_eq!(results[0].as_deref().unwrap(), b"OK\0");
    assert!(matches!(results[1], Err(Error::Xs(XsError::Enoent))));
    assert_eq!(results[2].as_deref().unwrap(), b"OK\0");
    // An oversize member fails alone; the others still go out.
    let big = vec![b'x'; 5000];
    let results = xs.request_many(&[(MsgType::Write, 0, &big)]);
    assert!(matches!(results[0], Err(Error::Xs(XsError::E2big))));
    drop(xs);
    daemon.join().unwrap();
}

#[test]
fn an_async_batch_calls_back_once_with_every_result() {
    let (xs, daemon) = pair(|mut d| {
        let r = d.expect(MsgType::Read, 0, b"/a\0");
        let w = d.expect(MsgType::Write, 0, b"/b\0x");
        d.reply(&r, b"va");
        d.ack(&w);
        // The second batch is left unanswered: the daemon hangs up.
        let _ = d.expect(MsgType::Read, 0, b"/c\0");
    });
    let (tx, rx) = crossbeam_channel::unbounded();
    let tx2 = tx.clone();
    xs.request_many_then(&[(MsgType::Read, 0, b"/a\0"), (MsgType::Write, 0, b"/b\0x")], move |r| {
        tx.send(r).unwrap()
    });
    let first = rx.recv_timeout(GUARD).expect("first batch");
    assert_eq!(first.len(), 2);
    assert_eq!(first[0].as_deref().unwrap(), b"va");
    assert_eq!(first[1].as_deref().unwrap(), b"OK\0");
    xs.request_many_then(&[(MsgType::Read, 0, b"/c\0")], move |r| tx2.send(r).unwrap());
    let second = rx.recv_timeout(GUARD).expect("second batch");
    assert!(matches!(second[0], Err(Error::Closed)));
    // Nothing could be sent: the callback runs at once.
    let (tx3, rx3) = crossbeam_channel::unbounded();
    xs.request_many_then(&[(MsgType::Read, 0, b"/d\0")], move |r| tx3.send(r).unwrap());
    assert!(matches!(rx3.recv_timeout(GUARD).unwrap()[0], Err(Error::Closed)));
    drop(xs);
    daemon.join().unwrap();
}
