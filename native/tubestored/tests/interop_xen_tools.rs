//! Xen's own command-line clients (Debian's xenstore-utils) against tubestored through
//! XENSTORED_PATH. The tools are part of the test setup (scripts/setup.sh installs them):
//! when they are missing these tests fail, naming the package.

mod common;
use common::*;
use std::path::Path;
use std::process::{Command, Output, Stdio};

/// Fails the test when a tool is missing.
fn need_tools() {
    let missing: Vec<&str> = ["xenstore-write", "xenstore-read", "xenstore-ls", "xenstore-list", "xenstore-rm", "xenstore-exists", "xenstore-chmod", "xenstore-watch"]
        .into_iter()
        .filter(|t| {
            !std::env::var_os("PATH")
                .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(t).is_file()))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "Xen's xenstore tools {missing:?} are not installed: apt-get install xenstore-utils \
         (scripts/setup.sh does)"
    );
}

/// Runs a tool under `timeout` so a hang fails the test.
fn tool(sock: &Path, args: &[&str]) -> Output {
    Command::new("timeout")
        .arg("10")
        .args(args)
        .env("XENSTORED_PATH", sock)
        .stdin(Stdio::null())
        .output()
        .expect("run timeout(1)")
}

fn ok(sock: &Path, args: &[&str]) -> String {
    let o = tool(sock, args);
    assert!(o.status.success(), "{args:?} failed: {o:?}");
    String::from_utf8(o.stdout).unwrap()
}

#[test]
fn write_read_list_ls_rm_exists_chmod() {
    need_tools();
    let h = start("xentools");
    let p = h.path();
    ok(p, &["xenstore-write", "/tool/a", "hello", "/tool/b/c", "deep value"]);
    assert_eq!(ok(p, &["xenstore-read", "/tool/a"]), "hello\n");
    assert_eq!(ok(p, &["xenstore-read", "/tool/b/c"]), "deep value\n");
    assert_eq!(ok(p, &["xenstore-list", "/tool"]), "a\nb\n");
    assert_eq!(ok(p, &["xenstore-ls", "/tool"]), "a = \"hello\"\nb = \"\"\n c = \"deep value\"\n");
    assert!(tool(p, &["xenstore-exists", "/tool/a"]).status.success());
    assert!(!tool(p, &["xenstore-exists", "/tool/nope"]).status.success());
    let miss = tool(p, &["xenstore-read", "/tool/nope"]);
    assert!(!miss.status.success(), "reading a missing node fails");
    ok(p, &["xenstore-chmod", "/tool/a", "b5", "r7"]);
    let ls = ok(p, &["xenstore-ls", "-p", "/tool"]);
    assert!(ls.contains("(b5,r7)"), "permissions shown by xenstore-ls -p: {ls}");
    ok(p, &["xenstore-rm", "/tool/b"]);
    assert_eq!(ok(p, &["xenstore-list", "/tool"]), "a\n");
    assert!(!tool(p, &["xenstore-exists", "/tool/b/c"]).status.success());
    h.with_state(|s| s.store.check_invariants()).unwrap();
}

#[test]
fn xenstore_watch_sees_initial_and_later_events() {
    need_tools();
    let h = start("xenwatch");
    let p = h.path();
    ok(p, &["xenstore-write", "/w", ""]);
    let child = Command::new("timeout")
        .args(["10", "xenstore-watch", "-n", "3", "/w"])
        .env("XENSTORED_PATH", p)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // The initial event proves the watch is registered before we write.
    let mut c = Raw::connect(p);
    c.watch("/w", "sync").unwrap();
    c.event();
    wait_for_watchers(&h, 2);
    ok(p, &["xenstore-write", "/w/x", "1"]);
    ok(p, &["xenstore-rm", "/w"]);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "xenstore-watch: {out:?}");
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "/w\n/w/x\n/w\n");
}

/// Waits (bounded) until `n` watches are registered.
fn wait_for_watchers(h: &tubestored::ServerHandle, n: usize) {
    for _ in 0..1000 {
        if h.with_state(|s| s.watches.len()) >= n {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("watch never registered");
}
