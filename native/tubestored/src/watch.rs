//! Registered watches and the matching of changes against them.

use crate::ops::{Caller, Change};
use tube_xs::path::is_ancestor_or_self;

/// Identifies a connection inside the daemon.
pub type ConnId = u64;

/// One registered watch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Watch {
    /// Owning connection.
    pub conn: ConnId,
    /// Absolute path or special "@..." name watched.
    pub path: String,
    /// The client's token, echoed in events.
    pub token: String,
    /// Bytes to strip from event paths when the watch was given as a relative path.
    pub strip: usize,
}

/// A watch event due for one connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fired {
    /// Receiving connection.
    pub conn: ConnId,
    /// Event path as the watcher sees it.
    pub path: String,
    /// The watch's token.
    pub token: String,
}

/// All watches of all connections, in registration order.
#[derive(Debug, Default)]
pub struct Watches {
    list: Vec<Watch>,
}

impl Watches {
    /// Adds a watch; EEXIST-worthy duplicates are the caller's check.
    pub fn add(&mut self, w: Watch) {
        self.list.push(w);
    }

    /// True if `conn` already has this (path, token).
    pub fn has(&self, conn: ConnId, path: &str, token: &str) -> bool {
        self.list.iter().any(|w| w.conn == conn && w.path == path && w.token == token)
    }

    /// Removes one watch; false if there was none.
    pub fn remove(&mut self, conn: ConnId, path: &str, token: &str) -> bool {
        let before = self.list.len();
        self.list.retain(|w| !(w.conn == conn && w.path == path && w.token == token));
        self.list.len() != before
    }

    /// Removes every watch of `conn`.
    pub fn remove_conn(&mut self, conn: ConnId) {
        self.list.retain(|w| w.conn != conn);
    }

    /// Number of watches in all.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// True when no watch is set.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Number of watches of `conn`.
    pub fn count(&self, conn: ConnId) -> usize {
        self.list.iter().filter(|w| w.conn == conn).count()
    }

    /// Events for a special path ("@introduceDomain", "@releaseDomain"): to every watcher
    /// that `may_see` (the special node's permissions, as in Xen).
    pub fn fire_special(&self, name: &str, may_see: impl Fn(ConnId) -> bool, out: &mut Vec<Fired>) {
        for w in self.list.iter().filter(|w| w.path == name && may_see(w.conn)) {
            out.push(Fired { conn: w.conn, path: name.to_owned(), token: w.token.clone() });
        }
    }

    /// Events for one change; `caller_of` says who a connection is (None: gone). A removal
    /// first fires, for each node removed below its top (children first), the watches set
    /// exactly on that node; then the top fires the watches on it and on its ancestors.
    pub fn fire(&self, ch: &Change, caller_of: impl Fn(ConnId) -> Option<Caller>, out: &mut Vec<Fired>) {
        for r in ch.removed.iter().flatten() {
            for w in self.list.iter().filter(|w| w.path == r.path) {
                let Some(c) = caller_of(w.conn) else { continue };
                if r.perms.iter().any(|p| c.can_read(p)) {
                    out.push(self.event(w, &r.path));
                }
            }
        }
        for w in &self.list {
            if w.path.starts_with('@') || !is_ancestor_or_self(&w.path, &ch.path) {
                continue;
            }
            let Some(c) = caller_of(w.conn) else { continue };
            if ch.perms.iter().any(|p| c.can_read(p)) {
                out.push(self.event(w, &ch.path));
            }
        }
    }

    /// The event of `w` for `path`, relative if the watch was.
    fn event(&self, w: &Watch, path: &str) -> Fired {
        let shown = path.get(w.strip..).unwrap_or(path);
        Fired { conn: w.conn, path: shown.to_owned(), token: w.token.clone() }
    }
}
