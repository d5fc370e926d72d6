//! Persistence: a journal of committed changes plus periodic snapshots.
//!
//! Files: `<db>` holds the last snapshot, `<db>.journal` the changes since. Both are a
//! sequence of frames `[len: u32 LE][crc32: u32 LE][payload]`; the snapshot starts with
//! [`SNAP_MAGIC`]. A payload is a list of records: `1 path value perms` (node now holds this
//! value and these permissions; missing parents are created) or `2 path` (subtree removed),
//! with u16/u32 LE length prefixes. One frame = one committed request or transaction, so a
//! torn frame (crash mid-write) drops that commit whole.
//!
//! The request path only encodes a frame and hands it to a channel; a writer thread appends
//! it and fsyncs once per batch of whatever has queued meanwhile. A snapshot is encoded under
//! the state lock (a copy of the tree) and written by the same thread to `<db>.tmp`, fsynced,
//! renamed over `<db>`; the journal is truncated after that. Replaying an old journal over a
//! newer snapshot is harmless: records hold whole node states, applied in order.

use crate::crc::crc32;
use crate::store::{child_path, dom0_perms, Node, Store};
use crossbeam_channel::{Receiver, Sender};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use tube_xs::perms::PermList;

/// First bytes of a snapshot file.
pub const SNAP_MAGIC: &[u8; 16] = b"tubestored-snap1";
const PUT: u8 = 1;
const DEL: u8 = 2;
const SNAPSHOT_EVERY_BYTES: usize = 8 << 20;

enum Cmd {
    Frame(Vec<u8>),
    Snapshot(Vec<u8>),
    Sync(Sender<()>),
}

/// The request-side handle of the journal writer thread.
pub struct Journal {
    tx: Option<Sender<Cmd>>,
    since_snapshot: usize,
    thread: Option<JoinHandle<()>>,
}

fn journal_path(db: &Path) -> PathBuf {
    let mut s = db.as_os_str().to_owned();
    s.push(".journal");
    PathBuf::from(s)
}

fn tmp_path(db: &Path) -> PathBuf {
    let mut s = db.as_os_str().to_owned();
    s.push(".tmp");
    PathBuf::from(s)
}

/// A loaded database whose journal writer has not started yet (so the daemon can fork first).
pub struct Loaded {
    db: PathBuf,
    jfile: File,
    size: usize,
}

/// Loads `<db>` and replays `<db>.journal`, cutting off a torn tail.
pub fn load(db: &Path) -> io::Result<(Store, Loaded)> {
    let mut store = Store::new();
    match fs::read(db) {
        Ok(bytes) => {
            let body = bytes.strip_prefix(&SNAP_MAGIC[..]).ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidData, format!("{}: not a tubestored snapshot", db.display()))
            })?;
            replay(&mut store, body);
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let jpath = journal_path(db);
    let mut jfile = OpenOptions::new().read(true).append(true).create(true).open(&jpath)?;
    let mut jbytes = Vec::new();
    jfile.read_to_end(&mut jbytes)?;
    let good = replay(&mut store, &jbytes);
    if good < jbytes.len() {
        jfile.set_len(good as u64)?;
        jfile.sync_data()?;
    }
    Ok((store, Loaded { db: db.to_owned(), jfile, size: good }))
}

impl Loaded {
    /// Starts the writer thread.
    pub fn start(self) -> io::Result<Journal> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let Loaded { db, jfile, size } = self;
        let thread = std::thread::Builder::new()
            .name("tubestored-journal".into())
            .spawn(move || writer(&db, jfile, &rx))?;
        Ok(Journal { tx: Some(tx), since_snapshot: size, thread: Some(thread) })
    }
}

impl Journal {
    /// Queues the current state of `touched` paths as one frame.
    pub fn record(&mut self, store: &Store, touched: &[String]) {
        let mut payload = Vec::new();
        for p in touched {
            encode_path(&mut payload, store, p);
        }
        let frame = frame(&payload);
        self.since_snapshot += frame.len();
        self.send(Cmd::Frame(frame));
    }

    /// True when the journal has grown enough to be folded into a snapshot.
    pub fn wants_snapshot(&self) -> bool {
        self.since_snapshot >= SNAPSHOT_EVERY_BYTES
    }

    /// Queues a snapshot of `store`.
    pub fn snapshot(&mut self, store: &Store) {
        self.since_snapshot = 0;
        self.send(Cmd::Snapshot(encode_snapshot(store)));
    }

    /// Waits until everything queued so far is on disk.
    pub fn sync(&self) {
        let (ack, done) = crossbeam_channel::bounded(1);
        if let Some(tx) = &self.tx {
            if tx.send(Cmd::Sync(ack)).is_ok() {
                let _ = done.recv();
            }
        }
    }

    fn send(&self, c: Cmd) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(c);
        }
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn writer(db: &Path, mut jfile: File, rx: &Receiver<Cmd>) {
    while let Ok(first) = rx.recv() {
        let mut acks = Vec::new();
        let mut cmd = Some(first);
        while let Some(c) = cmd {
            match c {
                Cmd::Frame(f) => {
                    if let Err(e) = jfile.write_all(&f) {
                        eprintln!("tubestored: journal write failed: {e}");
                    }
                }
                Cmd::Snapshot(s) => {
                    if let Err(e) = write_snapshot(db, &s, &jfile) {
                        eprintln!("tubestored: snapshot failed: {e}");
                    }
                }
                Cmd::Sync(a) => acks.push(a),
            }
            cmd = rx.try_recv().ok();
        }
        if let Err(e) = jfile.sync_data() {
            eprintln!("tubestored: journal fsync failed: {e}");
        }
        for a in acks {
            let _ = a.send(());
        }
    }
}

fn write_snapshot(db: &Path, snap: &[u8], jfile: &File) -> io::Result<()> {
    // The journal so far must be durable before it may be dropped.
    jfile.sync_data()?;
    let tmp = tmp_path(db);
    let mut f = File::create(&tmp)?;
    f.write_all(snap)?;
    f.sync_all()?;
    fs::rename(&tmp, db)?;
    if let Some(dir) = db.parent().filter(|d| !d.as_os_str().is_empty()) {
        File::open(dir)?.sync_all()?;
    }
    jfile.set_len(0)?;
    jfile.sync_all()
}

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(payload.len() + 8);
    f.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    f.extend_from_slice(&crc32(payload).to_le_bytes());
    f.extend_from_slice(payload);
    f
}

fn encode_path(out: &mut Vec<u8>, store: &Store, path: &str) {
    match store.get(path) {
        Some(n) => {
            out.push(PUT);
            put_bytes16(out, path.as_bytes());
            out.extend_from_slice(&(n.value.len() as u32).to_le_bytes());
            out.extend_from_slice(&n.value);
            put_bytes16(out, &n.perms.to_wire());
        }
        None => {
            out.push(DEL);
            put_bytes16(out, path.as_bytes());
        }
    }
}

fn put_bytes16(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u16).to_le_bytes());
    out.extend_from_slice(b);
}

/// The whole tree as a snapshot file image.
pub fn encode_snapshot(store: &Store) -> Vec<u8> {
    let mut out = SNAP_MAGIC.to_vec();
    let mut payload = Vec::new();
    for p in store.sorted_paths() {
        encode_path(&mut payload, store, p);
        if payload.len() > 1 << 16 {
            out.extend_from_slice(&frame(&payload));
            payload.clear();
        }
    }
    if !payload.is_empty() {
        out.extend_from_slice(&frame(&payload));
    }
    out
}

/// Applies whole frames from `bytes`; returns the length of the valid prefix.
pub fn replay(store: &mut Store, bytes: &[u8]) -> usize {
    let mut off = 0;
    while let Some(payload) = next_frame(bytes, off) {
        if !apply_payload(store, &mut Cursor(payload)) {
            break;
        }
        off += 8 + payload.len();
    }
    off
}

fn next_frame(bytes: &[u8], off: usize) -> Option<&[u8]> {
    let hdr = bytes.get(off..off + 8)?;
    let len = u32::from_le_bytes(hdr[..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(hdr[4..].try_into().ok()?);
    let payload = bytes.get(off + 8..off.checked_add(8)?.checked_add(len)?)?;
    (crc32(payload) == crc).then_some(payload)
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (a, b) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<usize> {
        self.take(2).map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
    }
    fn u32(&mut self) -> Option<usize> {
        self.take(4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }
}

enum Rec {
    Put(String, Vec<u8>, PermList),
    Del(String),
}

fn parse_record(c: &mut Cursor<'_>) -> Option<Rec> {
    let tag = c.u8()?;
    let n = c.u16()?;
    let path = std::str::from_utf8(c.take(n)?).ok()?.to_owned();
    if !path.starts_with('/') {
        return None;
    }
    match tag {
        PUT => {
            let n = c.u32()?;
            let value = c.take(n)?.to_vec();
            let n = c.u16()?;
            let pw = c.take(n)?;
            let fields: Vec<&[u8]> = pw.split(|b| *b == 0).filter(|f| !f.is_empty()).collect();
            let perms = PermList::parse(&fields).ok()?;
            Some(Rec::Put(path, value, perms))
        }
        DEL => Some(Rec::Del(path)),
        _ => None,
    }
}

/// Parses the whole payload first so a bad record leaves the store untouched.
fn apply_payload(store: &mut Store, c: &mut Cursor<'_>) -> bool {
    let mut recs = Vec::new();
    while !c.0.is_empty() {
        match parse_record(c) {
            Some(r) => recs.push(r),
            None => return false,
        }
    }
    for r in recs {
        match r {
            Rec::Put(p, v, perms) => apply_put(store, &p, v, perms),
            Rec::Del(p) => apply_del(store, &p),
        }
    }
    true
}

fn apply_put(store: &mut Store, path: &str, value: Vec<u8>, perms: PermList) {
    ensure_linked(store, path);
    let mut n = store.get(path).cloned().unwrap_or_else(|| Node::empty(perms.clone()));
    n.value = value;
    n.perms = perms;
    store.put(path, n);
}

/// Makes sure `path` and its ancestors exist and are listed by their parents.
fn ensure_linked(store: &mut Store, path: &str) {
    let Some(parent) = tube_xs::path::parent(path) else { return };
    if store.get(parent).is_none() {
        ensure_linked(store, parent);
        store.put(parent, Node::empty(dom0_perms()));
    }
    let leaf = &path[path.rfind('/').map_or(0, |i| i + 1)..];
    if let Some(p) = store.get(parent) {
        if !p.children.iter().any(|c| c == leaf) {
            let mut p = p.clone();
            p.children.push(leaf.to_owned());
            store.put(parent, p);
        }
    }
    if store.get(path).is_none() {
        store.put(path, Node::empty(dom0_perms()));
    }
}

fn apply_del(store: &mut Store, path: &str) {
    if path == "/" {
        return;
    }
    let mut stack = vec![path.to_owned()];
    while let Some(p) = stack.pop() {
        if let Some(n) = store.del(&p) {
            stack.extend(n.children.iter().map(|c| child_path(&p, c)));
        }
    }
    if let Some(parent) = tube_xs::path::parent(path) {
        let leaf = &path[path.rfind('/').map_or(0, |i| i + 1)..];
        if let Some(p) = store.get(parent) {
            if p.children.iter().any(|c| c == leaf) {
                let mut p = p.clone();
                p.children.retain(|c| c != leaf);
                store.put(parent, p);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::{self, Caller, Quotas};
    use crate::store::Direct;

    /// A private directory, removed when dropped.
    struct Tmp(PathBuf);

    impl Drop for Tmp {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    impl Tmp {
        fn db(&self) -> PathBuf {
            self.0.join("db")
        }
    }

    fn tmp(tag: &str) -> Tmp {
        let d = std::env::temp_dir().join(format!("tubestored-persist-{}-{tag}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        Tmp(d)
    }

    fn write(j: &mut Journal, s: &mut Store, path: &str, v: &[u8]) {
        let mut t = Direct { store: s, touched: Vec::new() };
        ops::write(&mut t, Caller::DOM0, &Quotas::default(), path, v, &mut Vec::new()).unwrap();
        let touched = t.touched;
        j.record(s, &touched);
    }

    fn same_tree(a: &Store, b: &Store) {
        assert_eq!(a.sorted_paths(), b.sorted_paths());
        for p in a.sorted_paths() {
            let (x, y) = (a.get(p).unwrap(), b.get(p).unwrap());
            assert_eq!((&x.value, &x.perms, &x.children), (&y.value, &y.perms, &y.children), "{p}");
        }
        b.check_invariants().unwrap();
    }

    #[test]
    fn snapshot_then_journal_replays_to_the_same_tree() {
        let dir = tmp("snap");
        let db = dir.db();
        let (mut s, l) = load(&db).unwrap();
        let mut j = l.start().unwrap();
        write(&mut j, &mut s, "/a/b", b"1");
        write(&mut j, &mut s, "/a/c", b"2");
        j.snapshot(&s);
        write(&mut j, &mut s, "/a/b", b"3");
        let mut t = Direct { store: &mut s, touched: Vec::new() };
        ops::rm(&mut t, Caller::DOM0, "/a/c", &mut Vec::new()).unwrap();
        let touched = t.touched;
        j.record(&s, &touched);
        j.sync();
        drop(j);
        let (again, _) = load(&db).unwrap();
        same_tree(&s, &again);
        assert_eq!(again.get("/a/b").unwrap().value, b"3");
    }

    #[test]
    fn corrupt_frame_stops_replay_and_is_cut_off() {
        let dir = tmp("corrupt");
        let db = dir.db();
        let (mut s, l) = load(&db).unwrap();
        let mut j = l.start().unwrap();
        write(&mut j, &mut s, "/x", b"good");
        j.sync();
        drop(j);
        let jp = journal_path(&db);
        let good_len = fs::metadata(&jp).unwrap().len();
        let mut bad = frame(b"\x01\x02\x00/y\x00\x00\x00\x00\x02\x00n0");
        let last = bad.len() - 1;
        bad[last] ^= 0xff; // checksum no longer matches
        fs::OpenOptions::new().append(true).open(&jp).unwrap().write_all(&bad).unwrap();
        let (again, _) = load(&db).unwrap();
        assert_eq!(again.get("/x").unwrap().value, b"good");
        assert!(again.get("/y").is_none());
        assert_eq!(fs::metadata(&jp).unwrap().len(), good_len, "torn tail cut off");
    }
}
