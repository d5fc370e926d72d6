//! Xen 4.17's own protocol test program, `test-xenstore` (Debian's xen-utils-4.17), run whole
//! against a private tubestored: every test once, then each test 1000 times. The program is
//! part of the test setup (scripts/setup.sh installs it): when it is missing this test fails.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const DEFAULT: &str = "/usr/lib/xen-4.17/bin/test-xenstore";

/// `$TEST_XENSTORE`, else Debian's place for it.
fn program() -> PathBuf {
    let p = std::env::var_os("TEST_XENSTORE").map_or_else(|| PathBuf::from(DEFAULT), PathBuf::from);
    assert!(
        p.is_file(),
        "{} not found: Xen's test-xenstore is needed (apt-get install xen-utils-4.17, which \
         scripts/setup.sh does; or set TEST_XENSTORE)",
        p.display()
    );
    p
}

/// Runs test-xenstore with `args` under timeout(1); returns its stdout, failing on any
/// failed test or non-zero exit.
fn run(prog: &Path, sock: &Path, args: &[&str]) -> String {
    let out = Command::new("timeout")
        .arg("300")
        .arg(prog)
        .args(args)
        .env("XENSTORED_PATH", sock)
        .stdin(Stdio::null())
        .output()
        .expect("run timeout(1)");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "test-xenstore {args:?}: {:?}\n{stdout}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    assert!(!stdout.contains("failed"), "test-xenstore {args:?}:\n{stdout}");
    stdout
}

fn test_names(prog: &Path, sock: &Path) -> Vec<String> {
    run(prog, sock, &["-l"])
        .lines()
        .filter_map(|l| l.split_once(':').map(|(n, _)| n.trim_end().to_owned()))
        .filter(|n| !n.is_empty())
        .collect()
}

#[test]
fn all_twelve_tests_pass_once_then_a_thousand_times_each() {
    let prog = program();
    let h = start("xen-test-xenstore");
    let sock = h.path();
    let names = test_names(&prog, sock);
    assert_eq!(names.len(), 12, "test-xenstore 4.17 lists 12 tests: {names:?}");
    let once = run(&prog, sock, &[]);
    assert_eq!(once.lines().filter(|l| l.ends_with(" ns")).count(), 12, "every test ran:\n{once}");
    for name in &names {
        let line = run(&prog, sock, &["-t", name, "-i", "1000"]);
        assert!(line.contains("avg:"), "{name}: {line}");
        eprint!("test-xenstore -i 1000 {line}");
    }
    h.with_state(|s| s.store.check_invariants()).unwrap();
    assert_eq!(h.with_state(|s| s.store.undo_len()), 0, "no transaction left open");
}
