//! The daemon's whole state behind one lock, and the request dispatcher: one handler per
//! message type, an error enum that becomes an XS_ERROR reply in one place.
//!
//! Ordering: a request is handled entirely under the state lock. Watch events it causes are
//! queued to every watcher (the requester included) before its reply; the initial event of a
//! WATCH goes after the WATCH reply. Since all queueing happens under the lock, every
//! connection sees events in commit order, and replies in request order.

use crate::ops::{self, Caller, Change, Quotas};
use crate::outbox::Outbox;
use crate::persist::{Cause, Journal, Meta};
use crate::store::{Direct, Overlay, Store, Tree, TxView};
use crate::watch::{ConnId, Fired, Watch, Watches};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use tube_xs::perms::PermList;
use tube_xs::wire::{Message, MsgType, XsError, PAYLOAD_MAX};

/// An open transaction: its overlay and the changes it will announce at commit.
#[derive(Debug, Default)]
pub struct Tx {
    /// Private changes and read set.
    pub ov: Overlay,
    /// Watch-relevant changes, fired at commit.
    pub changes: Vec<Change>,
}

/// One client connection.
pub struct Conn {
    /// Bound domain; None = privileged socket client (dom0).
    pub domid: Option<u32>,
    /// Outgoing queue.
    pub outbox: Arc<Outbox>,
    /// Open transactions by id.
    pub txs: HashMap<u32, Tx>,
    /// The domain this connection's domain acts for (SET_TARGET).
    pub target: Option<u32>,
}

impl Conn {
    /// Who this connection acts as.
    pub fn caller(&self) -> Caller {
        match self.domid {
            None => Caller::DOM0,
            Some(d) => Caller { domid: d, privileged: false, target: self.target },
        }
    }
}

/// A domain known to the daemon.
#[derive(Debug, Default, Clone)]
pub struct Domain {
    /// The connection bound to it (local-domain extension), if any.
    pub conn: Option<ConnId>,
    /// The domain it acts for (SET_TARGET).
    pub target: Option<u32>,
    /// Its quotas, when dom0 set them (SET_QUOTA); else the global ones.
    pub quotas: Option<Quotas>,
    /// Its feature bits (SET_FEATURE before INTRODUCE).
    pub features: u32,
}

/// What a handler did besides its reply.
#[derive(Default)]
pub struct Effects {
    /// Committed changes to announce before the reply.
    pub changes: Vec<Change>,
    /// Special events ("@introduceDomain", "@releaseDomain") to announce before the reply.
    pub specials: Vec<&'static str>,
    /// Paths changed in the store (for the journal).
    pub touched: Vec<String>,
    /// Events to queue after the reply (WATCH's first event).
    pub after: Vec<Fired>,
    /// Connections to drop once the reply is queued (RELEASE of a bound domain).
    pub kill: Vec<ConnId>,
    /// Who the journal and history say made the change, when it is not the requester's own
    /// request (a domain introduced or released).
    pub meta: Option<crate::persist::Meta>,
}

/// Everything the daemon knows.
pub struct State {
    /// The committed tree.
    pub store: Store,
    /// All watches.
    pub watches: Watches,
    /// Live connections.
    pub conns: HashMap<ConnId, Conn>,
    /// Introduced domains.
    pub domains: BTreeMap<u32, Domain>,
    /// Limits for unprivileged connections.
    pub quotas: Quotas,
    /// Persistence, if enabled.
    pub journal: Option<Journal>,
    /// Set while the server stops: closing connections then does not release their domains.
    pub shutting_down: bool,
    /// Permissions of "@introduceDomain" and "@releaseDomain": who may see their events.
    pub special_perms: BTreeMap<&'static str, PermList>,
    /// Soft quotas: passing one is logged, not refused (CONTROL quota-s).
    pub soft_quotas: Quotas,
    /// Feature bits of domains not introduced yet (SET_FEATURE comes before INTRODUCE).
    pub pending_features: BTreeMap<u32, u32>,
    /// Requests are written to the log (CONTROL log on).
    pub trace: bool,
    /// Where failures, CONTROL print and traces go.
    pub log: crate::log::Log,
    next_tx: u32,
}

type HResult = Result<Vec<u8>, XsError>;

const OK: &[u8] = b"OK\0";

impl State {
    /// A fresh state around `store`.
    pub fn new(store: Store, quotas: Quotas) -> State {
        State {
            store,
            watches: Watches::default(),
            conns: HashMap::new(),
            domains: BTreeMap::new(),
            quotas,
            journal: None,
            shutting_down: false,
            special_perms: crate::admin::default_special_perms(),
            soft_quotas: Quotas::unlimited(),
            pending_features: BTreeMap::new(),
            trace: false,
            log: crate::log::Log::stderr_only(true),
            next_tx: 0,
        }
    }

    /// Registers a new connection.
    pub fn add_conn(&mut self, id: ConnId, outbox: Arc<Outbox>) {
        self.conns.insert(id, Conn { domid: None, outbox, txs: HashMap::new(), target: None });
    }

    /// Handles one request from `id`, queueing the reply and any events. `wake_self` = false
    /// when the caller flushes the requester's queue itself. With a journal, a request that
    /// changed the tree returns its frame's number: its reply is held in the outbox until the
    /// caller has waited for that frame to be durable and settled the outbox.
    pub fn handle(&mut self, id: ConnId, msg: &Message, wake_self: bool) -> Option<u64> {
        let conn = self.conns.get(&id)?;
        let caller = conn.caller();
        let mut fx = Effects::default();
        // Domain requests change the tree as a side effect of a domain's life; they are not
        // undone when their frame cannot be written (the journal then needs a full snapshot).
        let undoable = self.journal.is_some()
            && !matches!(msg.msg_type(), Some(MsgType::Introduce | MsgType::Release));
        if undoable {
            self.store.track();
        }
        if self.trace {
            self.log.line(&format!("conn {id} dom{}: {:?} {:?}", caller.domid, msg.msg_type(), crate::history::sanitise(&msg.payload)));
        }
        let owned_before = self.store.owned_by(caller.domid);
        let mut res = self.dispatch(id, caller, msg, &mut fx);
        let seq = match self.journal_effects(&mut fx, caller.domid) {
            Ok(seq) => seq,
            Err(e) => {
                if undoable {
                    self.store.roll_back();
                    fx.changes.clear();
                    fx.specials.clear();
                    fx.after.clear();
                    res = Err(e);
                } else if let Some(j) = &self.journal {
                    j.mark_broken();
                }
                None
            }
        };
        self.store.untrack();
        self.check_soft_quota(caller, owned_before);
        self.fire_effects(&mut fx, id, wake_self);
        if let Some(conn) = self.conns.get(&id) {
            let (ty, payload) = match res {
                Ok(payload) => (msg.ty, payload),
                Err(e) => (MsgType::Error as u32, error_payload(e)),
            };
            match seq {
                Some(seq) => conn.outbox.push_held(ty, msg.req_id, msg.tx_id, &payload, seq),
                None => conn.outbox.push(ty, msg.req_id, msg.tx_id, &payload, wake_self),
            }
        }
        for f in fx.after.drain(..) {
            self.send_event(&f, id, wake_self);
        }
        for k in fx.kill.drain(..) {
            if let Some(c) = self.conns.get(&k) {
                c.outbox.kill();
            }
        }
        seq
    }

    /// Writes the journal frame of what `fx` changed: Ok(Some(frame)) when one was written.
    fn journal_effects(&mut self, fx: &mut Effects, domid: u32) -> Result<Option<u64>, XsError> {
        if fx.touched.is_empty() {
            return Ok(None);
        }
        let touched = std::mem::take(&mut fx.touched);
        let meta = fx.meta.take();
        match &mut self.journal {
            Some(j) => {
                let meta = meta.unwrap_or_else(|| Meta::now(domid, Cause::Request));
                j.append(&self.store, &touched, &meta).map(Some)
            }
            None => Ok(None),
        }
    }

    /// Journals (a failure marks the journal broken: these changes cannot be undone), then
    /// fires the watches of, everything `fx` changed.
    pub fn commit_effects(&mut self, fx: &mut Effects, id: ConnId, wake_self: bool) {
        if self.journal_effects(fx, 0).is_err() {
            if let Some(j) = &self.journal {
                j.mark_broken();
            }
        }
        self.fire_effects(fx, id, wake_self);
    }

    /// Fires the watches of everything `fx` changed.
    fn fire_effects(&mut self, fx: &mut Effects, id: ConnId, wake_self: bool) {
        let mut fired = Vec::new();
        for ch in fx.changes.drain(..) {
            let conns = &self.conns;
            self.watches.fire(&ch, |c| conns.get(&c).map(Conn::caller), &mut fired);
        }
        for s in fx.specials.drain(..) {
            let conns = &self.conns;
            let perms = &self.special_perms[s];
            self.watches.fire_special(s, |c| conns.get(&c).is_some_and(|cn| cn.caller().can_read(perms)), &mut fired);
        }
        for f in &fired {
            self.send_event(f, id, wake_self);
        }
    }

    fn send_event(&self, f: &Fired, id: ConnId, wake_self: bool) {
        if let Some(c) = self.conns.get(&f.conn) {
            let mut p = Vec::with_capacity(f.path.len() + f.token.len() + 2);
            p.extend_from_slice(f.path.as_bytes());
            p.push(0);
            p.extend_from_slice(f.token.as_bytes());
            p.push(0);
            c.outbox.push(MsgType::WatchEvent as u32, 0, 0, &p, f.conn != id || wake_self);
        }
    }

    fn dispatch(&mut self, id: ConnId, c: Caller, msg: &Message, fx: &mut Effects) -> HResult {
        let Some(ty) = msg.msg_type() else { return Err(XsError::Enosys) };
        match ty {
            MsgType::Read
            | MsgType::Write
            | MsgType::Mkdir
            | MsgType::Rm
            | MsgType::Directory
            | MsgType::DirectoryPart
            | MsgType::GetPerms
            | MsgType::SetPerms => self.do_node_op(id, c, ty, msg, fx),
            MsgType::Watch => self.do_watch(id, c, msg, fx),
            MsgType::Unwatch => self.do_unwatch(id, c, msg),
            MsgType::ResetWatches => self.do_reset_watches(id),
            MsgType::TransactionStart => self.do_transaction_start(id, msg),
            MsgType::TransactionEnd => self.do_transaction_end(id, msg, fx),
            MsgType::Introduce => self.do_introduce(id, c, msg, fx),
            MsgType::Release => self.do_release(c, msg, fx),
            MsgType::GetDomainPath => self.do_get_domain_path(msg),
            MsgType::IsDomainIntroduced => self.do_is_domain_introduced(msg),
            MsgType::Resume => self.do_resume(c, msg),
            MsgType::SetTarget => self.do_set_target(c, msg),
            MsgType::GetFeature => self.do_get_feature(c, msg),
            MsgType::SetFeature => self.do_set_feature(c, msg),
            MsgType::GetQuota => self.do_get_quota(c, msg),
            MsgType::SetQuota => self.do_set_quota(c, msg),
            MsgType::Control => self.do_control(c, msg),
            _ => Err(XsError::Enosys),
        }
    }

    /// The node operations, on the store or inside the transaction named by tx_id.
    fn do_node_op(&mut self, id: ConnId, c: Caller, ty: MsgType, msg: &Message, fx: &mut Effects) -> HResult {
        let (path, rest) = split_path(&msg.payload)?;
        if tube_xs::path::is_special(path) {
            return self.special_perms_op(c, ty, path, rest);
        }
        let path = tube_xs::path::canonicalize(c.domid, path)?;
        let q = self.quotas_of(c);
        if msg.tx_id == 0 {
            let mut t = Direct { store: &mut self.store, touched: Vec::new() };
            let r = node_op(&mut t, c, &q, ty, &path, rest, &mut fx.changes);
            fx.touched = t.touched;
            return r;
        }
        let conn = self.conns.get_mut(&id).ok_or(XsError::Einval)?;
        let tx = conn.txs.get_mut(&msg.tx_id).ok_or(XsError::Enoent)?;
        let mut t = TxView { store: &self.store, ov: &mut tx.ov };
        node_op(&mut t, c, &q, ty, &path, rest, &mut tx.changes)
    }

    /// GET_PERMS/SET_PERMS on "@introduceDomain"/"@releaseDomain" are accepted for compatibility;
    /// special events go to every watcher regardless.
    fn special_perms_op(&mut self, c: Caller, ty: MsgType, path: &str, rest: &[u8]) -> HResult {
        let Some(name) = crate::admin::special_name(path) else { return Err(XsError::Enoent) };
        match ty {
            MsgType::GetPerms => Ok(self.special_perms[name].to_wire()),
            MsgType::SetPerms if c.privileged => {
                let fields: Vec<&[u8]> = rest.split(|b| *b == 0).filter(|f| !f.is_empty()).collect();
                let perms = PermList::parse(&fields)?;
                if perms.0.is_empty() {
                    return Err(XsError::Einval);
                }
                self.special_perms.insert(name, perms);
                Ok(OK.to_vec())
            }
            MsgType::SetPerms => Err(XsError::Eacces),
            _ => Err(XsError::Einval),
        }
    }

    fn do_watch(&mut self, id: ConnId, c: Caller, msg: &Message, fx: &mut Effects) -> HResult {
        let f = msg.fields();
        let (Some(wpath), Some(token)) = (f.first(), f.get(1)) else { return Err(XsError::Einval) };
        let wpath = std::str::from_utf8(wpath).map_err(|_| XsError::Einval)?;
        let token = std::str::from_utf8(token).map_err(|_| XsError::Einval)?.to_owned();
        let (abs, strip) = watch_path(c, wpath)?;
        if self.watches.has(id, &abs, &token) {
            return Err(XsError::Eexist);
        }
        if !c.privileged && self.watches.count(id) >= self.quotas_of(c).max_watches {
            return Err(XsError::Enospc);
        }
        self.watches.add(Watch { conn: id, path: abs, token: token.clone(), strip });
        fx.after.push(Fired { conn: id, path: wpath.to_owned(), token });
        Ok(OK.to_vec())
    }

    fn do_unwatch(&mut self, id: ConnId, c: Caller, msg: &Message) -> HResult {
        let f = msg.fields();
        let (Some(wpath), Some(token)) = (f.first(), f.get(1)) else { return Err(XsError::Einval) };
        let wpath = std::str::from_utf8(wpath).map_err(|_| XsError::Einval)?;
        let token = std::str::from_utf8(token).map_err(|_| XsError::Einval)?;
        let (abs, _) = watch_path(c, wpath)?;
        if self.watches.remove(id, &abs, token) {
            Ok(OK.to_vec())
        } else {
            Err(XsError::Enoent)
        }
    }

    fn do_reset_watches(&mut self, id: ConnId) -> HResult {
        self.watches.remove_conn(id);
        if let Some(c) = self.conns.get_mut(&id) {
            c.txs.clear();
        }
        self.release_snapshots();
        Ok(OK.to_vec())
    }

    fn do_transaction_start(&mut self, id: ConnId, msg: &Message) -> HResult {
        if msg.tx_id != 0 {
            return Err(XsError::Ebusy);
        }
        let max = self.conns.get(&id).map_or(0, |cn| self.quotas_of(cn.caller()).max_transactions);
        let conn = self.conns.get_mut(&id).ok_or(XsError::Einval)?;
        if conn.domid.is_some() && conn.txs.len() >= max {
            return Err(XsError::Enospc);
        }
        let mut txid = self.next_tx;
        loop {
            txid = txid.wrapping_add(1);
            if txid != 0 && !conn.txs.contains_key(&txid) {
                break;
            }
        }
        self.next_tx = txid;
        let mut tx = Tx::default();
        tx.ov.snap = self.store.open_snapshot();
        conn.txs.insert(txid, tx);
        Ok(format!("{txid}\0").into_bytes())
    }

    fn do_transaction_end(&mut self, id: ConnId, msg: &Message, fx: &mut Effects) -> HResult {
        let commit = match msg.fields().first().copied() {
            Some(b"T") => true,
            Some(b"F") => false,
            _ => return Err(XsError::Einval),
        };
        let conn = self.conns.get_mut(&id).ok_or(XsError::Einval)?;
        let tx = conn.txs.remove(&msg.tx_id).ok_or(XsError::Enoent)?;
        let res = if !commit {
            Ok(OK.to_vec())
        } else if !tx.ov.still_valid(&self.store) {
            Err(XsError::Eagain)
        } else {
            fx.touched = tx.ov.apply(&mut self.store);
            fx.changes = tx.changes;
            Ok(OK.to_vec())
        };
        self.release_snapshots();
        res
    }

    /// Tells the store which snapshots are still open after transactions went away, so it
    /// drops the old node versions nobody can read any more.
    pub(crate) fn release_snapshots(&mut self) {
        let oldest = self.conns.values().flat_map(|c| c.txs.values()).map(|t| t.ov.snap).min();
        self.store.release_snapshots(oldest);
    }

    /// Closes a connection: drops its watches and transactions, and releases its domain.
    pub fn close_conn(&mut self, id: ConnId) {
        self.watches.remove_conn(id);
        let Some(conn) = self.conns.remove(&id) else { return };
        conn.outbox.kill();
        if !conn.txs.is_empty() {
            self.release_snapshots();
        }
        if let (Some(d), false) = (conn.domid, self.shutting_down) {
            let mut fx = Effects::default();
            self.release_domain(d, &mut fx);
            self.commit_effects(&mut fx, id, true);
        }
    }
}

fn node_op(
    t: &mut impl Tree,
    c: Caller,
    q: &Quotas,
    ty: MsgType,
    path: &str,
    rest: &[u8],
    changes: &mut Vec<Change>,
) -> HResult {
    match ty {
        MsgType::Read => ops::read(t, c, path),
        MsgType::Directory => {
            let d = ops::directory(t, c, path)?;
            if d.len() > PAYLOAD_MAX {
                return Err(XsError::E2big);
            }
            Ok(d)
        }
        MsgType::DirectoryPart => {
            let off = std::str::from_utf8(trim_nul(rest))
                .ok()
                .and_then(|s| s.parse::<usize>().ok())
                .ok_or(XsError::Einval)?;
            ops::directory_part(t, c, path, off)
        }
        MsgType::GetPerms => Ok(ops::get_perms(t, c, path)?.to_wire()),
        MsgType::Write => ops::write(t, c, q, path, rest, changes).map(|_| OK.to_vec()),
        MsgType::Mkdir => ops::mkdir(t, c, q, path, changes).map(|_| OK.to_vec()),
        MsgType::Rm => ops::rm(t, c, path, changes).map(|_| OK.to_vec()),
        MsgType::SetPerms => {
            let fields: Vec<&[u8]> = rest.split(|b| *b == 0).filter(|f| !f.is_empty()).collect();
            let perms = PermList::parse(&fields)?;
            ops::set_perms(t, c, path, perms, changes).map(|_| OK.to_vec())
        }
        _ => Err(XsError::Enosys),
    }
}

/// Splits "<path>\0<rest>" (the NUL may be missing when there is no rest).
fn split_path(p: &[u8]) -> Result<(&str, &[u8]), XsError> {
    let (path, rest) = match p.iter().position(|b| *b == 0) {
        Some(i) => (&p[..i], &p[i + 1..]),
        None => (p, &[][..]),
    };
    Ok((std::str::from_utf8(path).map_err(|_| XsError::Einval)?, rest))
}

fn trim_nul(b: &[u8]) -> &[u8] {
    match b.iter().position(|x| *x == 0) {
        Some(i) => &b[..i],
        None => b,
    }
}

/// Absolute form of a watch path, and how much to strip from events for relative watches.
fn watch_path(c: Caller, wpath: &str) -> Result<(String, usize), XsError> {
    if tube_xs::path::is_special(wpath) {
        if wpath.len() > tube_xs::wire::ABS_PATH_MAX || wpath.contains('\0') {
            return Err(XsError::Einval);
        }
        return Ok((wpath.to_owned(), 0));
    }
    let abs = tube_xs::path::canonicalize(c.domid, wpath)?;
    let strip = if wpath.starts_with('/') { 0 } else { abs.len() - wpath.len() };
    Ok((abs, strip))
}

/// An XS_ERROR payload: the error's name and a NUL.
pub fn error_payload(e: XsError) -> Vec<u8> {
    let mut p = e.as_str().as_bytes().to_vec();
    p.push(0);
    p
}

/// Parses a decimal domid field.
pub fn parse_domid(f: Option<&&[u8]>) -> Result<u32, XsError> {
    let f = f.ok_or(XsError::Einval)?;
    let s = std::str::from_utf8(f).map_err(|_| XsError::Einval)?;
    let d: u32 = s.parse().map_err(|_| XsError::Einval)?;
    if d > 0xffff {
        return Err(XsError::Einval);
    }
    Ok(d)
}
