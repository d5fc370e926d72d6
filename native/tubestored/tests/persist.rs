//! Persistence: the binary is killed with SIGKILL and restarted on the same database.

mod common;
use common::*;
use std::io::Write;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};
use tube_xs::wire::MsgType;

fn spawn_daemon(sock: &Path, db: &Path) -> Child {
    spawn_db_daemon(sock, db)
}

#[test]
fn survives_kill_9_and_ignores_torn_tail() {
    let dir = tempdir("persist");
    let sock = dir.join("socket");
    let db = dir.join("store.db");
    let mut d = spawn_daemon(&sock, &db);
    let mut c = Raw::connect(&sock);
    for i in 0..200 {
        c.write(&format!("/keep/{i}"), &format!("value {i}")).unwrap();
    }
    c.req(MsgType::SetPerms, 0, &zz(&["/keep/7", "r3", "b4"])).unwrap();
    c.req(MsgType::Rm, 0, &z("/keep/5")).unwrap();
    let tx: u32 = fields(&c.req(MsgType::TransactionStart, 0, b"\0").unwrap())[0].parse().unwrap();
    c.req(MsgType::Write, tx, &wr("/keep/tx", "committed")).unwrap();
    c.req(MsgType::TransactionEnd, tx, b"T\0").unwrap();
    c.write("/keep/last", "L").unwrap();
    // Killed right after the reply: an OK means the commit is on disk.
    d.kill().unwrap(); // SIGKILL
    d.wait().unwrap();
    drop(c);

    // A crash mid-append leaves a partial frame: it must be ignored.
    let mut j = std::fs::OpenOptions::new().append(true).open(format!("{}.journal", db.display())).unwrap();
    j.write_all(&[200, 0, 0, 0, 1, 2, 3, 4, b'x', b'y']).unwrap();
    drop(j);

    let mut d = spawn_daemon(&sock, &db);
    let mut c = Raw::connect(&sock);
    assert_eq!(c.read("/keep/0").unwrap(), "value 0");
    assert_eq!(c.read("/keep/199").unwrap(), "value 199");
    assert_eq!(c.read("/keep/5"), Err("ENOENT".into()));
    assert_eq!(c.read("/keep/tx").unwrap(), "committed");
    assert_eq!(fields(&c.req(MsgType::GetPerms, 0, &z("/keep/7")).unwrap()), vec!["r3", "b4"]);
    assert_eq!(c.dir("/keep").unwrap().len(), 201);
    c.write("/after/restart", "ok").unwrap();
    // SIGTERM: clean exit, socket removed.
    // SAFETY: plain kill(2) on our own child's pid.
    unsafe { libc::kill(d.id() as i32, libc::SIGTERM) };
    let st = d.wait().unwrap();
    assert!(st.success(), "{st:?}");
    assert!(!sock.exists(), "socket removed on SIGTERM");

    let mut d = spawn_daemon(&sock, &db);
    let mut c = Raw::connect(&sock);
    assert_eq!(c.read("/after/restart").unwrap(), "ok");
    assert_eq!(c.read("/keep/3").unwrap(), "value 3");
    d.kill().unwrap();
    d.wait().unwrap();
}

#[test]
fn domain_nodes_stay_after_restart_until_reregistered() {
    let dir = tempdir("persist-dom");
    let sock = dir.join("socket");
    let db = dir.join("store.db");
    let mut d = spawn_daemon(&sock, &db);
    let mut g = Raw::connect(&sock);
    assert_eq!(g.introduce_self("4").unwrap(), 4);
    g.write("data/state", "4").unwrap();
    d.kill().unwrap();
    d.wait().unwrap();
    drop(g);
    let mut d = spawn_daemon(&sock, &db);
    let mut c = Raw::connect(&sock);
    assert_eq!(c.read("/local/domain/4/data/state").unwrap(), "4");
    assert_eq!(fields(&c.req(MsgType::IsDomainIntroduced, 0, &z("4")).unwrap()), vec!["F"]);
    let mut g = Raw::connect(&sock);
    assert_eq!(g.introduce_self("4").unwrap(), 4);
    assert_eq!(g.read("data/state").unwrap(), "4");
    drop(g);
    // Released on disconnect: its nodes go.
    let t0 = Instant::now();
    while c.read("/local/domain/4/data/state").is_ok() {
        assert!(t0.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(10));
    }
    d.kill().unwrap();
    d.wait().unwrap();
}

#[test]
fn daemon_flag_returns_when_ready_and_second_start_is_harmless() {
    let dir = tempdir("daemon");
    let sock = dir.join("sub").join("socket");
    let pid = dir.join("pid");
    let st = Command::new("timeout")
        .arg("10")
        .arg(env!("CARGO_BIN_EXE_tubestored"))
        .args(["--daemon", "--quiet", "--socket"])
        .arg(&sock)
        .arg("--pidfile")
        .arg(&pid)
        .status()
        .unwrap();
    assert!(st.success());
    // Connectable at once, no polling.
    let mut c = Raw::connect(&sock);
    c.write("/x", "1").unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(std::fs::metadata(sock.parent().unwrap()).unwrap().permissions().mode() & 0o777, 0o700);
    let out = Command::new("timeout")
        .arg("10")
        .arg(env!("CARGO_BIN_EXE_tubestored"))
        .args(["--socket"])
        .arg(&sock)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already running"));
    assert_eq!(c.read("/x").unwrap(), "1", "the first daemon still serves");
    let pid: i32 = std::fs::read_to_string(&pid).unwrap().trim().parse().unwrap();
    // SAFETY: plain kill(2) on the daemon we started.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    assert!(c.recv().is_none(), "connection closed on SIGTERM");
    let t0 = Instant::now();
    while sock.exists() {
        assert!(t0.elapsed() < Duration::from_secs(10), "socket not removed");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Leaves a socket file nobody can ever connect to: bound, never listening, closed. (A listener
/// bound and dropped here would do the same only when no other test forks meanwhile: a child
/// between fork and exec holds a copy of the listening fd, a connect then succeeds, and the
/// daemon rightly reports "already running".)
fn dead_socket_file(path: &Path) {
    use std::os::unix::ffi::OsStrExt;
    // SAFETY: socket(2) with constant arguments; the fd is closed below.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
    // SAFETY: sockaddr_un is plain data; zeroed is a valid (empty) address.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    assert!(bytes.len() < addr.sun_path.len());
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: `addr` is a valid sockaddr_un of `len` bytes; `fd` is the socket made above.
    let r = unsafe { libc::bind(fd, (&addr as *const libc::sockaddr_un).cast(), len) };
    let err = std::io::Error::last_os_error();
    // SAFETY: `fd` is ours and closed once.
    unsafe { libc::close(fd) };
    assert_eq!(r, 0, "bind: {err}");
}

#[test]
fn stale_socket_is_replaced() {
    let dir = tempdir("stale");
    let sock = dir.join("socket");
    dead_socket_file(&sock);
    assert!(std::os::unix::net::UnixStream::connect(&sock).is_err(), "nobody answers on it");
    let h = start_with("stale", tubestored::Options { socket: Some(sock.clone()), ..Default::default() });
    Raw::connect(h.path()).write("/ok", "1").unwrap();
}

#[test]
fn sigterm_stops_the_daemon_even_when_its_socket_path_was_taken_over() {
    let dir = tempdir("term-replaced");
    let sock = dir.join("socket");
    let mut old = spawn_daemon(&sock, &dir.join("db-old"));
    // The path now belongs to a newer daemon (as after a restart by another node).
    std::fs::remove_file(&sock).unwrap();
    let mut new = spawn_daemon(&sock, &dir.join("db-new"));
    // SAFETY: plain kill(2) on our own child's pid.
    unsafe { libc::kill(old.id() as i32, libc::SIGTERM) };
    let t0 = Instant::now();
    let st = loop {
        if let Some(st) = old.try_wait().unwrap() {
            break st;
        }
        if t0.elapsed() > Duration::from_secs(10) {
            old.kill().unwrap();
            new.kill().unwrap();
            panic!("the old daemon ignored SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(st.success(), "{st:?}");
    // The newer daemon's socket was left alone and it still answers.
    Raw::connect(&sock).write("/still", "here").unwrap();
    new.kill().unwrap();
    new.wait().unwrap();
}
