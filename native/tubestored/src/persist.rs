//! Persistence: a journal of committed changes plus periodic snapshots.
//!
//! Files: `<db>` holds the last snapshot, `<db>.journal` the changes since, and
//! `<db>.journal.<n>` older journals whose snapshot is still being written (or failed to be).
//! All are sequences of frames `[len: u32 LE][crc32: u32 LE][payload]`; the snapshot starts
//! with [`SNAP_MAGIC`]. A payload is a list of records: `1 path value perms` (node now holds
//! this value and these permissions; missing parents are created) or `2 path` (subtree
//! removed), with u16/u32 LE length prefixes. One frame = one committed request or transaction.
//!
//! Durability: a frame is written to the journal (`write(2)`, under the state lock) before the
//! commit's reply is queued, and the reply is held back until a writer thread has fsynced it
//! (one fsync per batch of whatever was written meanwhile). A write that fails (disk full) is
//! cut off again (`ftruncate` to the last whole frame), the change is undone in memory and the
//! request is answered ENOSPC or EIO, so no half frame ever hides later ones. A failed fsync
//! answers EIO to the commits it covered and marks the journal broken: no change is accepted
//! until a full snapshot could be written. Failures go to the log next to the socket.
//!
//! Snapshots: after [`SNAPSHOT_EVERY_BYTES`] of journal, the tree is encoded under the state
//! lock, the journal is renamed `<db>.journal.<n>` and a new one started; the writer thread
//! writes the snapshot to `<db>.tmp`, fsyncs it, renames it over `<db>` and only then removes
//! the old journals. Load replays the snapshot, the old journals in order, then the journal;
//! replaying an old journal over a newer snapshot is harmless (records hold whole node
//! states, applied in order). Load never deletes a frame it can read: unreadable bytes in the
//! middle are skipped (and logged), only an unreadable tail is cut off.

use crate::crc::crc32;
use crate::files;
use crate::log::Log;
use crate::store::{child_path, dom0_perms, Node, Store};
use parking_lot::{Condvar, Mutex};
use std::collections::VecDeque;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use tube_xs::perms::PermList;
use tube_xs::wire::XsError;

/// First bytes of a snapshot file.
pub const SNAP_MAGIC: &[u8; 16] = b"tubestored-snap1";
const PUT: u8 = 1;
const DEL: u8 = 2;
/// Journal bytes after which the tree is folded into a snapshot.
pub const SNAPSHOT_EVERY_BYTES: usize = 8 << 20;
/// fsync failures remembered for commits still waiting on them.
const FAILURES_KEPT: usize = 64;

/// What the writer thread does besides fsyncing the journal.
struct SnapshotJob {
    bytes: Vec<u8>,
    /// The journal renamed away at the snapshot: fsynced before the new journal's frames count.
    old: Arc<File>,
    /// Old journals `<db>.journal.<n>` with n <= this are folded into the snapshot.
    upto: u64,
}

struct WState {
    /// Frames written to the journal file so far.
    written: u64,
    /// Frames known durable (or failed: see `failures`).
    synced: u64,
    /// Ranges of frames whose fsync failed.
    failures: VecDeque<(u64, u64)>,
    current: Arc<File>,
    job: Option<SnapshotJob>,
    snapshot_in_flight: bool,
    broken: bool,
    stop: bool,
}

struct Shared {
    m: Mutex<WState>,
    work: Condvar,
    done: Condvar,
    /// Tests make the next fsync fail, as a disk that lost written data reports it.
    #[cfg(test)]
    fail_fsync: std::sync::atomic::AtomicBool,
}

/// Waits for frames to be durable (connection threads hold one each).
#[derive(Clone)]
pub struct Durable(Arc<Shared>);

impl Durable {
    /// Blocks until frame `seq` is on disk: Ok, or EIO when its fsync failed.
    pub fn wait(&self, seq: u64) -> Result<(), XsError> {
        let mut w = self.0.m.lock();
        while w.synced < seq && !w.stop {
            self.0.done.wait(&mut w);
        }
        if w.synced < seq || w.failures.iter().any(|(lo, hi)| (*lo..=*hi).contains(&seq)) {
            return Err(XsError::Eio);
        }
        Ok(())
    }
}

/// The request-side handle of the journal (lives in the daemon state, used under its lock).
pub struct Journal {
    db: PathBuf,
    file: Arc<File>,
    len: u64,
    seq: u64,
    since_snapshot: usize,
    next_old: u64,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    log: Log,
    history: Option<crate::history::History>,
}

fn journal_path(db: &Path) -> PathBuf {
    let mut s = db.as_os_str().to_owned();
    s.push(".journal");
    PathBuf::from(s)
}

fn old_journal_path(db: &Path, n: u64) -> PathBuf {
    let mut s = journal_path(db).into_os_string();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

fn tmp_path(db: &Path) -> PathBuf {
    let mut s = db.as_os_str().to_owned();
    s.push(".tmp");
    PathBuf::from(s)
}

/// The numbers of the old journals `<db>.journal.<n>` present, ascending.
fn old_journals(db: &Path) -> io::Result<Vec<u64>> {
    let jname = journal_path(db);
    let prefix = format!("{}.", jname.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned()));
    let dir = match db.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let mut v = Vec::new();
    for e in fs::read_dir(dir)? {
        let name = e?.file_name().to_string_lossy().into_owned();
        if let Some(n) = name.strip_prefix(&prefix).and_then(|r| r.parse::<u64>().ok()) {
            v.push(n);
        }
    }
    v.sort_unstable();
    Ok(v)
}

/// A loaded database whose journal writer has not started yet (so the daemon can fork first).
pub struct Loaded {
    db: PathBuf,
    jfile: File,
    len: u64,
    next_old: u64,
    size: usize,
}

/// Loads `<db>`, replays the old journals and `<db>.journal`. Unreadable bytes followed by
/// readable frames are skipped and logged; an unreadable tail of `<db>.journal` is cut off.
pub fn load(db: &Path) -> io::Result<(Store, Loaded)> {
    load_logged(db, &Log::stderr_only(true))
}

/// [`load`], reporting damage to `log`.
pub fn load_logged(db: &Path, log: &Log) -> io::Result<(Store, Loaded)> {
    let mut store = Store::new();
    match files::open_read(db) {
        Ok(mut f) => {
            let mut bytes = Vec::new();
            f.read_to_end(&mut bytes)?;
            let body = bytes.strip_prefix(&SNAP_MAGIC[..]).ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidData, format!("{}: not a tubestored snapshot", db.display()))
            })?;
            replay_logged(&mut store, body, db, log);
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let olds = old_journals(db)?;
    for n in &olds {
        let p = old_journal_path(db, *n);
        let mut bytes = Vec::new();
        files::open_read(&p)?.read_to_end(&mut bytes)?;
        replay_logged(&mut store, &bytes, &p, log);
    }
    let jpath = journal_path(db);
    let mut jfile = files::open_append(&jpath)?;
    let mut jbytes = Vec::new();
    jfile.read_to_end(&mut jbytes)?;
    let readable = replay_logged(&mut store, &jbytes, &jpath, log);
    if readable < jbytes.len() {
        log.line(&format!(
            "{}: cutting off {} unreadable bytes at its end (a write cut short)",
            jpath.display(),
            jbytes.len() - readable
        ));
        jfile.set_len(readable as u64)?;
        jfile.sync_data()?;
    }
    let next_old = olds.last().map_or(1, |n| n + 1);
    Ok((store, Loaded { db: db.to_owned(), jfile, len: readable as u64, next_old, size: readable }))
}

/// Replays `bytes`, logging skipped damage; returns the end of the last readable frame.
fn replay_logged(store: &mut Store, bytes: &[u8], file: &Path, log: &Log) -> usize {
    let r = replay_all(store, bytes);
    for (off, len) in &r.skipped {
        log.line(&format!(
            "{}: {len} unreadable bytes at offset {off} skipped; the frames after them were applied",
            file.display()
        ));
    }
    r.end
}

impl Loaded {
    /// Starts the writer thread. With `history_bytes` > 0, every commit is also kept in
    /// `<db>.history` (see [`crate::history`]); `store` is the loaded tree, the history's base
    /// when it starts anew.
    pub fn start(self, log: Log, store: &Store, history_bytes: u64) -> io::Result<Journal> {
        let Loaded { db, jfile, len, next_old, size } = self;
        let file = Arc::new(jfile);
        let shared = Arc::new(Shared {
            m: Mutex::new(WState {
                written: 0,
                synced: 0,
                failures: VecDeque::new(),
                current: file.clone(),
                job: None,
                snapshot_in_flight: false,
                broken: false,
                stop: false,
            }),
            work: Condvar::new(),
            done: Condvar::new(),
            #[cfg(test)]
            fail_fsync: std::sync::atomic::AtomicBool::new(false),
        });
        let (sh, wdb, wlog) = (shared.clone(), db.clone(), log.clone());
        let thread = std::thread::Builder::new()
            .name("tubestored-journal".into())
            .spawn(move || writer(&wdb, &sh, &wlog))?;
        let history = match history_bytes {
            0 => None,
            max => Some(crate::history::History::open(&db, max, store, log.clone())?),
        };
        Ok(Journal { db, file, len, seq: 0, since_snapshot: size, next_old, shared, thread: Some(thread), log, history })
    }
}

impl Journal {
    /// Writes the current state of `touched` paths as one frame. Ok(seq): wait for
    /// [`Durable::wait`]`(seq)` before answering. Err: nothing of the frame is left in the file;
    /// the caller undoes the change (or, when it cannot, the journal is broken until a full
    /// snapshot is written).
    pub fn append(&mut self, store: &Store, touched: &[String], meta: &Meta) -> Result<u64, XsError> {
        if self.shared.m.lock().broken {
            self.recover(store)?;
        }
        let mut payload = Vec::new();
        encode_meta(&mut payload, meta);
        for p in touched {
            encode_path(&mut payload, store, p);
        }
        let frame = frame(&payload);
        if let Err(e) = (&*self.file).write_all(&frame) {
            let err = xs_error_of(&e);
            self.log.line(&format!("journal {}: write failed: {e}; change refused", journal_path(&self.db).display()));
            if let Err(e2) = self.file.set_len(self.len) {
                self.log.line(&format!("journal: cannot cut off the partial frame: {e2}; refusing changes until a snapshot is written"));
                self.shared.m.lock().broken = true;
            }
            return Err(err);
        }
        self.len += frame.len() as u64;
        self.seq += 1;
        self.since_snapshot += frame.len();
        if let Some(h) = &mut self.history {
            h.append(&frame, store, meta.time_ns);
        }
        {
            let mut w = self.shared.m.lock();
            w.written = self.seq;
            self.shared.work.notify_one();
        }
        if self.since_snapshot >= SNAPSHOT_EVERY_BYTES {
            self.rotate(store);
        }
        Ok(self.seq)
    }

    /// Starts a snapshot now, whatever the journal's size (tests; the daemon snapshots by size).
    pub fn snapshot_now(&mut self, store: &Store) {
        self.rotate(store);
    }

    /// Marks the journal broken after a change that could not be journaled nor undone: the
    /// next change first writes a full snapshot.
    pub fn mark_broken(&self) {
        self.shared.m.lock().broken = true;
    }

    /// A handle to wait for durability with.
    pub fn durable(&self) -> Durable {
        Durable(self.shared.clone())
    }

    /// Starts a snapshot: renames the journal away, opens a new one, hands the tree's image to
    /// the writer. Skipped while the previous snapshot is still being written.
    fn rotate(&mut self, store: &Store) {
        if self.shared.m.lock().snapshot_in_flight {
            return;
        }
        let n = self.next_old;
        let (jp, op) = (journal_path(&self.db), old_journal_path(&self.db, n));
        if let Err(e) = fs::rename(&jp, &op) {
            self.log.line(&format!("snapshot: cannot rename {}: {e}", jp.display()));
            return;
        }
        let new = match files::create_fresh(&jp).and_then(|_| files::open_append(&jp)) {
            Ok(f) => Arc::new(f),
            Err(e) => {
                self.log.line(&format!("snapshot: cannot start a new journal: {e}"));
                let _ = fs::rename(&op, &jp);
                return;
            }
        };
        self.next_old += 1;
        let old = std::mem::replace(&mut self.file, new.clone());
        self.len = 0;
        self.since_snapshot = 0;
        let mut w = self.shared.m.lock();
        w.current = new;
        w.snapshot_in_flight = true;
        w.job = Some(SnapshotJob { bytes: encode_snapshot(store), old, upto: n });
        self.shared.work.notify_one();
    }

    /// After a failed fsync or cut: writes the whole tree as the snapshot, synchronously, and
    /// empties the journals. Until that works every change is refused.
    fn recover(&mut self, store: &Store) -> Result<(), XsError> {
        if self.shared.m.lock().snapshot_in_flight {
            return Err(XsError::Eio);
        }
        let r = write_snapshot_file(&self.db, &encode_snapshot(store)).and_then(|()| {
            self.file.set_len(0)?;
            self.file.sync_all()?;
            for n in old_journals(&self.db)? {
                fs::remove_file(old_journal_path(&self.db, n))?;
            }
            Ok(())
        });
        match r {
            Ok(()) => {
                self.len = 0;
                self.since_snapshot = 0;
                self.shared.m.lock().broken = false;
                self.log.line("journal recovered: full snapshot written, changes accepted again");
                Ok(())
            }
            Err(e) => {
                self.log.line(&format!("journal still broken: snapshot failed: {e}; change refused"));
                Err(xs_error_of(&e))
            }
        }
    }

    /// Waits until everything written so far is durable and no snapshot is being written.
    pub fn sync(&self) {
        let _ = self.durable().wait(self.seq);
        let mut w = self.shared.m.lock();
        while w.snapshot_in_flight && !w.stop {
            self.shared.done.wait(&mut w);
        }
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        self.sync();
        self.shared.m.lock().stop = true;
        self.shared.work.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn xs_error_of(e: &io::Error) -> XsError {
    match e.raw_os_error() {
        Some(libc::ENOSPC | libc::EDQUOT | libc::EFBIG) => XsError::Enospc,
        _ => XsError::Eio,
    }
}

/// The writer thread: fsyncs what was written (one fsync per batch), publishes durability,
/// then writes a pending snapshot.
fn writer(db: &Path, sh: &Shared, log: &Log) {
    loop {
        let (target, current, job) = {
            let mut w = sh.m.lock();
            while w.written == w.synced && w.job.is_none() && !w.stop {
                sh.work.wait(&mut w);
            }
            if w.stop && w.written == w.synced && w.job.is_none() {
                return;
            }
            (w.written, w.current.clone(), w.job.take())
        };
        // The old journal and the directory (its rename, the new journal's creation) must be
        // durable before frames in the new journal count.
        let mut r = Ok(());
        if let Some(j) = &job {
            r = j.old.sync_data().and_then(|()| files::sync_dir_of(db));
        }
        let r = r.and_then(|()| current.sync_data());
        #[cfg(test)]
        let r = r.and_then(|()| {
            if sh.fail_fsync.swap(false, std::sync::atomic::Ordering::SeqCst) {
                Err(io::Error::from_raw_os_error(libc::EIO))
            } else {
                Ok(())
            }
        });
        {
            let mut w = sh.m.lock();
            if let Err(e) = &r {
                log.line(&format!("journal fsync failed: {e}; commits {}..={target} answered EIO", w.synced + 1));
                let lo = w.synced + 1;
                w.failures.push_back((lo, target));
                if w.failures.len() > FAILURES_KEPT {
                    w.failures.pop_front();
                }
                w.broken = true;
            }
            w.synced = target;
            sh.done.notify_all();
        }
        if let Some(j) = job {
            match write_snapshot_file(db, &j.bytes) {
                Ok(()) => {
                    for n in old_journals(db).unwrap_or_default().into_iter().filter(|n| *n <= j.upto) {
                        if let Err(e) = fs::remove_file(old_journal_path(db, n)) {
                            log.line(&format!("cannot remove old journal {n}: {e}"));
                        }
                    }
                }
                Err(e) => log.line(&format!("snapshot failed: {e}; the old journal is kept and replayed at load")),
            }
            sh.m.lock().snapshot_in_flight = false;
            sh.done.notify_all();
        }
    }
}

/// Writes `snap` to `<db>.tmp` (fresh, O_EXCL), fsyncs, renames it over `<db>`, fsyncs the dir.
fn write_snapshot_file(db: &Path, snap: &[u8]) -> io::Result<()> {
    let tmp = tmp_path(db);
    let r = (|| {
        let mut f = files::create_fresh(&tmp)?;
        f.write_all(snap)?;
        f.sync_all()?;
        fs::rename(&tmp, db)?;
        files::sync_dir_of(db)
    })();
    if r.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    r
}

/// `payload` framed: length, checksum, payload.
pub fn frame(payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(payload.len() + 8);
    f.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    f.extend_from_slice(&crc32(payload).to_le_bytes());
    f.extend_from_slice(payload);
    f
}

/// The record of `path` as `store` has it now (PUT, or DEL when absent).
pub fn encode_path(out: &mut Vec<u8>, store: &Store, path: &str) {
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

/// Every path, depth-first, each parent before its children and children in their
/// directory order, so that replaying them in this order rebuilds the same child lists.
pub fn tree_order(store: &Store) -> Vec<String> {
    let mut out = Vec::with_capacity(store.len());
    let mut stack = vec!["/".to_owned()];
    while let Some(p) = stack.pop() {
        if let Some(n) = store.get(&p) {
            stack.extend(n.children.iter().rev().map(|c| child_path(&p, c)));
            out.push(p);
        }
    }
    out
}

/// The whole tree as a snapshot file image.
pub fn encode_snapshot(store: &Store) -> Vec<u8> {
    let mut out = SNAP_MAGIC.to_vec();
    let mut payload = Vec::new();
    for p in tree_order(store) {
        encode_path(&mut payload, store, &p);
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

/// Applies whole frames from `bytes`; returns the length of the valid prefix (replay stops at
/// the first unreadable frame).
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

/// What [`replay_all`] found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Replayed {
    /// End of the last readable frame.
    pub end: usize,
    /// Unreadable stretches followed by readable frames: (offset, length).
    pub skipped: Vec<(usize, usize)>,
    /// Frames applied.
    pub frames: usize,
}

/// Applies every readable frame of `bytes`: at an unreadable one, looks for the next offset
/// where a whole frame with a good checksum and well-formed records starts, and goes on
/// from there.
pub fn replay_all(store: &mut Store, bytes: &[u8]) -> Replayed {
    let mut r = Replayed::default();
    let mut off = 0;
    while off < bytes.len() {
        if let Some(len) = apply_frame_at(store, bytes, off) {
            off += len;
            r.end = off;
            r.frames += 1;
            continue;
        }
        let Some(next) = (off + 1..bytes.len()).find(|o| frame_ok(bytes, *o)) else { break };
        r.skipped.push((off, next - off));
        off = next;
    }
    r
}

fn frame_ok(bytes: &[u8], off: usize) -> bool {
    next_frame(bytes, off).is_some_and(|p| parses(&mut Cursor(p)))
}

fn apply_frame_at(store: &mut Store, bytes: &[u8], off: usize) -> Option<usize> {
    let payload = next_frame(bytes, off)?;
    apply_payload(store, &mut Cursor(payload)).then_some(8 + payload.len())
}

/// The payload of the whole, checksummed frame at `off`, if there is one.
pub fn next_frame(bytes: &[u8], off: usize) -> Option<&[u8]> {
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

/// One record of a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rec {
    /// The node now holds this value and these permissions.
    Put(String, Vec<u8>, PermList),
    /// The subtree is gone.
    Del(String),
    /// Who made the commit, and when (first record of a frame; replay ignores it).
    Meta(Meta),
    /// A history segment's base: the whole tree at this time follows (replay ignores the tag).
    Base(u64),
}

/// When a commit was made and by which domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    /// Nanoseconds since the epoch.
    pub time_ns: u64,
    /// The domain whose request (or whose end) it was; 0 for dom0.
    pub domid: u32,
    /// Why the change was made.
    pub cause: Cause,
}

/// Why a commit was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// A request of the domain.
    Request = 0,
    /// The domain was released (its connection closed, or dom0's RELEASE): its nodes went.
    Released = 1,
    /// The domain introduced itself: its /local/domain node was made.
    Introduced = 2,
}

impl Meta {
    /// Now, for `domid`, because of `cause`.
    pub fn now(domid: u32, cause: Cause) -> Meta {
        Meta { time_ns: crate::time::now_ns(), domid, cause }
    }
}

const META: u8 = 3;
const BASE: u8 = 4;

fn encode_meta(out: &mut Vec<u8>, m: &Meta) {
    out.push(META);
    out.extend_from_slice(&m.time_ns.to_le_bytes());
    out.extend_from_slice(&m.domid.to_le_bytes());
    out.push(m.cause as u8);
}

/// A base record: the tree at `time_ns` follows.
pub(crate) fn encode_base(out: &mut Vec<u8>, time_ns: u64) {
    out.push(BASE);
    out.extend_from_slice(&time_ns.to_le_bytes());
}

/// Every record of a payload, or None if any is malformed.
pub fn parse_payload(payload: &[u8]) -> Option<Vec<Rec>> {
    let mut c = Cursor(payload);
    let mut v = Vec::new();
    while !c.0.is_empty() {
        v.push(parse_record(&mut c)?);
    }
    Some(v)
}

fn parse_record(c: &mut Cursor<'_>) -> Option<Rec> {
    let tag = c.u8()?;
    match tag {
        META => {
            let time_ns = u64::from_le_bytes(c.take(8)?.try_into().ok()?);
            let domid = c.u32()? as u32;
            let cause = match c.u8()? {
                0 => Cause::Request,
                1 => Cause::Released,
                2 => Cause::Introduced,
                _ => return None,
            };
            return Some(Rec::Meta(Meta { time_ns, domid, cause }));
        }
        BASE => return Some(Rec::Base(u64::from_le_bytes(c.take(8)?.try_into().ok()?))),
        _ => {}
    }
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

fn parses(c: &mut Cursor<'_>) -> bool {
    while !c.0.is_empty() {
        if parse_record(c).is_none() {
            return false;
        }
    }
    true
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
        apply_rec(store, r);
    }
    true
}

/// Applies one record to `store`.
pub fn apply_rec(store: &mut Store, r: Rec) {
    match r {
        Rec::Put(p, v, perms) => apply_put(store, &p, v, perms),
        Rec::Del(p) => apply_del(store, &p),
        Rec::Meta(_) | Rec::Base(_) => {}
    }
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
        let seq = j.append(s, &touched, &Meta::now(0, Cause::Request)).unwrap();
        j.durable().wait(seq).unwrap();
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
        let mut j = l.start(Log::stderr_only(true), &Store::new(), 0).unwrap();
        write(&mut j, &mut s, "/a/b", b"1");
        write(&mut j, &mut s, "/a/c", b"2");
        j.snapshot_now(&s);
        write(&mut j, &mut s, "/a/b", b"3");
        let mut t = Direct { store: &mut s, touched: Vec::new() };
        ops::rm(&mut t, Caller::DOM0, "/a/c", &mut Vec::new()).unwrap();
        let touched = t.touched;
        j.append(&s, &touched, &Meta::now(0, Cause::Request)).unwrap();
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
        let mut j = l.start(Log::stderr_only(true), &Store::new(), 0).unwrap();
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

    #[test]
    fn unreadable_bytes_in_the_middle_are_skipped_and_later_frames_kept() {
        let dir = tmp("middle");
        let db = dir.db();
        let (mut s, l) = load(&db).unwrap();
        let mut j = l.start(Log::stderr_only(true), &Store::new(), 0).unwrap();
        write(&mut j, &mut s, "/first", b"1");
        drop(j);
        let jp = journal_path(&db);
        // Damage (a torn frame header and garbage), then a good frame after it.
        let mut f = fs::OpenOptions::new().append(true).open(&jp).unwrap();
        f.write_all(&[200, 0, 0, 0, 9, 9, 9, 9, b'x']).unwrap();
        let mut later = Vec::new();
        let mut scratch = Store::new();
        let mut t = Direct { store: &mut scratch, touched: Vec::new() };
        ops::write(&mut t, Caller::DOM0, &Quotas::default(), "/later", b"2", &mut Vec::new()).unwrap();
        let touched = t.touched;
        for p in &touched {
            encode_path(&mut later, &scratch, p);
        }
        f.write_all(&frame(&later)).unwrap();
        drop(f);
        let len = fs::metadata(&jp).unwrap().len();
        let logf = dir.0.join("log");
        let log = Log::open(&logf, true).unwrap();
        let (again, _) = load_logged(&db, &log).unwrap();
        assert_eq!(again.get("/first").unwrap().value, b"1");
        assert_eq!(again.get("/later").unwrap().value, b"2", "the frame after the damage was applied");
        assert_eq!(fs::metadata(&jp).unwrap().len(), len, "no readable frame deleted");
        let logged = fs::read_to_string(&logf).unwrap();
        assert!(logged.contains("9 unreadable bytes at offset"), "{logged}");
    }

    #[test]
    fn a_failed_fsync_answers_eio_and_no_change_is_taken_until_a_full_snapshot_is_written() {
        let dir = tmp("fsync");
        let db = dir.db();
        let (mut s, l) = load(&db).unwrap();
        let logf = dir.0.join("log");
        let mut j = l.start(Log::open(&logf, true).unwrap(), &Store::new(), 0).unwrap();
        write(&mut j, &mut s, "/before", b"1");
        j.shared.fail_fsync.store(true, std::sync::atomic::Ordering::SeqCst);
        let mut t = Direct { store: &mut s, touched: Vec::new() };
        ops::write(&mut t, Caller::DOM0, &Quotas::default(), "/lost", b"2", &mut Vec::new()).unwrap();
        let touched = t.touched;
        let seq = j.append(&s, &touched, &Meta::now(0, Cause::Request)).unwrap();
        assert_eq!(j.durable().wait(seq), Err(XsError::Eio), "the commit the failed fsync covered");
        assert!(j.shared.m.lock().broken);
        // The next change first writes the whole tree (the EIO'd change included, as it stays
        // in memory), then goes on.
        write(&mut j, &mut s, "/after", b"3");
        assert!(!j.shared.m.lock().broken);
        drop(j);
        let (again, _) = load(&db).unwrap();
        for (p, v) in [("/before", b"1"), ("/lost", b"2"), ("/after", b"3")] {
            assert_eq!(again.get(p).unwrap().value, v, "{p}");
        }
        let logged = fs::read_to_string(&logf).unwrap();
        assert!(logged.contains("journal fsync failed") && logged.contains("journal recovered"), "{logged}");
    }

    #[test]
    fn a_snapshot_in_flight_keeps_the_old_journal_until_written() {
        let dir = tmp("rotate");
        let db = dir.db();
        let (mut s, l) = load(&db).unwrap();
        let mut j = l.start(Log::stderr_only(true), &Store::new(), 0).unwrap();
        write(&mut j, &mut s, "/a", b"1");
        j.snapshot_now(&s);
        write(&mut j, &mut s, "/b", b"2");
        j.sync();
        assert!(old_journals(&db).unwrap().is_empty(), "old journal removed once the snapshot is durable");
        assert!(db.exists());
        drop(j);
        // A crash between the rename and the snapshot: both journals replay in order.
        let (mut s2, l) = load(&db).unwrap();
        let mut j = l.start(Log::stderr_only(true), &Store::new(), 0).unwrap();
        write(&mut j, &mut s2, "/a", b"3");
        drop(j);
        fs::rename(journal_path(&db), old_journal_path(&db, 7)).unwrap();
        let (again, _) = load(&db).unwrap();
        assert_eq!(again.get("/a").unwrap().value, b"3");
        assert_eq!(again.get("/b").unwrap().value, b"2");
    }
}
