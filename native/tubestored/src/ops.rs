//! The node operations (READ, WRITE, MKDIR, RM, DIRECTORY, GET/SET_PERMS), written once over
//! [`Tree`] so they run the same on the live store and inside a transaction.

use crate::store::{child_path, Node, Tree};
use tube_xs::perms::{Access, PermList};
use tube_xs::wire::XsError;

/// Who is asking.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The connection's domain (0 for privileged socket connections).
    pub domid: u32,
    /// Privileged connections (dom0) pass every permission check and quota.
    pub privileged: bool,
    /// The domain this one acts for (SET_TARGET: a device model for its guest): it has that
    /// domain's rights on top of its own, as in Xen.
    pub target: Option<u32>,
}

impl Caller {
    /// A privileged (dom0) caller.
    pub const DOM0: Caller = Caller { domid: 0, privileged: true, target: None };

    /// An unprivileged caller acting as `domid`.
    pub fn domain(domid: u32) -> Caller {
        Caller { domid, privileged: false, target: None }
    }

    fn is(&self, domid: u32) -> bool {
        domid == self.domid || Some(domid) == self.target
    }

    /// Xen's rule: everything for the owner (or its target's owner), else the first entry
    /// naming this domain or its target, else the default of entry 0.
    fn access(&self, perms: &PermList) -> Access {
        let Some((first, rest)) = perms.0.split_first() else { return Access::None };
        if self.is(first.domid) {
            return Access::Both;
        }
        rest.iter().find(|p| self.is(p.domid)).map_or(first.access, |p| p.access)
    }

    /// May this caller read a node with `perms`?
    pub fn can_read(&self, perms: &PermList) -> bool {
        self.privileged || self.access(perms).can_read()
    }
    /// May this caller write a node with `perms`?
    pub fn can_write(&self, perms: &PermList) -> bool {
        self.privileged || self.access(perms).can_write()
    }
    /// Does this caller own a node with `perms` (itself or through its target)?
    pub fn owns(&self, perms: &PermList) -> bool {
        self.privileged || perms.0.first().is_some_and(|p| self.is(p.domid))
    }
}

/// Per-domain limits, applied to unprivileged connections only (as Xen does).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quotas {
    /// Nodes a domain may own (Xen: 1000).
    pub max_nodes: usize,
    /// Largest value in bytes (Xen: 2048).
    pub max_value: usize,
    /// Watches per connection (Xen: 128).
    pub max_watches: usize,
    /// Open transactions per connection (Xen: 10).
    pub max_transactions: usize,
    /// Bytes of unsent replies and events before a connection is dropped.
    pub max_outbox: usize,
}

impl Quotas {
    /// No limit at all (a quota of 0 in Xen's SET_QUOTA).
    pub fn unlimited() -> Quotas {
        Quotas {
            max_nodes: usize::MAX,
            max_value: usize::MAX,
            max_watches: usize::MAX,
            max_transactions: usize::MAX,
            max_outbox: usize::MAX,
        }
    }
}

impl Default for Quotas {
    fn default() -> Self {
        Quotas {
            max_nodes: 1000,
            max_value: 2048,
            max_watches: 128,
            max_transactions: 10,
            max_outbox: 4 << 20,
        }
    }
}

/// A committed (or, in a transaction, pending) change that may fire watches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// The changed path, or the top of a removed subtree.
    pub path: String,
    /// Permissions that let a watcher see the event (node old/new, parent): any one suffices.
    pub perms: Vec<PermList>,
    /// For removals: every node removed below `path`, children before their parent, each
    /// with its own and its parent's permissions. As in Xen's xenstored, each fires the watches
    /// set exactly on it; `path` itself then fires the watches on it and its ancestors.
    pub removed: Option<Vec<Removed>>,
}

/// A node removed below the top of a removed subtree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Removed {
    /// Its path.
    pub path: String,
    /// Its permissions, then its parent's (a watcher allowed to read either sees the event).
    pub perms: [PermList; 2],
}

fn leaf(path: &str) -> &str {
    &path[path.rfind('/').map_or(0, |i| i + 1)..]
}

fn parent_of(path: &str) -> Result<&str, XsError> {
    tube_xs::path::parent(path).ok_or(XsError::Einval)
}

/// READ: the value at `path`.
pub fn read(t: &mut impl Tree, c: Caller, path: &str) -> Result<Vec<u8>, XsError> {
    let n = t.get(path).ok_or(XsError::Enoent)?;
    if !c.can_read(&n.perms) {
        return Err(XsError::Eacces);
    }
    Ok(n.value.clone())
}

/// DIRECTORY: the leaf names of the children of `path`, each followed by a NUL.
pub fn directory(t: &mut impl Tree, c: Caller, path: &str) -> Result<Vec<u8>, XsError> {
    let n = t.get(path).ok_or(XsError::Enoent)?;
    if !c.can_read(&n.perms) {
        return Err(XsError::Eacces);
    }
    let mut out = Vec::with_capacity(n.children.iter().map(|c| c.len() + 1).sum());
    for ch in &n.children {
        out.extend_from_slice(ch.as_bytes());
        out.push(0);
    }
    Ok(out)
}

/// DIRECTORY_PART: the node's generation and as many whole names from byte `offset` as fit.
pub fn directory_part(t: &mut impl Tree, c: Caller, path: &str, offset: usize) -> Result<Vec<u8>, XsError> {
    let gen = t.get(path).map(|n| n.gen).ok_or(XsError::Enoent)?;
    let all = directory(t, c, path)?;
    Ok(tube_xs::wire::directory_part_reply(gen, &all, offset))
}

/// GET_PERMS.
pub fn get_perms(t: &mut impl Tree, c: Caller, path: &str) -> Result<PermList, XsError> {
    let n = t.get(path).ok_or(XsError::Enoent)?;
    if !c.can_read(&n.perms) {
        return Err(XsError::Eacces);
    }
    Ok(n.perms.clone())
}

/// WRITE: sets the value, creating the node and missing parents.
pub fn write(
    t: &mut impl Tree,
    c: Caller,
    q: &Quotas,
    path: &str,
    value: &[u8],
    out: &mut Vec<Change>,
) -> Result<(), XsError> {
    if !c.privileged && value.len() > q.max_value {
        return Err(XsError::Enospc);
    }
    let parent_perms = parent_perms(t, path);
    match t.get(path) {
        Some(n) => {
            if !c.can_write(&n.perms) {
                return Err(XsError::Eacces);
            }
            let mut n = n.clone();
            n.value = value.to_vec();
            let perms = n.perms.clone();
            t.put(path, n);
            out.push(Change { path: path.to_owned(), perms: with(perms, parent_perms), removed: None });
            Ok(())
        }
        None => {
            let perms = create(t, c, q, path, value)?;
            let pp = parent_perms.or_else(|| parent_perms_of(t, path));
            out.push(Change { path: path.to_owned(), perms: with(perms, pp), removed: None });
            Ok(())
        }
    }
}

/// MKDIR: makes sure `path` exists; an existing node is left alone.
pub fn mkdir(
    t: &mut impl Tree,
    c: Caller,
    q: &Quotas,
    path: &str,
    out: &mut Vec<Change>,
) -> Result<(), XsError> {
    if let Some(n) = t.get(path) {
        return if c.can_write(&n.perms) { Ok(()) } else { Err(XsError::Eacces) };
    }
    let perms = create(t, c, q, path, &[])?;
    let pp = parent_perms_of(t, path);
    out.push(Change { path: path.to_owned(), perms: with(perms, pp), removed: None });
    Ok(())
}

/// RM: removes `path` and everything below. A missing node is fine if its parent exists.
pub fn rm(t: &mut impl Tree, c: Caller, path: &str, out: &mut Vec<Change>) -> Result<(), XsError> {
    let Some(n) = t.get(path) else {
        let parent = parent_of(path)?;
        return if t.get(parent).is_some() { Ok(()) } else { Err(XsError::Enoent) };
    };
    if path == "/" {
        return Err(XsError::Einval);
    }
    if !c.can_write(&n.perms) {
        return Err(XsError::Eacces);
    }
    let perms = n.perms.clone();
    let pp = parent_perms_of(t, path);
    let mut removed = remove_subtree(t, path)?;
    removed.pop(); // the top: announced by the change itself
    out.push(Change { path: path.to_owned(), perms: with(perms, pp), removed: Some(removed) });
    Ok(())
}

/// Removes `path` and its subtree and unlinks it from its parent, without permission checks.
/// Returns the removed nodes in the order Xen's xenstored removes them: depth-first, children
/// (in directory order) before their parent, `path` last.
pub fn remove_subtree(t: &mut impl Tree, path: &str) -> Result<Vec<Removed>, XsError> {
    let parent = parent_of(path)?.to_owned();
    let parent_perms = t.get(&parent).map(|n| n.perms.clone()).unwrap_or_else(crate::store::dom0_perms);
    let mut removed = Vec::new();
    // (path, its parent's perms, children pushed yet)
    let mut stack = vec![(path.to_owned(), parent_perms, false)];
    while let Some((p, pperms, expanded)) = stack.pop() {
        let Some(n) = t.get(&p) else { continue };
        if !expanded {
            let (perms, kids) = (n.perms.clone(), n.children.clone());
            stack.push((p.clone(), pperms, true));
            for ch in kids.iter().rev() {
                stack.push((child_path(&p, ch), perms.clone(), false));
            }
            continue;
        }
        removed.push(Removed { path: p.clone(), perms: [n.perms.clone(), pperms] });
        t.del(&p);
    }
    if let Some(pn) = t.get(&parent) {
        let mut pn = pn.clone();
        let name = leaf(path);
        pn.children.retain(|c| c != name);
        t.put(&parent, pn);
    }
    Ok(removed)
}

/// SET_PERMS: only the owner (or dom0) may; only dom0 may give a node away.
pub fn set_perms(
    t: &mut impl Tree,
    c: Caller,
    path: &str,
    perms: PermList,
    out: &mut Vec<Change>,
) -> Result<(), XsError> {
    if perms.0.is_empty() {
        return Err(XsError::Einval);
    }
    let pp = parent_perms_of(t, path);
    let n = t.get(path).ok_or(XsError::Enoent)?;
    if !c.privileged {
        if !c.owns(&n.perms) {
            return Err(XsError::Eacces);
        }
        if perms.owner() != n.perms.owner() {
            return Err(XsError::Eperm);
        }
    }
    let mut n = n.clone();
    let old = std::mem::replace(&mut n.perms, perms.clone());
    t.put(path, n);
    let mut all = with(old, pp);
    all.push(perms);
    out.push(Change { path: path.to_owned(), perms: all, removed: None });
    Ok(())
}

fn with(p: PermList, parent: Option<PermList>) -> Vec<PermList> {
    let mut v = vec![p];
    v.extend(parent);
    v
}

fn parent_perms_of(t: &mut impl Tree, path: &str) -> Option<PermList> {
    parent_perms(t, path)
}

fn parent_perms(t: &mut impl Tree, path: &str) -> Option<PermList> {
    let p = tube_xs::path::parent(path)?;
    t.get(p).map(|n| n.perms.clone())
}

/// Creates `path` and its missing parents; new nodes inherit the parent's permissions, and an
/// unprivileged creator becomes their owner. Returns the new node's permissions.
fn create(
    t: &mut impl Tree,
    c: Caller,
    q: &Quotas,
    path: &str,
    value: &[u8],
) -> Result<PermList, XsError> {
    let mut missing = vec![path.to_owned()];
    let mut anc = parent_of(path)?.to_owned();
    while t.get(&anc).is_none() {
        missing.push(anc.clone());
        anc = parent_of(&anc)?.to_owned();
    }
    let mut parent = t.get(&anc).cloned().ok_or(XsError::Enoent)?;
    if !c.can_write(&parent.perms) {
        return Err(XsError::Eacces);
    }
    if !c.privileged && t.owned_by(c.domid) + missing.len() > q.max_nodes {
        return Err(XsError::Enospc);
    }
    let mut parent_path = anc;
    while let Some(p) = missing.pop() {
        let mut perms = parent.perms.clone();
        if !c.privileged {
            if let Some(first) = perms.0.first_mut() {
                first.domid = c.domid;
            }
        }
        parent.children.push(leaf(&p).to_owned());
        t.put(&parent_path, parent);
        let mut node = Node::empty(perms);
        if missing.is_empty() {
            node.value = value.to_vec();
        }
        parent = node;
        parent_path = p;
    }
    let perms = parent.perms.clone();
    t.put(&parent_path, parent);
    Ok(perms)
}
