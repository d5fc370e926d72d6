//! The network looked back on: a day of tube life replayed against the daemon binary with
//! `--db` (two nodes register, a tube opens and closes, the daemon is killed and restarted, a
//! second tube opens and its opener is killed), then `tubestored history` and
//! `tubestored dump --at` are checked against what happened and against `xenstore-ls` run
//! on the live tree at each moment.

mod common;
use common::*;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;
use tube_xs::wire::MsgType;

fn spawn(sock: &Path, db: &Path) -> KilledOnDrop {
    KilledOnDrop(spawn_db_daemon(sock, db))
}

fn run(args: &[&str], sock: &Path) -> Output {
    Command::new("timeout").arg("20").args(args).env("XENSTORED_PATH", sock).stdin(Stdio::null()).output().expect("run timeout(1)")
}

fn stdout_ok(o: Output, what: &str) -> String {
    assert!(o.status.success(), "{what}: {o:?}");
    String::from_utf8(o.stdout).unwrap()
}

/// `xenstore-ls /local/domain` on the live tree (Xen's own tool: the format to match).
fn live_ls(sock: &Path) -> String {
    assert!(
        Path::new("/usr/bin/xenstore-ls").exists() || std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("xenstore-ls").is_file())),
        "xenstore-ls is not installed: apt-get install xenstore-utils (scripts/setup.sh does)"
    );
    stdout_ok(run(&["xenstore-ls", "/local/domain"], sock), "xenstore-ls")
}

fn tubestored(args: &[&str], db: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tubestored")).args(args).arg("--db").arg(db).output().unwrap()
}

fn history(db: &Path, extra: &[&str]) -> String {
    let mut a = vec!["history"];
    a.extend_from_slice(extra);
    stdout_ok(tubestored(&a, db), "tubestored history")
}

fn dump_at(db: &Path, at: &str) -> String {
    stdout_ok(tubestored(&["dump", "--at", at, "/local/domain"], db), "tubestored dump")
}

/// Now as `--at`/`--since` take it (seconds.nanoseconds), after the last reply.
fn mark() -> String {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    format!("{}.{:09}", d.as_secs(), d.subsec_nanos())
}

fn set_perms(c: &mut Raw, path: &str, perms: &[&str]) {
    let mut f = vec![path];
    f.extend_from_slice(perms);
    c.req(MsgType::SetPerms, 0, &zz(&f)).unwrap();
}

/// The opener (nock, domain `a`) and the acceptor (tip, domain `b`) open tube `tid`, as the
/// control plane does: nock entry, tip entry, both states to 4.
fn open_tube(a: &mut Raw, b: &mut Raw, na: u32, nb: u32, tid: u32) {
    let nock = format!("/local/domain/{na}/data/nock/{nb}/{tid}");
    let tip = format!("/local/domain/{nb}/data/tip/{na}/{tid}");
    a.write(&format!("{nock}/state"), "1").unwrap();
    a.write(&format!("{nock}/tip"), &tip).unwrap();
    set_perms(a, &nock, &[&format!("n{na}"), &format!("r{nb}")]);
    a.write(&format!("{tip}/nock"), &nock).unwrap();
    a.write(&format!("{tip}/state"), "1").unwrap();
    set_perms(a, &tip, &[&format!("n{na}"), &format!("b{nb}")]);
    b.write(&format!("{tip}/state"), "4").unwrap();
    a.write(&format!("{nock}/state"), "4").unwrap();
}

fn close_tube(a: &mut Raw, na: u32, nb: u32, tid: u32) {
    a.req(MsgType::Rm, 0, &z(&format!("/local/domain/{nb}/data/tip/{na}/{tid}"))).unwrap();
    a.req(MsgType::Rm, 0, &z(&format!("/local/domain/{na}/data/nock/{nb}/{tid}"))).unwrap();
}

fn node(sock: &Path, domid: u32) -> Raw {
    let mut c = Raw::connect(sock);
    assert_eq!(c.introduce_self(&domid.to_string()).unwrap(), domid);
    c
}

/// Lines of `text` that contain every one of `words`.
fn lines_with<'a>(text: &'a str, words: &[&str]) -> Vec<&'a str> {
    text.lines().filter(|l| words.iter().all(|w| l.contains(w))).collect()
}

#[test]
fn a_day_of_tube_life_is_in_the_history_and_every_moment_can_be_dumped() {
    let dir = tempdir("history");
    let (sock, db) = (dir.join("socket"), dir.join("store.db"));
    let before_all = mark();
    std::thread::sleep(Duration::from_millis(2)); // the history's base comes strictly after
    let mut d = spawn(&sock, &db);
    // Morning: both nodes register; the acceptor opens its tip directory to everyone.
    let mut b = node(&sock, 5);
    b.write("data/tip", "").unwrap();
    set_perms(&mut b, "/local/domain/5/data/tip", &["b5"]);
    let mut a = node(&sock, 7);
    let registered = (live_ls(&sock), mark());
    // Tube 0 opens.
    open_tube(&mut a, &mut b, 7, 5, 0);
    let opened = (live_ls(&sock), mark());
    // Tube 0 closes.
    close_tube(&mut a, 7, 5, 0);
    let closed = (live_ls(&sock), mark());
    // The daemon is killed and restarted: the nodes register again.
    d.0.kill().unwrap();
    d.0.wait().unwrap();
    drop((a, b));
    let _d = spawn(&sock, &db);
    let mut b = node(&sock, 5);
    let mut a = node(&sock, 7);
    // Tube 1 opens; then the opener is killed (its connection closes, as kill -9 closes it).
    open_tube(&mut a, &mut b, 7, 5, 1);
    let reopened = (live_ls(&sock), mark());
    let mut w = Raw::connect(&sock);
    w.watch("@releaseDomain", "r").unwrap();
    w.event();
    drop(a);
    assert_eq!(w.event(), ("@releaseDomain".to_owned(), "r".to_owned()), "domain 7 released");
    let killed = (live_ls(&sock), mark());

    // Every moment dumps as xenstore-ls showed it live.
    for (what, (live, at)) in
        [("registered", &registered), ("opened", &opened), ("closed", &closed), ("reopened", &reopened), ("killed", &killed)]
    {
        assert_eq!(&dump_at(&db, at), live, "dump --at the moment {what}");
    }
    assert!(opened.0.contains("nock") && opened.0.contains("state = \"4\""), "{}", opened.0);
    assert!(!killed.0.contains("nock") && !killed.0.contains(" 7 = "), "{}", killed.0);
    let early = tubestored(&["dump", "--at", &before_all, "/"], &db);
    assert!(!early.status.success(), "no history before the daemon first ran");
    assert!(String::from_utf8_lossy(&early.stderr).contains("before the oldest history kept"), "{early:?}");

    // The whole history: who opened and closed what, when, between whom.
    let all = history(&db, &[]);
    let nock0 = "/local/domain/7/data/nock/5/0";
    let tip0 = "/local/domain/5/data/tip/7/0";
    let tip1 = "/local/domain/5/data/tip/7/1";
    let order = [
        lines_with(&all, &["dom7 introduced", "+ /local/domain/7 "]),
        lines_with(&all, &["dom7 ", &format!("+ {nock0} ")]),
        lines_with(&all, &["dom7 ", &format!("perms {nock0} (n7,r5)")]),
        lines_with(&all, &["dom7 ", &format!("+ {tip0} ")]),
        lines_with(&all, &["dom5 ", &format!("= {tip0}/state = \"4\"")]),
        lines_with(&all, &["dom7 ", &format!("- {tip0}")]),
        lines_with(&all, &["dom7 ", &format!("- {nock0}")]),
        lines_with(&all, &["dom7 ", &format!("+ {tip1} ")]),
        // The peer killed: its entries go with the subtree it owned.
        lines_with(&all, &["dom7 released", "- /local/domain/5/data/tip/7"]),
        lines_with(&all, &["dom7 released", "- /local/domain/7"]),
    ];
    let lines: Vec<&str> = all.lines().collect();
    let mut last = 0;
    for (i, found) in order.iter().enumerate() {
        assert!(!found.is_empty(), "event {i} missing from the history:\n{all}");
        let at = lines.iter().position(|l| *l == found[0]).unwrap();
        assert!(at >= last, "event {i} out of order ({}):\n{all}", found[0]);
        last = at;
    }
    let times: Vec<&str> = lines.iter().map(|l| l.split(' ').next().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "oldest first:\n{all}");
    // --since and PATH narrow it.
    let since = history(&db, &["--since", &closed.1]);
    assert!(!since.contains(nock0) && since.contains(tip1), "{since}");
    let under5 = history(&db, &["/local/domain/5/data/tip"]);
    assert!(under5.lines().all(|l| l.contains(" /local/domain/5/data/tip")), "{under5}");
    assert!(under5.contains(tip0) && under5.contains(tip1));
    // Bad input is answered clearly.
    let bad = tubestored(&["dump", "--at", "yesterday"], &db);
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");
    let bad = tubestored(&["history", "relative/path"], &db);
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");
}
