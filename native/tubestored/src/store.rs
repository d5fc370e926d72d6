//! The node tree: nodes keyed by absolute path, a global generation counter for conflict
//! detection, per-domain node counts for quotas, and the two views handlers work through
//! (the live store, and a transaction's private overlay on it).

use std::collections::HashMap;
use tube_xs::perms::{Access, Perm, PermList};

/// One Xenstore node. Children hold leaf names in creation order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// The node's value (binary data).
    pub value: Vec<u8>,
    /// Owner, default access and per-domain entries.
    pub perms: PermList,
    /// Leaf names of the direct children.
    pub children: Vec<String>,
    /// Value of the store's generation counter when this node was last changed.
    pub gen: u64,
}

impl Node {
    /// A node with no value or children.
    pub fn empty(perms: PermList) -> Node {
        Node { value: Vec::new(), perms, children: Vec::new(), gen: 0 }
    }
}

/// The default permissions of the root: owned by dom0, no access for others.
pub fn dom0_perms() -> PermList {
    PermList(vec![Perm { access: Access::None, domid: 0 }])
}

/// The committed node tree.
#[derive(Debug)]
pub struct Store {
    nodes: HashMap<String, Node>,
    gen: u64,
    owned: HashMap<u32, usize>,
    /// Start generation of the newest open snapshot; None when no transaction is open, and
    /// then changes keep no old versions.
    newest_snapshot: Option<u64>,
    /// Old versions of changed nodes, kept while a transaction may still read them: per path,
    /// `(generation of the change, the node before it)` in change order.
    undo: HashMap<String, Vec<(u64, Option<Node>)>>,
    /// While a request that may have to be undone runs: each changed path's node before its
    /// first change.
    rollback: Option<HashMap<String, Option<Node>>>,
}

impl Default for Store {
    fn default() -> Self {
        Store::new()
    }
}

impl Store {
    /// A store holding only the root "/".
    pub fn new() -> Store {
        let mut s = Store {
            nodes: HashMap::new(),
            gen: 0,
            owned: HashMap::new(),
            newest_snapshot: None,
            undo: HashMap::new(),
            rollback: None,
        };
        s.put("/", Node::empty(dom0_perms()));
        s
    }

    /// The node at `path`, if any.
    pub fn get(&self, path: &str) -> Option<&Node> {
        self.nodes.get(path)
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// True if the store has no node at all (never: the root always exists).
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Nodes owned by `domid`.
    pub fn owned_by(&self, domid: u32) -> usize {
        self.owned.get(&domid).copied().unwrap_or(0)
    }

    /// Generation of `path` (0 when absent): what transactions compare at commit.
    pub fn gen_of(&self, path: &str) -> u64 {
        self.nodes.get(path).map_or(0, |n| n.gen)
    }

    /// Opens a snapshot of the store as it is now (a transaction's base); returns its generation.
    /// Until [`Store::release_snapshots`] says it is closed, changes keep the old node versions
    /// that [`Store::get_at`] needs.
    pub fn open_snapshot(&mut self) -> u64 {
        self.newest_snapshot = Some(self.gen);
        self.gen
    }

    /// Drops the old versions no open snapshot can read: `oldest` is the generation of the
    /// oldest snapshot still open, None when none is.
    pub fn release_snapshots(&mut self, oldest: Option<u64>) {
        match oldest {
            None => {
                self.newest_snapshot = None;
                self.undo.clear();
            }
            Some(g) => self.undo.retain(|_, v| {
                // A snapshot at `g` reads the first version changed after `g`; older ones are dead.
                v.retain(|(cg, _)| *cg > g);
                !v.is_empty()
            }),
        }
    }

    /// Number of old node versions kept for open snapshots (tests check they are dropped).
    pub fn undo_len(&self) -> usize {
        self.undo.values().map(Vec::len).sum()
    }

    /// The node at `path` as it was at generation `snap` (an open snapshot).
    pub fn get_at(&self, path: &str, snap: u64) -> Option<&Node> {
        if let Some(v) = self.undo.get(path) {
            if let Some((_, old)) = v.iter().find(|(cg, _)| *cg > snap) {
                return old.as_ref();
            }
        }
        self.nodes.get(path)
    }

    /// Keeps the version of `path` about to be changed at generation `self.gen + 1`, if an open
    /// snapshot may need it: only the first change after the newest snapshot matters.
    fn keep_old(&mut self, path: &str) {
        let Some(newest) = self.newest_snapshot else { return };
        if self.undo.get(path).and_then(|v| v.last()).is_some_and(|(cg, _)| *cg > newest) {
            return;
        }
        let old = self.nodes.get(path).cloned();
        self.undo.entry(path.to_owned()).or_default().push((self.gen + 1, old));
    }

    /// Starts remembering what changes, so that [`Store::roll_back`] can undo them.
    pub fn track(&mut self) {
        self.rollback = Some(HashMap::new());
    }

    /// Stops remembering; the changes stay.
    pub fn untrack(&mut self) {
        self.rollback = None;
    }

    /// Undoes every change since [`Store::track`] (a commit that could not be made durable).
    pub fn roll_back(&mut self) {
        let Some(before) = self.rollback.take() else { return };
        for (path, node) in before {
            match node {
                Some(n) => self.put(&path, n),
                None => {
                    self.del(&path);
                }
            }
        }
    }

    fn remember(&mut self, path: &str) {
        if let Some(rb) = &mut self.rollback {
            if !rb.contains_key(path) {
                rb.insert(path.to_owned(), self.nodes.get(path).cloned());
            }
        }
    }

    /// Inserts or replaces a node, stamping a fresh generation. Does not touch the parent.
    pub fn put(&mut self, path: &str, mut node: Node) {
        self.remember(path);
        self.keep_old(path);
        self.gen += 1;
        node.gen = self.gen;
        *self.owned.entry(node.perms.owner()).or_insert(0) += 1;
        if let Some(old) = self.nodes.insert(path.to_owned(), node) {
            self.dec_owned(old.perms.owner());
        }
    }

    /// Removes one node (not its children, not the parent's entry).
    pub fn del(&mut self, path: &str) -> Option<Node> {
        if !self.nodes.contains_key(path) {
            return None;
        }
        self.remember(path);
        self.keep_old(path);
        let old = self.nodes.remove(path)?;
        self.gen += 1;
        self.dec_owned(old.perms.owner());
        Some(old)
    }

    fn dec_owned(&mut self, domid: u32) {
        if let Some(c) = self.owned.get_mut(&domid) {
            *c = c.saturating_sub(1);
            if *c == 0 {
                self.owned.remove(&domid);
            }
        }
    }

    /// Paths of all nodes owned by `domid`.
    pub fn paths_owned_by(&self, domid: u32) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.perms.owner() == domid)
            .map(|(p, _)| p.clone())
            .collect()
    }

    /// All paths, parents before children.
    pub fn sorted_paths(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.nodes.keys().map(String::as_str).collect();
        v.sort_unstable();
        v
    }

    /// Checks the tree's invariants: every node's parent exists and lists it, every listed
    /// child exists, owner counts match. Used by tests and the fuzzer.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut owned: HashMap<u32, usize> = HashMap::new();
        for (path, node) in &self.nodes {
            *owned.entry(node.perms.owner()).or_insert(0) += 1;
            for c in &node.children {
                let cp = child_path(path, c);
                if !self.nodes.contains_key(&cp) {
                    return Err(format!("{path} lists missing child {c}"));
                }
            }
            if path == "/" {
                continue;
            }
            let parent = tube_xs::path::parent(path).ok_or_else(|| format!("{path}: no parent"))?;
            let leaf = &path[path.rfind('/').map_or(0, |i| i + 1)..];
            match self.nodes.get(parent) {
                Some(p) if p.children.iter().any(|c| c == leaf) => {}
                _ => return Err(format!("{path} not listed in parent {parent}")),
            }
        }
        if owned != self.owned {
            return Err(format!("owner counts {:?} != {:?}", self.owned, owned));
        }
        Ok(())
    }
}

/// `parent` + "/" + `leaf`, minding the root.
pub fn child_path(parent: &str, leaf: &str) -> String {
    if parent == "/" {
        format!("/{leaf}")
    } else {
        format!("{parent}/{leaf}")
    }
}

/// What the node operations read and write through: the live store, or a transaction.
pub trait Tree {
    /// The node at `path` as this view sees it.
    fn get(&mut self, path: &str) -> Option<&Node>;
    /// Inserts or replaces a node.
    fn put(&mut self, path: &str, node: Node);
    /// Removes one node.
    fn del(&mut self, path: &str);
    /// Nodes owned by `domid` as this view sees them.
    fn owned_by(&self, domid: u32) -> usize;
}

/// The live store, remembering which paths changed (for the journal).
pub struct Direct<'a> {
    /// The store written to.
    pub store: &'a mut Store,
    /// Changed paths in order of change.
    pub touched: Vec<String>,
}

impl Tree for Direct<'_> {
    fn get(&mut self, path: &str) -> Option<&Node> {
        self.store.get(path)
    }
    fn put(&mut self, path: &str, node: Node) {
        self.store.put(path, node);
        self.touched.push(path.to_owned());
    }
    fn del(&mut self, path: &str) {
        self.store.del(path);
        self.touched.push(path.to_owned());
    }
    fn owned_by(&self, domid: u32) -> usize {
        self.store.owned_by(domid)
    }
}

/// A transaction's private state: the snapshot it reads, its changes and the generations of
/// everything it looked at.
#[derive(Debug, Default)]
pub struct Overlay {
    /// Store generation at TRANSACTION_START: reads see the store as it was then.
    pub snap: u64,
    /// Changed nodes (`None` = removed in this transaction).
    pub changes: HashMap<String, Option<Node>>,
    /// Generation of every base node read or written (0 = absent).
    pub accessed: HashMap<String, u64>,
    /// Change of owned-node counts per domain against the base.
    pub owned_delta: HashMap<u32, isize>,
}

impl Overlay {
    /// True when every node this transaction looked at is unchanged in `store`.
    pub fn still_valid(&self, store: &Store) -> bool {
        self.accessed.iter().all(|(p, g)| store.gen_of(p) == *g)
    }

    /// Applies the changes to the store; returns the touched paths, parents first.
    pub fn apply(self, store: &mut Store) -> Vec<String> {
        let mut paths: Vec<(String, Option<Node>)> = self.changes.into_iter().collect();
        paths.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let mut touched = Vec::with_capacity(paths.len());
        for (p, n) in paths {
            match n {
                Some(n) => store.put(&p, n),
                None => {
                    store.del(&p);
                }
            }
            touched.push(p);
        }
        touched
    }
}

/// A transaction's view: its overlay over the committed store.
pub struct TxView<'a> {
    /// The committed store (read only).
    pub store: &'a Store,
    /// The transaction's changes.
    pub ov: &'a mut Overlay,
}

impl TxView<'_> {
    /// Remembers the generation the snapshot holds for `path`: a change made since the
    /// transaction started, read or not, fails the commit.
    fn note(&mut self, path: &str) {
        if !self.ov.accessed.contains_key(path) {
            let g = self.store.get_at(path, self.ov.snap).map_or(0, |n| n.gen);
            self.ov.accessed.insert(path.to_owned(), g);
        }
    }
    fn owner_in_view(&mut self, path: &str) -> Option<u32> {
        self.get(path).map(|n| n.perms.owner())
    }
    fn adjust(&mut self, domid: u32, d: isize) {
        *self.ov.owned_delta.entry(domid).or_insert(0) += d;
    }
}

impl Tree for TxView<'_> {
    fn get(&mut self, path: &str) -> Option<&Node> {
        if self.ov.changes.contains_key(path) {
            return self.ov.changes.get(path).and_then(Option::as_ref);
        }
        self.note(path);
        self.store.get_at(path, self.ov.snap)
    }
    fn put(&mut self, path: &str, node: Node) {
        if let Some(o) = self.owner_in_view(path) {
            self.adjust(o, -1);
        }
        self.adjust(node.perms.owner(), 1);
        self.ov.changes.insert(path.to_owned(), Some(node));
    }
    fn del(&mut self, path: &str) {
        if let Some(o) = self.owner_in_view(path) {
            self.adjust(o, -1);
        }
        self.ov.changes.insert(path.to_owned(), None);
    }
    fn owned_by(&self, domid: u32) -> usize {
        let base = self.store.owned_by(domid) as isize;
        let d = self.ov.owned_delta.get(&domid).copied().unwrap_or(0);
        (base + d).max(0) as usize
    }
}
