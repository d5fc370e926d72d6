//! Test helpers: an in-process daemon on a private socket and a minimal raw-protocol client.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tube_xs::wire::{Decoder, Message, MsgType};
use tubestored::{Options, Server, ServerHandle};

/// A private directory under the system temp dir, removed with everything in it when dropped
/// (also when the test panics), so a test run leaves nothing behind.
pub struct TmpDir(PathBuf);

impl std::ops::Deref for TmpDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for TmpDir {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TmpDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A fresh private directory (mode 0700) under the system temp dir.
pub fn tempdir(tag: &str) -> TmpDir {
    tempdir_in(&std::env::temp_dir(), tag)
}

/// A fresh private directory (mode 0700) under `base`.
pub fn tempdir_in(base: &Path, tag: &str) -> TmpDir {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let d = base.join(format!("tubestored-test-{}-{tag}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().mode(0o700).create(&d).unwrap();
    TmpDir(d)
}

/// An in-process daemon and the private directory of its socket: dropping it stops the
/// daemon, then removes the directory.
pub struct Daemon {
    handle: Option<ServerHandle>,
    _dir: Option<TmpDir>,
}

impl std::ops::Deref for Daemon {
    type Target = ServerHandle;
    fn deref(&self) -> &ServerHandle {
        self.handle.as_ref().expect("daemon running")
    }
}

impl Daemon {
    /// Stops the daemon (its directory stays until the value is dropped).
    pub fn shutdown(&mut self) -> std::io::Result<()> {
        self.handle.take().map_or(Ok(()), ServerHandle::shutdown)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

/// Starts a daemon in this process on a private socket.
pub fn start(tag: &str) -> Daemon {
    start_with(tag, Options::default())
}

/// Starts a daemon with `opts`; when no socket is given it gets a private directory, removed
/// with the daemon.
pub fn start_with(tag: &str, mut opts: Options) -> Daemon {
    let mut dir = None;
    if opts.socket.is_none() {
        let d = tempdir(tag);
        opts.socket = Some(d.join("socket"));
        dir = Some(d);
    }
    Daemon { handle: Some(Server::bind(opts).unwrap().spawn().unwrap()), _dir: dir }
}

/// The daemon binary on socket `sock` with database `db`, once it answers on the socket.
pub fn spawn_db_daemon(sock: &Path, db: &Path) -> std::process::Child {
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_tubestored"))
        .args(["--quiet", "--socket"])
        .arg(sock)
        .arg("--db")
        .arg(db)
        .stdin(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    while UnixStream::connect(sock).is_err() {
        assert!(t0.elapsed() < Duration::from_secs(10), "daemon did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    child
}

/// A daemon binary killed (SIGKILL) and reaped when dropped, also when the test panics.
pub struct KilledOnDrop(pub std::process::Child);

impl Drop for KilledOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A raw client: sends requests, reads replies and events, every read bounded by a timeout.
pub struct Raw {
    pub s: UnixStream,
    dec: Decoder,
    next_req: u32,
    /// Watch events received while waiting for replies.
    pub events: Vec<(String, String)>,
}

impl Raw {
    pub fn connect(p: &Path) -> Raw {
        let s = UnixStream::connect(p).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Raw { s, dec: Decoder::new(), next_req: 1, events: Vec::new() }
    }

    pub fn send(&mut self, ty: MsgType, tx: u32, payload: &[u8]) -> u32 {
        let id = self.next_req;
        self.next_req += 1;
        let mut out = Vec::new();
        Message::new(ty, id, tx, payload.to_vec()).encode(&mut out);
        self.s.write_all(&out).unwrap();
        id
    }

    /// The next message of any kind; None on EOF.
    pub fn recv(&mut self) -> Option<Message> {
        loop {
            if let Some(m) = self.dec.next().unwrap() {
                return Some(m);
            }
            let mut buf = [0u8; 8192];
            let n = self.s.read(&mut buf).expect("read timed out");
            if n == 0 {
                return None;
            }
            self.dec.push(&buf[..n]);
        }
    }

    /// The reply to request `id`, collecting events that come first.
    pub fn reply(&mut self, id: u32) -> Message {
        loop {
            let m = self.recv().expect("connection closed");
            if m.ty == MsgType::WatchEvent as u32 {
                let f = m.fields();
                self.events.push((s(f[0]), s(f[1])));
                continue;
            }
            assert_eq!(m.req_id, id, "replies come in request order");
            return m;
        }
    }

    /// Request + reply: Ok(payload) or Err(error name).
    pub fn req(&mut self, ty: MsgType, tx: u32, payload: &[u8]) -> Result<Vec<u8>, String> {
        let id = self.send(ty, tx, payload);
        let m = self.reply(id);
        if m.ty == MsgType::Error as u32 {
            Err(s(m.fields()[0]))
        } else {
            assert_eq!(m.ty, ty as u32);
            Ok(m.payload)
        }
    }

    pub fn write(&mut self, path: &str, v: &str) -> Result<(), String> {
        let mut p = path.as_bytes().to_vec();
        p.push(0);
        p.extend_from_slice(v.as_bytes());
        self.req(MsgType::Write, 0, &p).map(|_| ())
    }

    pub fn read(&mut self, path: &str) -> Result<String, String> {
        self.req(MsgType::Read, 0, &z(path)).map(|v| String::from_utf8(v).unwrap())
    }

    pub fn dir(&mut self, path: &str) -> Result<Vec<String>, String> {
        self.req(MsgType::Directory, 0, &z(path)).map(|v| fields(&v))
    }

    /// DIRECTORY inside transaction `tx`.
    pub fn dir_tx(&mut self, tx: u32, path: &str) -> Result<Vec<String>, String> {
        self.req(MsgType::Directory, tx, &z(path)).map(|v| fields(&v))
    }

    pub fn watch(&mut self, path: &str, token: &str) -> Result<(), String> {
        self.req(MsgType::Watch, 0, &zz(&[path, token])).map(|_| ())
    }

    /// The next watch event (already collected ones first).
    pub fn event(&mut self) -> (String, String) {
        if !self.events.is_empty() {
            return self.events.remove(0);
        }
        let m = self.recv().expect("connection closed");
        assert_eq!(m.ty, MsgType::WatchEvent as u32, "expected an event, got {m:?}");
        let f = m.fields();
        (s(f[0]), s(f[1]))
    }

    /// Binds this connection to a domain ("auto" or a number); returns the domid.
    pub fn introduce_self(&mut self, want: &str) -> Result<u32, String> {
        self.req(MsgType::Introduce, 0, &zz(&[want, "self"]))
            .map(|v| fields(&v)[0].parse().unwrap())
    }
}

pub fn s(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

pub fn z(a: &str) -> Vec<u8> {
    zz(&[a])
}

pub fn zz(a: &[&str]) -> Vec<u8> {
    let mut v = Vec::new();
    for x in a {
        v.extend_from_slice(x.as_bytes());
        v.push(0);
    }
    v
}

pub fn fields(v: &[u8]) -> Vec<String> {
    v.split(|b| *b == 0).filter(|f| !f.is_empty()).map(s).collect()
}

/// A WRITE payload: "<path>\0<value>" (the value has no terminator).
pub fn wr(path: &str, v: &str) -> Vec<u8> {
    let mut p = z(path);
    p.extend_from_slice(v.as_bytes());
    p
}
