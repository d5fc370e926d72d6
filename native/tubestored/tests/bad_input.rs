//! Hostile and broken clients: the daemon answers with an error or drops that one connection,
//! never crashes, and the store stays consistent.

mod common;
use common::*;
use std::io::Write;
use std::time::{Duration, Instant};
use tube_xs::wire::{Header, MsgType};

fn assert_alive(h: &tubestored::ServerHandle) {
    let mut c = Raw::connect(h.path());
    c.write("/alive", "yes").unwrap();
    assert_eq!(c.read("/alive").unwrap(), "yes");
    h.with_state(|s| s.store.check_invariants()).unwrap();
}

#[test]
fn oversize_payload_drops_the_connection() {
    let h = start("oversize");
    let mut c = Raw::connect(h.path());
    let hdr = Header { ty: MsgType::Write as u32, req_id: 1, tx_id: 0, len: 4097 };
    c.s.write_all(&hdr.to_bytes()).unwrap();
    assert!(c.recv().is_none(), "connection dropped");
    assert_alive(&h);
}

#[test]
fn bad_paths_are_einval() {
    let h = start("badpath");
    let mut c = Raw::connect(h.path());
    let long = format!("/{}", "a".repeat(3072));
    for p in ["", "/a//b", "/a/", "/a b", "/a.b", "/caf\u{e9}", &long, "@introduceDomain"] {
        assert_eq!(c.read(p), Err("EINVAL".into()), "{p:?}");
        assert_eq!(c.write(p, "x"), Err("EINVAL".into()), "{p:?}");
    }
    assert_eq!(c.req(MsgType::Read, 0, &[b'/', 0xff, 0]), Err("EINVAL".into()));
    assert_eq!(c.req(MsgType::Read, 0, b""), Err("EINVAL".into()));
    assert_eq!(c.req(MsgType::SetPerms, 0, &zz(&["/", "q0"])), Err("EINVAL".into()));
    assert_eq!(c.req(MsgType::SetPerms, 0, &z("/")), Err("EINVAL".into()));
    assert_eq!(c.req(MsgType::Watch, 0, &z("/only-path")), Err("EINVAL".into()));
    assert_eq!(c.req(MsgType::TransactionEnd, 0, b"T\0"), Err("ENOENT".into()));
    assert_eq!(c.req(MsgType::TransactionEnd, 99, b"X\0"), Err("EINVAL".into()));
    assert_eq!(c.req(MsgType::Read, 12345, &z("/")), Err("ENOENT".into()), "unknown transaction");
    assert_eq!(c.req(MsgType::GetDomainPath, 0, &z("abc")), Err("EINVAL".into()));
    assert_eq!(c.req(MsgType::Introduce, 0, &zz(&["x", "self"])), Err("EINVAL".into()));
    assert_eq!(c.req(MsgType::WatchEvent, 0, b""), Err("ENOSYS".into()));
    assert_eq!(c.req(MsgType::Error, 0, b""), Err("ENOSYS".into()));
    assert_eq!(c.req(MsgType::Invalid, 0, b""), Err("ENOSYS".into()));
    assert_alive(&h);
}

#[test]
fn garbage_and_vanishing_clients() {
    let h = start("garbage");
    let mut seed = 0x1234_5678_u64;
    for round in 0..50 {
        let mut c = Raw::connect(h.path());
        let n = 1 + (round * 97) % 5000;
        let junk: Vec<u8> = (0..n)
            .map(|_| {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (seed >> 33) as u8
            })
            .collect();
        let _ = c.s.write_all(&junk);
        // Half the clients vanish at once, half mid-message after a partial header.
        if round % 2 == 1 {
            let _ = c.s.write_all(&[1, 0, 0]);
        }
        drop(c);
    }
    let t0 = Instant::now();
    while h.with_state(|s| s.conns.len()) > 0 {
        assert!(t0.elapsed() < Duration::from_secs(10), "connections not cleaned up");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_alive(&h);
}

#[test]
fn slow_reader_is_dropped_and_stalls_no_one() {
    let mut opts = tubestored::Options::default();
    opts.quotas.max_outbox = 64 * 1024;
    let h = start_with("slow", opts);
    let mut slow = Raw::connect(h.path());
    slow.watch("/", "everything").unwrap();
    let mut w = Raw::connect(h.path());
    let val = "v".repeat(1000);
    w.write("/flood/0", &val).unwrap(); // both connections are registered now
    // Keep writing until the daemon gives up on the reader that never reads; the writer is
    // never blocked by it (each WRITE gets its reply).
    let t0 = Instant::now();
    let mut i = 0;
    while h.with_state(|s| s.conns.len()) > 1 {
        assert!(t0.elapsed() < Duration::from_secs(20), "slow reader not dropped");
        w.write(&format!("/flood/{}", i % 50), &val).unwrap();
        i += 1;
    }
    // It gets what was queued, then EOF.
    let mut n = 0;
    while slow.recv().is_some() {
        n += 1;
    }
    assert!(n > 0);
    assert_alive(&h);
}

#[test]
fn flood_of_watches_and_transactions_from_a_domain() {
    let h = start("flood");
    let mut g = Raw::connect(h.path());
    g.introduce_self("auto").unwrap();
    let mut errs = 0;
    for i in 0..1000 {
        if g.watch(&format!("/w{i}"), "t").is_err() {
            errs += 1;
        }
        if g.req(MsgType::TransactionStart, 0, b"\0").is_err() {
            errs += 1;
        }
    }
    assert_eq!(errs, (1000 - 128) + (1000 - 10));
    assert_eq!(h.with_state(|s| s.watches.len()), 128);
    g.req(MsgType::ResetWatches, 0, b"\0").unwrap();
    assert_eq!(h.with_state(|s| s.watches.len()), 0);
    assert!(g.req(MsgType::TransactionStart, 0, b"\0").is_ok(), "RESET_WATCHES drops transactions too");
    assert_alive(&h);
}
