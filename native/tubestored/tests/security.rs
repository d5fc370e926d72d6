//! The rendezvous on a shared host: the daemon refuses a socket directory someone else owns or
//! may write, never writes through a symlink planted for one of its files, and a node refuses a
//! daemon that runs as another uid. Tests that need a second uid (chown, setuid) run as root,
//! as the suite does, and fail saying so otherwise.

mod common;
use common::*;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tubestored::{BindError, Options, Server};

const OTHER_UID: u32 = 65534;

fn need_root() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "this test needs root (a second uid to act as another user)");
}

fn chown(p: &Path, uid: u32) {
    std::os::unix::fs::chown(p, Some(uid), Some(uid)).unwrap();
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn bind_err(sock: &Path) -> String {
    match Server::bind(Options { socket: Some(sock.to_owned()), ..Default::default() }) {
        Ok(_) => panic!("bound on {}", sock.display()),
        Err(BindError::Io(e)) => e.to_string(),
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn a_socket_directory_owned_by_another_uid_is_refused() {
    need_root();
    let dir = tempdir("sec-owner");
    let theirs = dir.join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    chmod(&theirs, 0o700);
    chown(&theirs, OTHER_UID);
    let e = bind_err(&theirs.join("socket"));
    assert!(e.contains(&theirs.display().to_string()) && e.contains("owned by uid 65534"), "{e}");
    assert!(!theirs.join("socket").exists());
}

#[test]
fn a_socket_directory_others_may_write_is_refused_and_nothing_is_written_in_it() {
    // The attack: another user creates the daemon's directory first, world-writable, with the
    // pidfile a symlink to a file of the victim's.
    let dir = tempdir("sec-mode");
    let open = dir.join("open");
    std::fs::create_dir(&open).unwrap();
    chmod(&open, 0o777);
    let victim = dir.join("victim");
    std::fs::write(&victim, "precious").unwrap();
    symlink(&victim, open.join("socket.pid")).unwrap();
    let e = bind_err(&open.join("socket"));
    assert!(e.contains("writable by others") && e.contains(&open.display().to_string()), "{e}");
    let out = Command::new(env!("CARGO_BIN_EXE_tubestored"))
        .args(["--daemon", "--socket"])
        .arg(open.join("socket"))
        .arg("--pidfile")
        .arg(open.join("socket.pid"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success(), "the daemon must not start there");
    assert!(String::from_utf8_lossy(&out.stderr).contains("writable by others"), "{out:?}");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    assert!(!open.join("socket").exists() && !open.join("socket.lock").exists());
}

#[test]
fn a_symlinked_directory_is_refused() {
    let dir = tempdir("sec-link");
    let real = dir.join("real");
    std::fs::create_dir(&real).unwrap();
    chmod(&real, 0o700);
    symlink(&real, dir.join("link")).unwrap();
    let e = bind_err(&dir.join("link").join("socket"));
    assert!(e.contains("is a symlink"), "{e}");
}

#[test]
fn a_pidfile_symlink_is_replaced_never_written_through() {
    let dir = tempdir("sec-pid");
    let sock = dir.join("run").join("socket");
    let pid = dir.join("pid");
    let victim = dir.join("victim");
    std::fs::write(&victim, "precious").unwrap();
    symlink(&victim, &pid).unwrap();
    let st = Command::new("timeout")
        .arg("20")
        .arg(env!("CARGO_BIN_EXE_tubestored"))
        .args(["--daemon", "--quiet", "--socket"])
        .arg(&sock)
        .arg("--pidfile")
        .arg(&pid)
        .status()
        .unwrap();
    assert!(st.success());
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    let md = std::fs::symlink_metadata(&pid).unwrap();
    assert!(md.file_type().is_file(), "the pidfile is a fresh regular file");
    assert_eq!(md.mode() & 0o777, 0o600);
    let n: i32 = std::fs::read_to_string(&pid).unwrap().trim().parse().unwrap();
    let mut c = Raw::connect(&sock);
    c.write("/served", "1").unwrap(); // accepted: its end is an EOF, not a reset
    // SAFETY: plain kill(2) on the daemon this test started.
    unsafe { libc::kill(n, libc::SIGTERM) };
    assert!(c.recv().is_none(), "daemon stopped");
    let t0 = Instant::now();
    while pid.exists() {
        assert!(t0.elapsed() < Duration::from_secs(20), "pidfile not removed");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn symlinks_for_the_lock_and_log_files_are_refused() {
    let dir = tempdir("sec-files");
    let victim = dir.join("victim");
    std::fs::write(&victim, "precious").unwrap();
    let run = dir.join("run");
    std::fs::create_dir(&run).unwrap();
    chmod(&run, 0o700);
    symlink(&victim, run.join("socket.lock")).unwrap();
    let e = bind_err(&run.join("socket"));
    assert!(e.contains("socket.lock is a symlink"), "{e}");
    std::fs::remove_file(run.join("socket.lock")).unwrap();
    symlink(&victim, run.join("socket.log")).unwrap();
    let e = bind_err(&run.join("socket"));
    assert!(e.contains("socket.log is a symlink"), "{e}");
    assert!(!run.join("socket").exists(), "the socket is removed again when the daemon cannot start");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
}

#[test]
fn a_node_refuses_a_daemon_running_as_another_uid() {
    need_root();
    // Under /tmp itself: the other uid must be able to reach its socket, and $TMPDIR may be
    // private to this uid.
    let dir = tempdir_in(Path::new("/tmp"), "sec-peer");
    chmod(&dir, 0o711);
    let theirs = dir.join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    chmod(&theirs, 0o755);
    chown(&theirs, OTHER_UID);
    let sock = theirs.join("socket");
    let mut child = Command::new(env!("CARGO_BIN_EXE_tubestored"))
        .args(["--quiet", "--socket"])
        .arg(&sock)
        .uid(OTHER_UID)
        .gid(OTHER_UID)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while std::os::unix::net::UnixStream::connect(&sock).is_err() {
        if let Some(st) = child.try_wait().unwrap() {
            panic!("the other uid's daemon exited: {st:?}");
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "the other uid's daemon did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    let r = tube_xs::client::Client::connect(&sock);
    let _ = child.kill();
    let _ = child.wait();
    let e = match r {
        Ok(_) => panic!("connected to another uid's daemon"),
        Err(tube_xs::client::Error::Io(e)) => e,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied);
    let msg = e.to_string();
    assert!(msg.contains(&sock.display().to_string()) && msg.contains("uid 65534"), "{msg}");
    // Our own daemon is trusted.
    let h = start("sec-peer-own");
    tube_xs::client::Client::connect(h.path()).expect("own daemon");
    assert!(tube_xs::client::trusted_daemon_uid(0, 1000), "root's daemon is trusted");
    assert!(!tube_xs::client::trusted_daemon_uid(1001, 1000));
}
