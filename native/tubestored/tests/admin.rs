//! The rest of the protocol as Xen's xenstored answers it: removal events per removed node,
//! the special paths' permissions, SET_TARGET, GET/SET_FEATURE, GET/SET_QUOTA, CONTROL.

mod common;
use common::*;
use tube_xs::wire::MsgType;

fn text(v: Result<Vec<u8>, String>) -> String {
    let v = v.unwrap();
    String::from_utf8_lossy(v.strip_suffix(b"\0").unwrap_or(&v)).into_owned()
}

/// Collects events until `last` arrives (a marker written after the interesting change).
fn events_until(c: &mut Raw, last: &str) -> Vec<(String, String)> {
    let mut v = Vec::new();
    loop {
        let e = c.event();
        if e.0 == last {
            return v;
        }
        v.push(e);
    }
}

#[test]
fn removing_a_subtree_fires_each_removed_node_exactly_then_the_top() {
    let h = start("adm-rm");
    let (mut w, mut c) = (Raw::connect(h.path()), Raw::connect(h.path()));
    for p in ["/r/a/x", "/r/a/y", "/r/b"] {
        c.write(p, "v").unwrap();
    }
    for (p, t) in [("/r/a/x", "x"), ("/r/a", "a"), ("/r/b", "b"), ("/r", "top"), ("/", "root"), ("/r/a/none", "none"), ("/end", "end")] {
        w.watch(p, t).unwrap();
        w.event();
    }
    c.req(MsgType::Rm, 0, &z("/r")).unwrap();
    c.write("/end", "").unwrap();
    let ev = events_until(&mut w, "/end");
    // Children before parents, in directory order; the top fires its own watch and "/"'s;
    // a watch below on a node that never existed gets nothing.
    let want: Vec<(String, String)> = [("/r/a/x", "x"), ("/r/a", "a"), ("/r/b", "b"), ("/r", "top"), ("/r", "root")]
        .iter()
        .map(|(p, t)| (p.to_string(), t.to_string()))
        .collect();
    let mut got = ev.clone();
    got.retain(|e| e.1 != "root" || e.0 == "/r");
    assert_eq!(got, want, "all events: {ev:?}");
}

#[test]
fn a_domain_sees_removal_events_only_for_nodes_it_may_read() {
    let h = start("adm-rm-perms");
    let mut d0 = Raw::connect(h.path());
    let mut g = Raw::connect(h.path());
    assert_eq!(g.introduce_self("3").unwrap(), 3);
    d0.write("/p/open", "").unwrap();
    d0.write("/p/open/secret", "").unwrap();
    d0.req(MsgType::SetPerms, 0, &zz(&["/p", "n0", "r3"])).unwrap();
    d0.req(MsgType::SetPerms, 0, &zz(&["/p/open", "n0", "r3"])).unwrap();
    d0.req(MsgType::SetPerms, 0, &zz(&["/p/open/secret", "n0"])).unwrap();
    d0.write("/p/open/secret/deeper", "").unwrap(); // inherits n0
    g.watch("/p/open/secret/deeper", "deep").unwrap();
    g.event();
    g.watch("/p/open/secret", "secret").unwrap();
    g.event();
    g.watch("/p/open", "open").unwrap();
    g.event();
    g.watch("/local/domain/3/end", "end").unwrap();
    g.event();
    d0.req(MsgType::Rm, 0, &z("/p/open")).unwrap();
    d0.write("/local/domain/3/end", "").unwrap();
    let ev = events_until(&mut g, "/local/domain/3/end");
    // deeper: neither it nor its parent readable by 3; secret: its parent /p/open is.
    assert_eq!(ev, vec![("/p/open/secret".to_owned(), "secret".to_owned()), ("/p/open".to_owned(), "open".to_owned())]);
}

#[test]
fn special_events_follow_the_special_paths_permissions() {
    let h = start("adm-special");
    let mut d0 = Raw::connect(h.path());
    let mut g = Raw::connect(h.path());
    assert_eq!(g.introduce_self("4").unwrap(), 4);
    assert_eq!(fields(&d0.req(MsgType::GetPerms, 0, &z("@releaseDomain")).unwrap()), vec!["r0"], "every domain may watch by default");
    g.watch("@releaseDomain", "rel").unwrap();
    g.event();
    g.watch("@introduceDomain", "intro").unwrap();
    g.event();
    let mut p = Raw::connect(h.path());
    p.introduce_self("5").unwrap();
    assert_eq!(g.event(), ("@introduceDomain".to_owned(), "intro".to_owned()));
    drop(p);
    assert_eq!(g.event(), ("@releaseDomain".to_owned(), "rel".to_owned()));
    // dom0 takes it away, as in Xen: no more events for domain 4.
    d0.req(MsgType::SetPerms, 0, &zz(&["@releaseDomain", "n0"])).unwrap();
    assert_eq!(g.req(MsgType::SetPerms, 0, &zz(&["@releaseDomain", "r0"])), Err("EACCES".into()));
    let mut p = Raw::connect(h.path());
    p.introduce_self("6").unwrap();
    assert_eq!(g.event(), ("@introduceDomain".to_owned(), "intro".to_owned()));
    drop(p);
    d0.watch("@releaseDomain", "d0").unwrap();
    d0.event();
    let mut p = Raw::connect(h.path());
    p.introduce_self("7").unwrap();
    assert_eq!(g.event().0, "@introduceDomain");
    drop(p);
    assert_eq!(d0.event(), ("@releaseDomain".to_owned(), "d0".to_owned()), "dom0 still sees it");
    g.write("marker", "").unwrap(); // its own write: no release event may come before the reply
    assert!(g.events.is_empty(), "domain 4 saw {:?}", g.events);
}

#[test]
fn set_target_gives_a_domain_its_targets_rights() {
    let h = start("adm-target");
    let mut d0 = Raw::connect(h.path());
    let mut guest = Raw::connect(h.path());
    assert_eq!(guest.introduce_self("8").unwrap(), 8);
    let mut dm = Raw::connect(h.path());
    assert_eq!(dm.introduce_self("9").unwrap(), 9);
    guest.write("data/x", "guest's").unwrap();
    assert_eq!(dm.read("/local/domain/8/data/x"), Err("EACCES".into()));
    assert_eq!(dm.req(MsgType::SetTarget, 0, &zz(&["9", "8"])), Err("EACCES".into()), "dom0 only");
    assert_eq!(d0.req(MsgType::SetTarget, 0, &zz(&["9", "77"])), Err("ENOENT".into()));
    d0.req(MsgType::SetTarget, 0, &zz(&["9", "8"])).unwrap();
    assert_eq!(dm.read("/local/domain/8/data/x").unwrap(), "guest's");
    dm.write("/local/domain/8/data/x", "dm's").unwrap();
    dm.req(MsgType::SetPerms, 0, &zz(&["/local/domain/8/data/x", "n8", "r9"])).unwrap();
    assert_eq!(guest.read("/local/domain/9"), Err("EACCES".into()), "not the other way round");
}

#[test]
fn features_as_xenstore_txt_defines_them() {
    let h = start("adm-feature");
    let mut d0 = Raw::connect(h.path());
    assert_eq!(text(d0.req(MsgType::GetFeature, 0, b"")), "0", "no ring features: no rings here");
    assert_eq!(d0.req(MsgType::SetFeature, 0, &zz(&["12", "1"])), Err("EINVAL".into()), "unsupported bit");
    d0.req(MsgType::SetFeature, 0, &zz(&["12", "0"])).unwrap();
    assert_eq!(text(d0.req(MsgType::GetFeature, 0, &z("12"))), "0");
    let mut g = Raw::connect(h.path());
    g.introduce_self("12").unwrap();
    assert_eq!(d0.req(MsgType::SetFeature, 0, &zz(&["12", "0"])), Err("EBUSY".into()), "after INTRODUCE");
    assert_eq!(g.req(MsgType::GetFeature, 0, b""), Err("EACCES".into()));
    assert_eq!(d0.req(MsgType::SetFeature, 0, &zz(&["x", "0"])), Err("EINVAL".into()));
}

#[test]
fn quotas_global_and_per_domain() {
    let h = start("adm-quota");
    let mut d0 = Raw::connect(h.path());
    assert_eq!(text(d0.req(MsgType::GetQuota, 0, b"")), "nodes watches transactions node-size");
    assert_eq!(text(d0.req(MsgType::GetQuota, 0, &z("nodes"))), "1000");
    assert_eq!(d0.req(MsgType::GetQuota, 0, &z("bogus")), Err("EINVAL".into()));
    let mut g = Raw::connect(h.path());
    g.introduce_self("13").unwrap();
    d0.req(MsgType::SetQuota, 0, &zz(&["13", "node-size", "4"])).unwrap();
    assert_eq!(text(d0.req(MsgType::GetQuota, 0, &zz(&["13", "node-size"]))), "4");
    assert_eq!(text(d0.req(MsgType::GetQuota, 0, &z("node-size"))), "2048", "the global one is unchanged");
    assert_eq!(g.write("v", "12345"), Err("ENOSPC".into()));
    g.write("v", "1234").unwrap();
    d0.req(MsgType::SetQuota, 0, &zz(&["13", "node-size", "0"])).unwrap();
    assert_eq!(text(d0.req(MsgType::GetQuota, 0, &zz(&["13", "node-size"]))), "0", "0: no check");
    g.write("v", &"x".repeat(3000)).unwrap();
    d0.req(MsgType::SetQuota, 0, &zz(&["watches", "1"])).unwrap();
    let mut g2 = Raw::connect(h.path());
    g2.introduce_self("14").unwrap();
    g2.watch("a", "1").unwrap();
    assert_eq!(g2.watch("b", "2"), Err("ENOSPC".into()), "the new global quota applies");
    assert_eq!(g.req(MsgType::SetQuota, 0, &zz(&["nodes", "5"])), Err("EACCES".into()));
    assert_eq!(d0.req(MsgType::SetQuota, 0, &zz(&["99", "nodes", "5"])), Err("ENOENT".into()));
}

#[test]
fn control_text_commands() {
    let h = start("adm-control");
    let mut d0 = Raw::connect(h.path());
    assert_eq!(text(d0.req(MsgType::Control, 0, &z("check"))), "OK");
    let help = text(d0.req(MsgType::Control, 0, &z("help")));
    for cmd in ["check", "help", "log", "print", "quota", "quota-s"] {
        assert!(help.lines().any(|l| l.starts_with(cmd)), "{cmd} in {help}");
    }
    d0.req(MsgType::Control, 0, &zz(&["print", "hello from the test"])).unwrap();
    d0.req(MsgType::Control, 0, &zz(&["log", "on"])).unwrap();
    d0.write("/traced", "1").unwrap();
    d0.req(MsgType::Control, 0, &zz(&["log", "off"])).unwrap();
    let log = std::fs::read_to_string(format!("{}.log", h.path().display())).unwrap();
    assert!(log.contains("hello from the test") && log.contains("Write") && log.contains("/traced"), "{log}");
    let q = text(d0.req(MsgType::Control, 0, &z("quota")));
    assert!(q.contains("nodes: 1000") && q.contains("node-size: 2048"), "{q}");
    d0.req(MsgType::Control, 0, &zz(&["quota", "set", "nodes", "7"])).unwrap();
    assert_eq!(text(d0.req(MsgType::GetQuota, 0, &z("nodes"))), "7");
    let mut g = Raw::connect(h.path());
    g.introduce_self("15").unwrap();
    g.write("a/b", "").unwrap();
    let dq = text(d0.req(MsgType::Control, 0, &zz(&["quota", "15"])));
    assert!(dq.contains("nodes: 7") && dq.contains("Domain 15 usage:\nnodes: 3"), "{dq}");
    d0.req(MsgType::Control, 0, &zz(&["quota-s", "set", "nodes", "3"])).unwrap();
    assert!(text(d0.req(MsgType::Control, 0, &z("quota-s"))).contains("nodes: 3"));
    g.write("a/c", "").unwrap(); // 4 nodes: past the soft quota, still allowed
    let log = std::fs::read_to_string(format!("{}.log", h.path().display())).unwrap();
    assert!(log.contains("domain 15 passed its soft quota of 3 nodes (4)"), "{log}");
    assert_eq!(d0.req(MsgType::Control, 0, &z("live-update")), Err("EINVAL".into()));
    assert_eq!(g.req(MsgType::Control, 0, &z("help")), Err("EACCES".into()));
}
