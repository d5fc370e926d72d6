//! No silent loss of committed state: a commit is answered OK only once its journal frame is
//! written and fsynced, and answered ENOSPC (and undone) when the disk is full; a failed write
//! leaves no half frame that would hide later ones.
//!
//! The disk is a real 64 KiB tmpfs mounted by the test (it needs root, as the suite runs; it
//! fails, saying so, when it cannot mount), filled up with a file while the daemon runs.

mod common;
use common::*;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use tube_xs::wire::MsgType;

/// A tmpfs mounted for the test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir(at).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tubestored-test"])
            .arg(at)
            .output()
            .expect("run mount(8)");
        assert!(
            out.status.success(),
            "cannot mount a {size} tmpfs at {} (this test needs root, or run cargo test under \
             `unshare -Urm`): {}",
            at.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(at.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn spawn(sock: &Path, db: &Path) -> KilledOnDrop {
    KilledOnDrop(spawn_db_daemon(sock, db))
}

fn value(i: usize) -> String {
    format!("{i:04}-{}", "v".repeat(200))
}

/// Writes /k/<i>, every third one through a transaction; returns the answer.
fn commit(c: &mut Raw, i: usize) -> Result<(), String> {
    let path = format!("/k/{i}");
    if !i.is_multiple_of(3) {
        return c.write(&path, &value(i));
    }
    let tx: u32 = fields(&c.req(MsgType::TransactionStart, 0, b"\0")?)[0].parse().unwrap();
    c.req(MsgType::Write, tx, &wr(&path, &value(i)))?;
    c.req(MsgType::TransactionEnd, tx, b"T\0").map(|_| ())
}

/// Fills the file system of `path` up.
fn fill(path: &Path) {
    let mut f = std::fs::File::create(path).unwrap();
    let block = vec![0u8; 4096];
    while f.write_all(&block).is_ok() {}
}

#[test]
fn a_full_disk_refuses_commits_and_loses_none_that_were_answered_ok() {
    let dir = tempdir("diskfull");
    let mnt = Tmpfs::mount(&dir.join("mnt"), "64k");
    let (sock, db) = (dir.join("socket"), mnt.0.join("store.db"));
    let mut d = spawn(&sock, &db);
    let mut c = Raw::connect(&sock);
    let mut answers: Vec<(usize, Result<(), String>)> = Vec::new();
    for i in 0..20 {
        answers.push((i, commit(&mut c, i)));
    }
    assert!(answers.iter().all(|(_, r)| r.is_ok()), "{answers:?}");
    let filler = mnt.0.join("filler");
    fill(&filler);
    for i in 20..60 {
        let r = commit(&mut c, i);
        if r.is_err() {
            assert_eq!(c.read(&format!("/k/{i}")), Err("ENOENT".into()), "a refused commit is undone");
        }
        answers.push((i, r));
    }
    let refused = answers.iter().filter(|(_, r)| r.is_err()).count();
    assert!(refused > 0, "the disk was full, yet every commit was answered OK");
    for (i, r) in &answers {
        assert!(r.is_ok() || r == &Err("ENOSPC".into()), "commit {i}: {r:?}");
    }
    std::fs::remove_file(&filler).unwrap();
    for i in 60..80 {
        let r = commit(&mut c, i);
        assert_eq!(r, Ok(()), "commit {i} after space came back");
        answers.push((i, r));
    }
    // Killed right after the last reply: an OK means the frame was already on disk.
    d.0.kill().unwrap();
    d.0.wait().unwrap();
    drop(c);
    let _d = spawn(&sock, &db);
    let mut c = Raw::connect(&sock);
    for (i, r) in &answers {
        let now = c.read(&format!("/k/{i}"));
        match r {
            Ok(()) => assert_eq!(now, Ok(value(*i)), "commit {i} was answered OK and is lost"),
            Err(_) => assert_eq!(now, Err("ENOENT".into()), "commit {i} was refused yet survived"),
        }
    }
    let ok = answers.iter().filter(|(_, r)| r.is_ok()).count();
    eprintln!("disk full: {ok} commits answered OK, {refused} refused with ENOSPC; all OK ones survived kill -9");
    let log = std::fs::read_to_string(format!("{}.log", sock.display())).expect("log file next to the socket");
    assert!(log.contains("write failed"), "the failures are in the log: {log}");
}
