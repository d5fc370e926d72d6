//! dom0's administrative requests: SET_TARGET, GET/SET_FEATURE, GET/SET_QUOTA (as
//! `docs/misc/xenstore.txt` defines them) and CONTROL's text commands (`check`, `help`,
//! `log`, `print`, `quota`, `quota-s`), plus the permissions of the special watch paths.

use crate::ops::{Caller, Quotas};
use crate::state::{parse_domid, State};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use tube_xs::perms::{Access, Perm, PermList};
use tube_xs::wire::{Message, XsError};

type HResult = Result<Vec<u8>, XsError>;

const OK: &[u8] = b"OK\0";

/// Feature bits this daemon supports (`XENSTORE_SERVER_FEATURE_*`): both defined ones concern
/// the shared ring page of a Xen guest, which local domains do not have.
pub const SUPPORTED_FEATURES: u32 = 0;

/// The quotas GET_QUOTA and SET_QUOTA know, by Xen's names.
pub const QUOTA_NAMES: [&str; 4] = ["nodes", "watches", "transactions", "node-size"];

/// The special paths whose events domains may watch.
pub fn special_name(path: &str) -> Option<&'static str> {
    match path {
        "@introduceDomain" => Some("@introduceDomain"),
        "@releaseDomain" => Some("@releaseDomain"),
        _ => None,
    }
}

/// `r0` for both special paths: every domain may see domains come and go (tube nodes watch
/// them to learn of a peer's death). Xen's default is `n0`; dom0 may SET_PERMS them as in Xen.
pub fn default_special_perms() -> BTreeMap<&'static str, PermList> {
    let r0 = PermList(vec![Perm { access: Access::Read, domid: 0 }]);
    BTreeMap::from([("@introduceDomain", r0.clone()), ("@releaseDomain", r0)])
}

fn get(q: &Quotas, name: &str) -> Option<usize> {
    Some(match name {
        "nodes" => q.max_nodes,
        "watches" => q.max_watches,
        "transactions" => q.max_transactions,
        "node-size" => q.max_value,
        _ => return None,
    })
}

fn set(q: &mut Quotas, name: &str, v: usize) -> Result<(), XsError> {
    // 0 disables the check, as in Xen.
    let v = if v == 0 { usize::MAX } else { v };
    match name {
        "nodes" => q.max_nodes = v,
        "watches" => q.max_watches = v,
        "transactions" => q.max_transactions = v,
        "node-size" => q.max_value = v,
        _ => return Err(XsError::Einval),
    }
    Ok(())
}

/// A quota as the protocol shows it: 0 for "no check".
fn shown(v: usize) -> usize {
    if v == usize::MAX {
        0
    } else {
        v
    }
}

fn text(s: &[u8]) -> Result<&str, XsError> {
    std::str::from_utf8(s).map_err(|_| XsError::Einval)
}

fn number(s: &[u8]) -> Result<usize, XsError> {
    text(s)?.parse().map_err(|_| XsError::Einval)
}

fn reply_text(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

const HELP: &str = "\
check                          check the store's consistency
help                           this list
log [on|off]                   log every request to the log file, or stop
print <string>                 write <string> to the log file
quota [set <name> <val>|<domid>]  show or set the global quotas, or show a domain's
quota-s [set <name> <val>]     show or set the soft quotas (passing one is logged)
";

impl State {
    /// Quotas that apply to `c`: its domain's own (SET_QUOTA), else the global ones.
    pub fn quotas_of(&self, c: Caller) -> Quotas {
        if c.privileged {
            return self.quotas;
        }
        self.domains.get(&c.domid).and_then(|d| d.quotas).unwrap_or(self.quotas)
    }

    /// SET_TARGET `<domid>|<tdomid>|`: `domid` acts for `tdomid` from now on.
    pub(crate) fn do_set_target(&mut self, c: Caller, msg: &Message) -> HResult {
        if !c.privileged {
            return Err(XsError::Eacces);
        }
        let f = msg.fields();
        let (domid, target) = (parse_domid(f.first())?, parse_domid(f.get(1))?);
        if !self.domains.contains_key(&target) {
            return Err(XsError::Enoent);
        }
        let dom = self.domains.get_mut(&domid).ok_or(XsError::Enoent)?;
        dom.target = Some(target);
        if let Some(conn) = dom.conn.and_then(|id| self.conns.get_mut(&id)) {
            conn.target = Some(target);
        }
        Ok(OK.to_vec())
    }

    /// GET_FEATURE `[<domid>|]`: the supported features, or a domain's.
    pub(crate) fn do_get_feature(&mut self, c: Caller, msg: &Message) -> HResult {
        if !c.privileged {
            return Err(XsError::Eacces);
        }
        let v = match msg.fields().first() {
            None => SUPPORTED_FEATURES,
            Some(f) => {
                let d = parse_domid(Some(f))?;
                match self.domains.get(&d) {
                    Some(dom) => dom.features,
                    None => self.pending_features.get(&d).copied().unwrap_or(0),
                }
            }
        };
        Ok(format!("{v}\0").into_bytes())
    }

    /// SET_FEATURE `<domid>|<value>|`: only supported bits, only before INTRODUCE.
    pub(crate) fn do_set_feature(&mut self, c: Caller, msg: &Message) -> HResult {
        if !c.privileged {
            return Err(XsError::Eacces);
        }
        let f = msg.fields();
        let d = parse_domid(f.first())?;
        let v = u32::try_from(number(f.get(1).ok_or(XsError::Einval)?)?).map_err(|_| XsError::Einval)?;
        if v & !SUPPORTED_FEATURES != 0 {
            return Err(XsError::Einval);
        }
        if self.domains.contains_key(&d) {
            return Err(XsError::Ebusy);
        }
        self.pending_features.insert(d, v);
        Ok(OK.to_vec())
    }

    /// GET_QUOTA `[[<domid>|]<quota>|]`: the names, a global quota, or a domain's.
    pub(crate) fn do_get_quota(&mut self, c: Caller, msg: &Message) -> HResult {
        if !c.privileged {
            return Err(XsError::Eacces);
        }
        let f = msg.fields();
        let (q, name) = match f.as_slice() {
            [] => return Ok(reply_text(&QUOTA_NAMES.join(" "))),
            [name] => (self.quotas, text(name)?),
            [d, name] => (self.quotas_of(self.domain_caller(parse_domid(Some(d))?)?), text(name)?),
            _ => return Err(XsError::Einval),
        };
        let v = get(&q, name).ok_or(XsError::Einval)?;
        Ok(format!("{}\0", shown(v)).into_bytes())
    }

    /// SET_QUOTA `[<domid>|]<quota>|<value>|`: a global quota (the default of domains that
    /// have none of their own), or one domain's.
    pub(crate) fn do_set_quota(&mut self, c: Caller, msg: &Message) -> HResult {
        if !c.privileged {
            return Err(XsError::Eacces);
        }
        let f = msg.fields();
        match f.as_slice() {
            [name, v] => set(&mut self.quotas, text(name)?, number(v)?)?,
            [d, name, v] => {
                let d = parse_domid(Some(d))?;
                let global = self.quotas;
                let dom = self.domains.get_mut(&d).ok_or(XsError::Enoent)?;
                set(dom.quotas.get_or_insert(global), text(name)?, number(v)?)?;
            }
            _ => return Err(XsError::Einval),
        }
        Ok(OK.to_vec())
    }

    fn domain_caller(&self, d: u32) -> Result<Caller, XsError> {
        if !self.domains.contains_key(&d) {
            return Err(XsError::Enoent);
        }
        Ok(Caller::domain(d))
    }

    /// CONTROL `<command>|[<parameters>|]*`: dom0's text commands; an unknown one is EINVAL.
    pub(crate) fn do_control(&mut self, c: Caller, msg: &Message) -> HResult {
        if !c.privileged {
            return Err(XsError::Eacces);
        }
        let f = msg.fields();
        let (cmd, args) = f.split_first().ok_or(XsError::Einval)?;
        let args: Vec<&str> = args.iter().map(|a| text(a)).collect::<Result<_, _>>()?;
        match (text(cmd)?, args.as_slice()) {
            ("check", []) => Ok(match self.store.check_invariants() {
                Ok(()) => OK.to_vec(),
                Err(e) => reply_text(&format!("store inconsistent: {e}")),
            }),
            ("help", []) => Ok(reply_text(HELP)),
            ("log", [on]) if *on == "on" || *on == "off" => {
                self.trace = *on == "on";
                self.log.line(&format!("request log {on}"));
                Ok(OK.to_vec())
            }
            ("print", words) if !words.is_empty() => {
                self.log.line(&words.join(" "));
                Ok(OK.to_vec())
            }
            ("quota", []) => Ok(reply_text(&quota_text("Quota settings", &self.quotas))),
            ("quota", ["set", name, v]) => {
                set(&mut self.quotas, name, v.parse().map_err(|_| XsError::Einval)?)?;
                Ok(OK.to_vec())
            }
            ("quota", [d]) => {
                let d = parse_domid(Some(&d.as_bytes()))?;
                let q = self.quotas_of(self.domain_caller(d)?);
                let mut t = quota_text(&format!("Domain {d} quotas"), &q);
                let _ = writeln!(t, "Domain {d} usage:\nnodes: {}", self.store.owned_by(d));
                Ok(reply_text(&t))
            }
            ("quota-s", []) => Ok(reply_text(&quota_text("Soft quota settings", &self.soft_quotas))),
            ("quota-s", ["set", name, v]) => {
                set(&mut self.soft_quotas, name, v.parse().map_err(|_| XsError::Einval)?)?;
                Ok(OK.to_vec())
            }
            _ => Err(XsError::Einval),
        }
    }

    /// Logs a domain passing its soft node quota (called after each request of a domain).
    pub(crate) fn check_soft_quota(&self, c: Caller, owned_before: usize) {
        let soft = self.soft_quotas.max_nodes;
        let now = self.store.owned_by(c.domid);
        if !c.privileged && owned_before <= soft && now > soft {
            self.log.line(&format!("domain {} passed its soft quota of {soft} nodes ({now})", c.domid));
        }
    }
}

fn quota_text(title: &str, q: &Quotas) -> String {
    let mut t = format!("{title} (0: no check):\n");
    for n in QUOTA_NAMES {
        let _ = writeln!(t, "{n}: {}", get(q, n).map_or(0, shown));
    }
    t
}
