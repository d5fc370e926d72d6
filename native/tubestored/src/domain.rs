//! Domain handlers: INTRODUCE (classic, and tube's local-domain self-introduction), RELEASE,
//! GET_DOMAIN_PATH, IS_DOMAIN_INTRODUCED, RESUME, and the release of a domain that went away.

use crate::ops::{self, Caller, Change, Quotas};
use crate::persist::{Cause, Meta};
use crate::state::{parse_domid, Domain, Effects, State};
use crate::store::Direct;
use crate::watch::ConnId;
use tube_xs::perms::{Access, Perm, PermList};
use tube_xs::wire::{Message, XsError};

type HResult = Result<Vec<u8>, XsError>;

/// Largest domid a local domain may take (DOMID_FIRST_RESERVED - 1).
pub const DOMID_MAX: u32 = 0x7fef;

/// "/local/domain/<domid>".
pub fn domain_path(domid: u32) -> String {
    format!("/local/domain/{domid}")
}

impl State {
    pub(crate) fn do_introduce(&mut self, id: ConnId, c: Caller, msg: &Message, fx: &mut Effects) -> HResult {
        let f = msg.fields();
        if f.get(1).copied() == Some(&b"self"[..]) && f.len() == 2 {
            return self.introduce_self(id, f[0], fx);
        }
        if !c.privileged {
            return Err(XsError::Eacces);
        }
        if f.len() < 3 {
            return Err(XsError::Einval);
        }
        let domid = parse_domid(f.first())?;
        if domid == 0 || domid > DOMID_MAX {
            return Err(XsError::Einval);
        }
        if let std::collections::btree_map::Entry::Vacant(e) = self.domains.entry(domid) {
            let features = self.pending_features.remove(&domid).unwrap_or(0);
            e.insert(Domain { features, ..Domain::default() });
            fx.specials.push("@introduceDomain");
        }
        Ok(b"OK\0".to_vec())
    }

    /// Binds connection `id` to a domain: "<domid>" or "auto".
    fn introduce_self(&mut self, id: ConnId, want: &[u8], fx: &mut Effects) -> HResult {
        let conn = self.conns.get(&id).ok_or(XsError::Einval)?;
        if conn.domid.is_some() {
            return Err(XsError::Eisconn);
        }
        let domid = if want == b"auto" {
            (1..=DOMID_MAX)
                .find(|d| !self.domains.contains_key(d))
                .ok_or(XsError::Enospc)?
        } else {
            let d = parse_domid(Some(&want))?;
            if d == 0 || d > DOMID_MAX {
                return Err(XsError::Einval);
            }
            if self.domains.get(&d).is_some_and(|dom| dom.conn.is_some()) {
                return Err(XsError::Eexist);
            }
            d
        };
        let features = self.pending_features.remove(&domid).unwrap_or(0);
        self.domains.insert(domid, Domain { conn: Some(id), features, ..Domain::default() });
        if let Some(conn) = self.conns.get_mut(&id) {
            conn.domid = Some(domid);
        }
        let path = domain_path(domid);
        let perms = PermList(vec![Perm { access: Access::None, domid }]);
        let mut t = Direct { store: &mut self.store, touched: Vec::new() };
        let q = Quotas::unlimited();
        ops::mkdir(&mut t, Caller::DOM0, &q, &path, &mut fx.changes)?;
        ops::set_perms(&mut t, Caller::DOM0, &path, perms, &mut fx.changes)?;
        fx.touched = t.touched;
        fx.specials.push("@introduceDomain");
        fx.meta = Some(Meta::now(domid, Cause::Introduced));
        Ok(format!("{domid}\0").into_bytes())
    }

    pub(crate) fn do_release(&mut self, c: Caller, msg: &Message, fx: &mut Effects) -> HResult {
        if !c.privileged {
            return Err(XsError::Eacces);
        }
        let domid = parse_domid(msg.fields().first())?;
        if domid == 0 {
            return Err(XsError::Einval);
        }
        let dom = self.domains.get(&domid).cloned().ok_or(XsError::Enoent)?;
        if let Some(cid) = dom.conn {
            // The bound connection is closed after the reply; it must not release again.
            if let Some(conn) = self.conns.get_mut(&cid) {
                conn.domid = None;
                conn.txs.clear();
            }
            self.watches.remove_conn(cid);
            fx.kill.push(cid);
            self.release_snapshots();
        }
        self.release_domain(domid, fx);
        Ok(b"OK\0".to_vec())
    }

    /// Forgets `domid`, removes the nodes it owns (and its /local/domain entry), fires
    /// @releaseDomain.
    pub(crate) fn release_domain(&mut self, domid: u32, fx: &mut Effects) {
        self.domains.remove(&domid);
        fx.meta = Some(Meta::now(domid, Cause::Released));
        let mut t = Direct { store: &mut self.store, touched: Vec::new() };
        remove_owned(&mut t, domid, &mut fx.changes);
        fx.touched.append(&mut t.touched);
        fx.specials.push("@releaseDomain");
    }

    pub(crate) fn do_get_domain_path(&mut self, msg: &Message) -> HResult {
        let domid = parse_domid(msg.fields().first())?;
        Ok(format!("{}\0", domain_path(domid)).into_bytes())
    }

    pub(crate) fn do_is_domain_introduced(&mut self, msg: &Message) -> HResult {
        let domid = parse_domid(msg.fields().first())?;
        let yes = domid == 0 || self.domains.contains_key(&domid);
        Ok(if yes { b"T\0".to_vec() } else { b"F\0".to_vec() })
    }

    pub(crate) fn do_resume(&mut self, c: Caller, msg: &Message) -> HResult {
        if !c.privileged {
            return Err(XsError::Eacces);
        }
        let domid = parse_domid(msg.fields().first())?;
        if self.domains.contains_key(&domid) {
            Ok(b"OK\0".to_vec())
        } else {
            Err(XsError::Enoent)
        }
    }
}

/// Removes every node owned by `domid` with its subtree, plus /local/domain/<domid>.
pub fn remove_owned(t: &mut Direct<'_>, domid: u32, changes: &mut Vec<Change>) {
    let mut tops = t.store.paths_owned_by(domid);
    tops.push(domain_path(domid));
    tops.sort_unstable();
    tops.dedup();
    for p in tops {
        // Already gone with an ancestor removed before it (sorted: ancestors first).
        if t.store.get(&p).is_none() || p == "/" {
            continue;
        }
        let _ = ops::rm(t, Caller::DOM0, &p, changes);
    }
}
