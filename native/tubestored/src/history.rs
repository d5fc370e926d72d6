//! The network looked back on: with `--db`, every commit is also appended to `<db>.history`,
//! framed as in the journal, with the time it was made and the domain that made it. The
//! history is bounded: once the file passes its size bound it becomes `<db>.history.old`
//! (replacing the previous one) and a new file starts with a base frame holding the whole
//! tree, so between one and two bounds of the most recent changes are kept. History is
//! written with the journal but not fsynced per commit (a kill -9 loses nothing, a power cut
//! may lose its last moments; the journal is what recovery relies on).
//!
//! Read back by `tubestored history` (every change, oldest first, with time, domain and
//! what changed) and `tubestored dump --at TIME` (the tree as it was then, in `xenstore-ls`
//! format).

use crate::files;
use crate::log::Log;
use crate::persist::{self, Cause, Meta, Rec};
use crate::store::{child_path, Store};
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

/// `<db>.history`.
pub fn history_path(db: &Path) -> PathBuf {
    let mut s = db.as_os_str().to_owned();
    s.push(".history");
    PathBuf::from(s)
}

fn old_path(db: &Path) -> PathBuf {
    let mut s = history_path(db).into_os_string();
    s.push(".old");
    PathBuf::from(s)
}

/// The writing side, owned by the journal.
pub struct History {
    db: PathBuf,
    file: File,
    len: u64,
    max: u64,
    log: Log,
}

impl History {
    /// Opens (or starts, with a base of `store`) the history of `db`, bounded to about `max`
    /// bytes per file. An unreadable tail (a write cut short) is cut off.
    pub fn open(db: &Path, max: u64, store: &Store, log: Log) -> io::Result<History> {
        let path = history_path(db);
        let mut file = files::open_append(&path)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let mut end = 0;
        while let Some(p) = persist::next_frame(&bytes, end) {
            end += 8 + p.len();
        }
        if end < bytes.len() {
            log.line(&format!("{}: cutting off {} unreadable bytes at its end", path.display(), bytes.len() - end));
            file.set_len(end as u64)?;
        }
        let mut h = History { db: db.to_owned(), file, len: end as u64, max: max.max(1), log };
        if h.len == 0 {
            h.write_base(store, crate::time::now_ns());
        }
        Ok(h)
    }

    /// Appends one commit's frame (the journal's); past the bound, starts a new file whose
    /// base is `store` (which already holds this commit).
    pub fn append(&mut self, frame: &[u8], store: &Store, time_ns: u64) {
        self.write(frame);
        if self.len >= self.max {
            self.rotate(store, time_ns);
        }
    }

    fn write(&mut self, frame: &[u8]) {
        match (&self.file).write_all(frame) {
            Ok(()) => self.len += frame.len() as u64,
            Err(e) => {
                self.log.line(&format!("history {}: write failed: {e}; this change is missing from it", history_path(&self.db).display()));
                let _ = self.file.set_len(self.len);
            }
        }
    }

    fn write_base(&mut self, store: &Store, time_ns: u64) {
        let mut payload = Vec::new();
        persist::encode_base(&mut payload, time_ns);
        for p in persist::tree_order(store) {
            persist::encode_path(&mut payload, store, &p);
        }
        self.write(&persist::frame(&payload));
    }

    fn rotate(&mut self, store: &Store, time_ns: u64) {
        let (cur, old) = (history_path(&self.db), old_path(&self.db));
        let r = self.file.sync_data().and_then(|()| std::fs::rename(&cur, &old)).and_then(|()| {
            files::create_fresh(&cur)?;
            files::open_append(&cur)
        });
        match r {
            Ok(f) => {
                self.file = f;
                self.len = 0;
                self.write_base(store, time_ns);
            }
            Err(e) => self.log.line(&format!("history: cannot start a new file: {e}; going on in the old one")),
        }
    }
}

/// One frame of the history.
#[derive(Debug)]
pub struct Frame {
    /// Set for a base frame: the time of the tree that follows.
    pub base: Option<u64>,
    /// Who made the commit and when (commit frames).
    pub meta: Option<Meta>,
    /// The records.
    pub recs: Vec<Rec>,
}

impl Frame {
    /// When the frame's state came to be.
    pub fn time(&self) -> u64 {
        self.base.or(self.meta.map(|m| m.time_ns)).unwrap_or(0)
    }
}

/// Every readable frame of `<db>.history.old` then `<db>.history`, oldest first.
pub fn read(db: &Path) -> io::Result<Vec<Frame>> {
    let mut frames = Vec::new();
    let mut found = false;
    for path in [old_path(db), history_path(db)] {
        let mut bytes = Vec::new();
        match files::open_read(&path) {
            Ok(mut f) => f.read_to_end(&mut bytes)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        found = true;
        let mut off = 0;
        while let Some(p) = persist::next_frame(&bytes, off) {
            off += 8 + p.len();
            let Some(mut recs) = persist::parse_payload(p) else { continue };
            let mut fr = Frame { base: None, meta: None, recs: Vec::new() };
            match recs.first() {
                Some(Rec::Base(t)) => fr.base = Some(*t),
                Some(Rec::Meta(m)) => fr.meta = Some(*m),
                _ => {}
            }
            if fr.base.is_some() || fr.meta.is_some() {
                recs.remove(0);
            }
            fr.recs = recs;
            frames.push(fr);
        }
    }
    if !found {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no history at {} (the daemon keeps one with --db)", history_path(db).display()),
        ));
    }
    Ok(frames)
}

fn under(path: &str, filter: &str) -> bool {
    tube_xs::path::is_ancestor_or_self(filter, path)
}

/// What a record changes in `store`, as a history line (None: only a child list changed).
fn describe(store: &Store, r: &Rec) -> Option<(String, String)> {
    match r {
        Rec::Put(p, v, perms) => {
            let shown = format!("\"{}\"", sanitise(v));
            match store.get(p) {
                None => Some((p.clone(), format!("+ {p} = {shown} ({})", perm_text(perms)))),
                Some(n) if n.value != *v => Some((p.clone(), format!("= {p} = {shown}"))),
                Some(n) if n.perms != *perms => Some((p.clone(), format!("perms {p} ({})", perm_text(perms)))),
                Some(_) => None,
            }
        }
        Rec::Del(p) => store.get(p).map(|_| (p.clone(), format!("- {p}"))),
        Rec::Meta(_) | Rec::Base(_) => None,
    }
}

fn perm_text(p: &tube_xs::perms::PermList) -> String {
    p.0.iter().map(|e| format!("{}{}", e.access.letter(), e.domid)).collect::<Vec<_>>().join(",")
}

fn who(m: &Meta) -> String {
    match m.cause {
        Cause::Request => format!("dom{}", m.domid),
        Cause::Released => format!("dom{} released", m.domid),
        Cause::Introduced => format!("dom{} introduced", m.domid),
    }
}

/// Prints every change at or below `filter` made at or after `since`, oldest first, one per
/// line: `TIME domN[ released|introduced] (+|=|-|perms) PATH[ = "VALUE"][ (PERMS)]`.
pub fn print_history(db: &Path, since: Option<u64>, filter: &str, out: &mut impl Write) -> io::Result<()> {
    let mut store = Store::new();
    for f in read(db)? {
        if f.base.is_some() {
            store = Store::new();
            for r in f.recs {
                persist::apply_rec(&mut store, r);
            }
            continue;
        }
        let Some(meta) = f.meta else { continue };
        for r in f.recs {
            let line = describe(&store, &r);
            persist::apply_rec(&mut store, r);
            if let Some((path, text)) = line {
                if since.is_none_or(|s| meta.time_ns >= s) && under(&path, filter) {
                    writeln!(out, "{} {} {text}", crate::time::format_utc(meta.time_ns), who(&meta))?;
                }
            }
        }
    }
    Ok(())
}

/// The tree as it was at `at` (the last commit at or before it), from the history.
pub fn tree_at(db: &Path, at: u64) -> io::Result<Store> {
    let frames = read(db)?;
    let oldest = frames.iter().find(|f| f.base.is_some()).map(Frame::time);
    let mut store: Option<Store> = None;
    for f in frames {
        if f.time() > at {
            break;
        }
        if f.base.is_some() {
            store = Some(Store::new());
        }
        if let Some(s) = &mut store {
            for r in f.recs {
                persist::apply_rec(s, r);
            }
        }
    }
    store.ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            match oldest {
                Some(t) => format!(
                    "{} is before the oldest history kept ({})",
                    crate::time::format_utc(at),
                    crate::time::format_utc(t)
                ),
                None => "the history holds no base".to_owned(),
            },
        )
    })
}

/// Prints the tree below `path` as it was at `at`, as `xenstore-ls path` prints a live one.
pub fn print_dump(db: &Path, at: u64, path: &str, out: &mut impl Write) -> io::Result<()> {
    let store = tree_at(db, at)?;
    if store.get(path).is_none() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("{path} did not exist at {}", crate::time::format_utc(at)),
        ));
    }
    print_ls(&store, path, 0, out)
}

/// `xenstore-ls` (non-tty) lines are at most this wide.
const MAX_WIDTH: usize = 80;
/// Room xenstore-ls keeps for ` = "` ... `\..."`.
const TAG_LEN: usize = 8;

/// The children of `path`, depth-first, as xenstore-ls prints them: indent by depth, name,
/// ` = "value"`, cut to 80 columns with `\...` as xenstore-ls does when not on a terminal.
pub fn print_ls(store: &Store, path: &str, depth: usize, out: &mut impl Write) -> io::Result<()> {
    let Some(node) = store.get(path) else { return Ok(()) };
    for name in &node.children {
        let full = child_path(path, name);
        let Some(child) = store.get(&full) else { continue };
        let room = MAX_WIDTH.saturating_sub(TAG_LEN + depth);
        let shown_name: String = name.chars().take(room).collect();
        let linewid = depth + shown_name.len();
        let value = sanitise(&child.value);
        write!(out, "{:depth$}{shown_name}", "")?;
        if MAX_WIDTH < linewid + child.value.len() + TAG_LEN {
            let keep = MAX_WIDTH.saturating_sub(TAG_LEN + linewid).min(value.len());
            writeln!(out, " = \"{}\\...\"", &value[..keep])?;
        } else {
            writeln!(out, " = \"{value}\"")?;
        }
        print_ls(store, &full, depth + 1, out)?;
    }
    Ok(())
}

/// A value as xenstore-ls shows it: printable ASCII as is, `\\`, `\t`, `\n`, `\r`, and
/// three-digit octal escapes for every other byte.
pub fn sanitise(v: &[u8]) -> String {
    let mut s = String::with_capacity(v.len());
    for &c in v {
        match c {
            b'\\' => s.push_str("\\\\"),
            b' '..=b'~' => s.push(c as char),
            b'\t' => s.push_str("\\t"),
            b'\n' => s.push_str("\\n"),
            b'\r' => s.push_str("\\r"),
            _ => s.push_str(&format!("\\{c:03o}")),
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::{self, Caller, Quotas};
    use crate::store::Direct;

    #[test]
    fn the_history_stays_within_two_bounds_and_still_dumps_the_latest_tree() {
        let dir = std::env::temp_dir().join(format!("tubestored-history-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let db = dir.join("db");
        let (mut s, l) = persist::load(&db).unwrap();
        let max = 4096;
        let mut j = l.start(Log::stderr_only(true), &s, max).unwrap();
        let mut first_time = None;
        for i in 0..300 {
            let mut t = Direct { store: &mut s, touched: Vec::new() };
            ops::write(&mut t, Caller::DOM0, &Quotas::default(), &format!("/h/{}", i % 20), format!("{i}").as_bytes(), &mut Vec::new()).unwrap();
            let touched = t.touched;
            let m = Meta::now(3, Cause::Request);
            first_time.get_or_insert(m.time_ns);
            j.append(&s, &touched, &m).unwrap();
        }
        drop(j);
        let (cur, old) = (std::fs::metadata(history_path(&db)).unwrap().len(), std::fs::metadata(old_path(&db)).unwrap().len());
        assert!(cur < 2 * max && old < 2 * max, "bounded: {cur} + {old}");
        let now = tree_at(&db, crate::time::now_ns()).unwrap();
        assert_eq!(now.get("/h/19").unwrap().value, b"299");
        assert_eq!(now.get("/h/0").unwrap().value, b"280");
        let err = tree_at(&db, first_time.unwrap()).unwrap_err();
        assert!(err.to_string().contains("before the oldest history kept"), "{err}");
        let mut out = Vec::new();
        print_history(&db, None, "/h/19", &mut out).unwrap();
        let out = String::from_utf8(out).unwrap();
        assert!(out.lines().last().unwrap().ends_with("dom3 = /h/19 = \"299\""), "{out}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn values_are_shown_as_xenstore_ls_shows_them() {
        assert_eq!(sanitise(b"a\\b\t\n\r\x01\xc3\"x"), "a\\\\b\\t\\n\\r\\001\\303\"x");
    }
}
