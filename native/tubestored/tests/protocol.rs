//! Request semantics over a real socket: nodes, permissions, watches, transactions, domains.

mod common;
use common::*;
use tube_xs::wire::MsgType;

#[test]
fn write_read_directory_rm() {
    let h = start("basic");
    let mut c = Raw::connect(h.path());
    c.write("/a/b/c", "v1").unwrap();
    assert_eq!(c.read("/a/b/c").unwrap(), "v1");
    assert_eq!(c.read("/a/b").unwrap(), "", "WRITE creates parents with empty values");
    c.write("/a/b/d", "v2").unwrap();
    assert_eq!(c.dir("/a/b").unwrap(), vec!["c", "d"]);
    assert_eq!(c.req(MsgType::Mkdir, 0, &z("/a/b")), Ok(b"OK\0".to_vec()), "MKDIR of an existing node is OK");
    assert_eq!(c.read("/a/b/c").unwrap(), "v1", "MKDIR leaves values alone");
    assert_eq!(c.req(MsgType::Rm, 0, &z("/a/b")), Ok(b"OK\0".to_vec()));
    assert_eq!(c.read("/a/b/c"), Err("ENOENT".into()));
    assert_eq!(c.dir("/a").unwrap(), Vec::<String>::new());
    assert!(c.req(MsgType::Rm, 0, &z("/a/missing")).is_ok(), "RM of a missing node whose parent exists");
    assert_eq!(c.req(MsgType::Rm, 0, &z("/x/y")), Err("ENOENT".into()));
    assert_eq!(c.req(MsgType::Rm, 0, &z("/")), Err("EINVAL".into()));
    assert_eq!(c.read("/bad//path"), Err("EINVAL".into()));
    assert_eq!(c.read("/trailing/"), Err("EINVAL".into()));
    assert_eq!(c.req(MsgType::Control, 0, b""), Err("EINVAL".into()), "CONTROL without a command");
    h.with_state(|s| s.store.check_invariants()).unwrap();
}

#[test]
fn binary_values_and_perms_roundtrip() {
    let h = start("perms");
    let mut c = Raw::connect(h.path());
    let mut p = z("/bin");
    p.extend_from_slice(&[0, 1, 2, 0, 255]);
    c.req(MsgType::Write, 0, &p).unwrap();
    assert_eq!(c.req(MsgType::Read, 0, &z("/bin")).unwrap(), vec![0, 1, 2, 0, 255]);
    c.req(MsgType::SetPerms, 0, &zz(&["/bin", "b3", "r4"])).unwrap();
    assert_eq!(fields(&c.req(MsgType::GetPerms, 0, &z("/bin")).unwrap()), vec!["b3", "r4"]);
    c.write("/bin/child", "x").unwrap();
    assert_eq!(
        fields(&c.req(MsgType::GetPerms, 0, &z("/bin/child")).unwrap()),
        vec!["b3", "r4"],
        "dom0 creating a node inherits the parent's permissions"
    );
}

#[test]
fn unknown_type_answers_enosys_and_connection_survives() {
    let h = start("enosys");
    let mut c = Raw::connect(h.path());
    let id = 77;
    let hdr = tube_xs::wire::Header { ty: 1234, req_id: id, tx_id: 0, len: 0 };
    use std::io::Write;
    c.s.write_all(&hdr.to_bytes()).unwrap();
    let m = c.reply(id);
    assert_eq!(m.ty, MsgType::Error as u32);
    assert_eq!(fields(&m.payload), vec!["ENOSYS"]);
    c.write("/still", "alive").unwrap();
}

#[test]
fn watch_fires_at_once_then_on_changes_below_and_on_ancestor_removal() {
    let h = start("watch");
    let mut w = Raw::connect(h.path());
    let mut c = Raw::connect(h.path());
    w.watch("/top/sub", "tok").unwrap();
    assert_eq!(w.event(), ("/top/sub".into(), "tok".into()), "initial event after the reply");
    c.write("/top/sub/x", "1").unwrap();
    assert_eq!(w.event(), ("/top/sub/x".into(), "tok".into()));
    c.write("/top/other", "1").unwrap();
    c.req(MsgType::Rm, 0, &z("/top")).unwrap();
    assert_eq!(w.event(), ("/top/sub".into(), "tok".into()), "removal of an ancestor fires with the watch path");
    assert_eq!(w.req(MsgType::Unwatch, 0, &zz(&["/top/sub", "tok"])), Ok(b"OK\0".to_vec()));
    assert_eq!(w.req(MsgType::Unwatch, 0, &zz(&["/top/sub", "tok"])), Err("ENOENT".into()));
    assert_eq!(w.watch("/dup", "t"), Ok(()));
    assert_eq!(w.watch("/dup", "t"), Err("EEXIST".into()));
}

#[test]
fn own_events_come_before_the_reply() {
    let h = start("order");
    let mut c = Raw::connect(h.path());
    c.watch("/o", "t").unwrap();
    assert_eq!(c.event().0, "/o");
    let id = c.send(MsgType::Write, 0, &wr("/o/k", "v"));
    let first = c.recv().unwrap();
    assert_eq!(first.ty, MsgType::WatchEvent as u32, "the change's event precedes the WRITE reply");
    let second = c.recv().unwrap();
    assert_eq!((second.ty, second.req_id), (MsgType::Write as u32, id));
}

#[test]
fn pipelined_requests_get_replies_in_order() {
    let h = start("pipe");
    let mut c = Raw::connect(h.path());
    let ids: Vec<u32> = (0..500).map(|i| c.send(MsgType::Write, 0, &wr(&format!("/p/{i}"), "v"))).collect();
    for id in ids {
        let m = c.reply(id);
        assert_eq!(m.ty, MsgType::Write as u32);
    }
    assert_eq!(c.dir("/p").unwrap().len(), 500);
}

#[test]
fn transactions_commit_abort_and_conflict() {
    let h = start("tx");
    let mut a = Raw::connect(h.path());
    let mut b = Raw::connect(h.path());
    a.watch("/t", "w").unwrap();
    a.event();
    let tx: u32 = fields(&a.req(MsgType::TransactionStart, 0, b"\0").unwrap())[0].parse().unwrap();
    a.req(MsgType::Write, tx, &wr("/t/x", "in-tx")).unwrap();
    assert_eq!(b.read("/t/x"), Err("ENOENT".into()), "uncommitted writes are private");
    assert_eq!(a.req(MsgType::Read, tx, &z("/t/x")).unwrap(), b"in-tx");
    a.req(MsgType::TransactionEnd, tx, b"T\0").unwrap();
    assert_eq!(b.read("/t/x").unwrap(), "in-tx");
    assert_eq!(a.event().0, "/t/x", "watches fire at commit");

    // Abort.
    let tx: u32 = fields(&a.req(MsgType::TransactionStart, 0, b"\0").unwrap())[0].parse().unwrap();
    a.req(MsgType::Write, tx, &wr("/t/x", "dropped")).unwrap();
    a.req(MsgType::TransactionEnd, tx, b"F\0").unwrap();
    assert_eq!(b.read("/t/x").unwrap(), "in-tx");
    assert_eq!(a.req(MsgType::Read, tx, &z("/t/x")), Err("ENOENT".into()), "ended transaction is gone");

    // Conflict: read in tx, another client writes, commit fails.
    let tx: u32 = fields(&a.req(MsgType::TransactionStart, 0, b"\0").unwrap())[0].parse().unwrap();
    a.req(MsgType::Read, tx, &z("/t/x")).unwrap();
    a.req(MsgType::Write, tx, &wr("/t/y", "1")).unwrap();
    b.write("/t/x", "changed").unwrap();
    assert_eq!(a.req(MsgType::TransactionEnd, tx, b"T\0"), Err("EAGAIN".into()));
    assert_eq!(b.read("/t/y"), Err("ENOENT".into()));

    // No conflict: an unrelated path changes meanwhile.
    let tx: u32 = fields(&a.req(MsgType::TransactionStart, 0, b"\0").unwrap())[0].parse().unwrap();
    a.req(MsgType::Write, tx, &wr("/t/x", "mine")).unwrap();
    b.write("/elsewhere", "z").unwrap();
    a.req(MsgType::TransactionEnd, tx, b"T\0").unwrap();
    assert_eq!(b.read("/t/x").unwrap(), "mine");
    assert_eq!(a.req(MsgType::TransactionStart, 5, b"\0"), Err("EBUSY".into()));
    h.with_state(|s| s.store.check_invariants()).unwrap();
}

#[test]
fn local_domain_lifecycle() {
    let h = start("dom");
    let mut dom0 = Raw::connect(h.path());
    dom0.watch("@introduceDomain", "intro").unwrap();
    dom0.watch("@releaseDomain", "rel").unwrap();
    dom0.event();
    dom0.event();
    let mut g = Raw::connect(h.path());
    let d = g.introduce_self("auto").unwrap();
    assert_eq!(d, 1);
    assert_eq!(dom0.event(), ("@introduceDomain".into(), "intro".into()));
    assert_eq!(g.introduce_self("7"), Err("EISCONN".into()));
    let mut g2 = Raw::connect(h.path());
    assert_eq!(g2.introduce_self("1"), Err("EEXIST".into()));
    assert_eq!(g2.introduce_self("0"), Err("EINVAL".into()));
    assert_eq!(g2.introduce_self("5").unwrap(), 5);
    dom0.event();

    // The guest works relative to its home and owns what it creates.
    g.write("data/x", "1").unwrap();
    assert_eq!(dom0.read("/local/domain/1/data/x").unwrap(), "1");
    assert_eq!(fields(&dom0.req(MsgType::GetPerms, 0, &z("/local/domain/1/data/x")).unwrap()), vec!["n1"]);
    assert_eq!(fields(&g.req(MsgType::GetDomainPath, 0, &z("1")).unwrap()), vec!["/local/domain/1"]);
    assert_eq!(fields(&dom0.req(MsgType::IsDomainIntroduced, 0, &z("1")).unwrap()), vec!["T"]);
    assert_eq!(fields(&dom0.req(MsgType::IsDomainIntroduced, 0, &z("9")).unwrap()), vec!["F"]);

    // Held to its permissions.
    dom0.write("/private", "p").unwrap();
    assert_eq!(g.read("/private"), Err("EACCES".into()));
    assert_eq!(g.write("/private", "q"), Err("EACCES".into()));
    assert_eq!(g.write("/newtop", "q"), Err("EACCES".into()));
    assert_eq!(g2.read("/local/domain/1/data/x"), Err("EACCES".into()));
    g.req(MsgType::SetPerms, 0, &zz(&["data/x", "n1", "r5"])).unwrap();
    assert_eq!(g2.read("/local/domain/1/data/x").unwrap(), "1");
    assert_eq!(g2.write("/local/domain/1/data/x", "no"), Err("EACCES".into()));
    assert_eq!(g.req(MsgType::SetPerms, 0, &zz(&["data/x", "n5"])), Err("EPERM".into()), "only dom0 changes owners");
    assert_eq!(g.req(MsgType::Introduce, 0, &zz(&["9", "0", "0"])), Err("EACCES".into()));
    assert_eq!(g.req(MsgType::Release, 0, &z("5")), Err("EACCES".into()));

    // A peer watches the guest's node; the guest dies; the peer notices.
    g2.watch("/local/domain/1/data/x", "peer").unwrap();
    g2.event();
    dom0.write("/local/domain/1/by-dom0", "stays?").unwrap();
    drop(g);
    assert_eq!(g2.event(), ("/local/domain/1/data/x".into(), "peer".into()));
    assert_eq!(dom0.event(), ("@releaseDomain".into(), "rel".into()));
    assert_eq!(dom0.read("/local/domain/1"), Err("ENOENT".into()));
    assert_eq!(fields(&dom0.req(MsgType::IsDomainIntroduced, 0, &z("1")).unwrap()), vec!["F"]);
    h.with_state(|s| {
        assert_eq!(s.store.owned_by(1), 0);
        s.store.check_invariants()
    })
    .unwrap();

    // dom0 releases domain 5: its connection is closed and its nodes go.
    dom0.req(MsgType::Release, 0, &z("5")).unwrap();
    assert_eq!(dom0.event(), ("@releaseDomain".into(), "rel".into()));
    assert!(g2.recv().is_none(), "released domain's connection is closed");
    assert_eq!(dom0.read("/local/domain/5"), Err("ENOENT".into()));
    // The domid is free again.
    let mut g3 = Raw::connect(h.path());
    assert_eq!(g3.introduce_self("auto").unwrap(), 1);
}

#[test]
fn classic_introduce_from_dom0() {
    let h = start("classic");
    let mut dom0 = Raw::connect(h.path());
    dom0.watch("@introduceDomain", "i").unwrap();
    dom0.event();
    dom0.req(MsgType::Introduce, 0, &zz(&["3", "1234", "5"])).unwrap();
    assert_eq!(dom0.event().0, "@introduceDomain");
    assert_eq!(fields(&dom0.req(MsgType::IsDomainIntroduced, 0, &z("3")).unwrap()), vec!["T"]);
    dom0.req(MsgType::Release, 0, &z("3")).unwrap();
    assert_eq!(dom0.req(MsgType::Release, 0, &z("3")), Err("ENOENT".into()));
}

#[test]
fn quotas_for_unprivileged_domains() {
    let h = start("quota");
    let mut g = Raw::connect(h.path());
    g.introduce_self("auto").unwrap();
    for i in 0..128 {
        g.watch(&format!("w{i}"), "t").unwrap();
    }
    assert_eq!(g.watch("w128", "t"), Err("ENOSPC".into()));
    for _ in 0..10 {
        g.req(MsgType::TransactionStart, 0, b"\0").unwrap();
    }
    assert_eq!(g.req(MsgType::TransactionStart, 0, b"\0"), Err("ENOSPC".into()));
    let big = "x".repeat(2049);
    assert_eq!(g.write("big", &big), Err("ENOSPC".into()));
    let mut n = 1; // its home node
    let err = loop {
        match g.write(&format!("n{n}"), "") {
            Ok(()) => n += 1,
            Err(e) => break e,
        }
        assert!(n <= 1001, "node quota never hit");
    };
    assert_eq!((err.as_str(), n), ("ENOSPC", 1000));
    h.with_state(|s| s.store.check_invariants()).unwrap();
}
