//! The opening side ("nock") of a tube, for a process that is not a BEAM: it writes the
//! Xenstore nodes a BEAM nock writes, so a BEAM node accepts it like any other peer, after
//! which the caller owns a real `tube_ring::Tube` and can misbehave with it.
//!
//! Which nodes, with which values and permissions, is not written down here: it is a
//! [`Layout`] recorded by the test suite from a real BEAM node's open (see
//! `test/support/chaos_hostile.ex`), passed as a file, so it cannot drift from what
//! `tube` writes. What stays here is the handshake's protocol: the XenbusState values the
//! two sides step through, and the names of the nodes the tip fills in (`state`,
//! `event-channel`, `tx-ring-ref`, `rx-ring-ref`), Xen's split-driver conventions.
//!
//! Layout file, one entry a line, fields separated by tabs, in paths and values `{me}`,
//! `{tip}` and `{tid}` standing for the opener's domid, the acceptor's and the tube id:
//!
//! ```text
//! nock  <path of the opener's directory>
//! tip   <path of the acceptor's directory>
//! node  <path>  <permissions, as "n{me},r{tip}">  <value, hex>
//! ```
//!
//! `node` lines come parents first: the nodes one open creates, in one transaction.

use std::path::Path;
use std::time::{Duration, Instant};

use tube_ring::Tube;
use tube_xs::client::{Client, Error as XsError};
use tube_xs::perms::{Access, Perm, PermList};
use tube_xs::XsError as XsCode;

use crate::rng::Rng;
use crate::ChaosError;

/// Handshake states (Xen's XenbusState) as written in `state` nodes.
pub mod state {
    /// Initialised: the tip has published its ring.
    pub const INITIALISED: &[u8] = b"3";
    /// Connected.
    pub const CONNECTED: &[u8] = b"4";
    /// Closing: the side that writes it is leaving.
    pub const CLOSING: &[u8] = b"5";
}

/// One node of a [`Layout`], as templates.
#[derive(Debug, Clone)]
struct NodeTemplate {
    path: String,
    perms: String,
    value: Vec<u8>,
}

/// The nodes a nock writes for one tube, as recorded from a BEAM node (see the module docs).
#[derive(Debug, Clone)]
pub struct Layout {
    nock: String,
    tip: String,
    nodes: Vec<NodeTemplate>,
}

/// `template` with `{me}`, `{tip}` and `{tid}` filled in.
fn fill(template: &str, me: u32, tip: u32, tid: u32) -> String {
    template.replace("{me}", &me.to_string()).replace("{tip}", &tip.to_string()).replace("{tid}", &tid.to_string())
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

impl Layout {
    /// Reads a layout file.
    pub fn read(path: &Path) -> Result<Layout, ChaosError> {
        Layout::parse(&std::fs::read_to_string(path)?)
    }

    /// Parses the text of a layout file.
    pub fn parse(text: &str) -> Result<Layout, ChaosError> {
        let bad = |l: &str| ChaosError::Protocol(format!("bad layout line {l:?}"));
        let (mut nock, mut tip, mut nodes) = (None, None, Vec::new());
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let f: Vec<&str> = line.split('\t').collect();
            match f.as_slice() {
                ["nock", p] => nock = Some(p.to_string()),
                ["tip", p] => tip = Some(p.to_string()),
                ["node", p, perms, v] => {
                    PermList::parse_str(&fill(perms, 1, 2, 3)).map_err(|_| bad(line))?;
                    nodes.push(NodeTemplate { path: p.to_string(), perms: perms.to_string(), value: unhex(v).ok_or_else(|| bad(line))? })
                }
                _ => return Err(bad(line)),
            }
        }
        let missing = |what: &str| ChaosError::Protocol(format!("layout without {what}"));
        let layout = Layout { nock: nock.ok_or_else(|| missing("nock"))?, tip: tip.ok_or_else(|| missing("tip"))?, nodes };
        for dir in [&layout.nock, &layout.tip] {
            if !layout.nodes.iter().any(|n| &n.path == dir) {
                return Err(ChaosError::Protocol(format!("layout does not create {dir}")));
            }
        }
        Ok(layout)
    }

    /// The opener's directory of tube `tid` from `me` to `tip`.
    pub fn nock_path(&self, me: u32, tip: u32, tid: u32) -> String {
        fill(&self.nock, me, tip, tid)
    }

    /// The acceptor's directory of that tube.
    pub fn tip_path(&self, tip: u32, me: u32, tid: u32) -> String {
        fill(&self.tip, me, tip, tid)
    }

    /// The directory holding the acceptor's entries from `me` (the tip directory's parent).
    pub fn tip_entries(&self, tip: u32, me: u32) -> String {
        let t = self.tip_path(tip, me, 0);
        t.rsplit_once('/').map_or(t.clone(), |(parent, _)| parent.to_string())
    }

    /// The state the nock leaves in the acceptor's directory, which the acceptor expects.
    fn fresh_tip_state(&self) -> Option<&[u8]> {
        let state = format!("{}/state", self.tip);
        self.nodes.iter().find(|n| n.path == state).map(|n| &n.value[..])
    }
}

/// A Xenstore connection bound to a domain of its own.
pub fn introduce(xs_path: &Path) -> Result<(Client, u32), ChaosError> {
    let xs = Client::connect(xs_path)?;
    xs.set_timeout(Some(Duration::from_secs(10)));
    let me = xs.introduce_self(None)?;
    Ok((xs, me))
}

/// One tube being opened (or open) from domain `me` to domain `tip`.
#[derive(Debug)]
pub struct Nock {
    /// The connection, bound to domain `me`.
    pub xs: Client,
    /// What to write.
    pub layout: Layout,
    /// Our domid.
    pub me: u32,
    /// The accepting domain.
    pub tip: u32,
    /// Tube id.
    pub tid: u32,
}

/// How often a transaction that met a concurrent commit is retried.
const TX_RETRIES: usize = 20;

/// Permissions `me` hands `tip` on garbage nodes (not part of any layout).
fn perms(me: u32, other: Access, tip: u32) -> PermList {
    PermList(vec![Perm { access: Access::None, domid: me }, Perm { access: other, domid: tip }])
}

impl Nock {
    /// Our nock directory.
    pub fn nock_path(&self) -> String {
        self.layout.nock_path(self.me, self.tip, self.tid)
    }

    /// The tip's directory for this tube.
    pub fn tip_path(&self) -> String {
        self.layout.tip_path(self.tip, self.me, self.tid)
    }

    /// Publishes the layout's nodes in one transaction, as the BEAM's nock does.
    pub fn publish(xs: Client, layout: &Layout, me: u32, tip: u32, tid: u32) -> Result<Nock, ChaosError> {
        let n = Nock { xs, layout: layout.clone(), me, tip, tid };
        for _ in 0..TX_RETRIES {
            let tx = n.xs.transaction_start()?;
            match n.write_both(tx) {
                Ok(()) => match n.xs.transaction_end(tx, true) {
                    Ok(()) => return Ok(n),
                    Err(XsError::Xs(XsCode::Eagain)) => continue,
                    Err(e) => return Err(e.into()),
                },
                Err(e) => {
                    let _ = n.xs.transaction_end(tx, false);
                    return Err(e.into());
                }
            }
        }
        Err(ChaosError::Xs(XsError::Xs(XsCode::Eagain)))
    }

    fn write_both(&self, tx: u32) -> Result<(), XsError> {
        let (nock, tip) = (self.nock_path(), self.tip_path());
        for node in &self.layout.nodes {
            let path = fill(&node.path, self.me, self.tip, self.tid);
            let value = match std::str::from_utf8(&node.value) {
                Ok(v) if v.starts_with('/') => fill(v, self.me, self.tip, self.tid).into_bytes(),
                _ => node.value.clone(),
            };
            let perms = PermList::parse_str(&fill(&node.perms, self.me, self.tip, self.tid)).map_err(XsError::Xs)?;
            let r = self.xs.write(tx, &path, &value).and_then(|()| self.xs.set_perms(tx, &path, &perms));
            // Directories above the tube's own two may belong to an earlier tube already;
            // as in the BEAM, failing to set them up again is not fatal.
            let ours = [&nock, &tip].iter().any(|d| path == **d || path.starts_with(&format!("{d}/")));
            if ours {
                r?;
            }
        }
        Ok(())
    }

    /// Waits (up to `timeout`) for the tip to publish its ring with state 3; returns
    /// (event channel, tx ring ref, rx ring ref) as the tip wrote them.
    pub fn wait_offer(&self, timeout: Duration) -> Result<(String, String, String), ChaosError> {
        let deadline = Instant::now() + timeout;
        let tip = self.tip_path();
        let token = format!("chaos/{}", self.tid);
        let events = self.xs.events();
        self.xs.watch(&tip, &token)?;
        let result = loop {
            match self.xs.read(0, &format!("{tip}/state")) {
                Ok(s) if s == state::INITIALISED => break self.read_refs(),
                Ok(_) => {}
                Err(XsError::Xs(XsCode::Enoent)) => break Err(ChaosError::Protocol("the tip removed the tube".into())),
                Err(e) => break Err(e.into()),
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break Err(ChaosError::Timeout("state 3 from the tip"));
            }
            // Any event may be the one; the state is re-read after each.
            let _ = events.recv_timeout(left);
        };
        let _ = self.xs.unwatch(&tip, &token);
        result
    }

    fn read_refs(&self) -> Result<(String, String, String), ChaosError> {
        let tip = self.tip_path();
        let read = |f: &str| -> Result<String, ChaosError> {
            let v = self.xs.read(0, &format!("{tip}/{f}"))?;
            String::from_utf8(v).map_err(|_| ChaosError::Protocol(format!("{f} is not UTF-8")))
        };
        Ok((read("event-channel")?, read("tx-ring-ref")?, read("rx-ring-ref")?))
    }

    /// Waits for the offer, maps the ring and announces state 4.
    pub fn connect(&self, timeout: Duration) -> Result<Tube, ChaosError> {
        let (ch, tx, rx) = self.wait_offer(timeout)?;
        let tube = tube_ring::connect(&ch, &tx, &rx, timeout)?;
        self.xs.write(0, &format!("{}/state", self.nock_path()), state::CONNECTED)?;
        Ok(tube)
    }

    /// Removes both directories (what the BEAM's nock does when a tube ends).
    pub fn remove(&self) {
        let _ = self.xs.rm(0, &self.nock_path());
        let _ = self.xs.rm(0, &self.tip_path());
    }

    /// Leaves as an honest nock does, whatever garbage came before: puts the nock's own
    /// nodes back as the layout has them (ignoring what cannot be), then writes the closing
    /// state, which the tip must answer by closing the tube.
    pub fn leave(&self) -> Result<(), ChaosError> {
        let nock = self.nock_path();
        for node in &self.layout.nodes {
            let path = fill(&node.path, self.me, self.tip, self.tid);
            if path != nock && !path.starts_with(&format!("{nock}/")) {
                continue;
            }
            let value = match std::str::from_utf8(&node.value) {
                Ok(v) if v.starts_with('/') => fill(v, self.me, self.tip, self.tid).into_bytes(),
                _ => node.value.clone(),
            };
            let _ = self.xs.write(0, &path, &value);
            if let Ok(perms) = PermList::parse_str(&fill(&node.perms, self.me, self.tip, self.tid)) {
                let _ = self.xs.set_perms(0, &path, &perms);
            }
        }
        self.xs.write(0, &format!("{nock}/state"), state::CLOSING)?;
        Ok(())
    }

    /// Writes `n` pieces of garbage into this tube's nodes: impossible states, huge and
    /// binary values, bogus refs and paths, removed nodes, children under leaves, changed
    /// permissions. Returns how many requests the daemon accepted and refused. The tip must
    /// shrug all of it off (close the tube at worst), never crash.
    pub fn garbage(&self, rng: &mut Rng, n: u64) -> (u64, u64) {
        let (nock, tip) = (self.nock_path(), self.tip_path());
        let nodes = [
            format!("{nock}/state"),
            format!("{nock}/tip"),
            format!("{tip}/state"),
            format!("{tip}/nock"),
            format!("{tip}/tx-ring-ref"),
            format!("{tip}/rx-ring-ref"),
            format!("{tip}/event-channel"),
        ];
        let (mut ok, mut refused) = (0, 0);
        for _ in 0..n {
            let node = &nodes[rng.below(nodes.len() as u64) as usize];
            let r = match rng.below(8) {
                0 => self.xs.rm(0, node),
                1 => self.xs.mkdir(0, &format!("{node}/child{}", rng.below(4))),
                2 => self.xs.set_perms(0, node, &perms(self.me, Access::Write, self.tip)),
                _ => self.xs.write(0, node, &garbage_value(rng, &tip)),
            };
            if r.is_ok() {
                ok += 1;
            } else {
                refused += 1;
            }
        }
        (ok, refused)
    }
}

/// A value no honest nock writes.
fn garbage_value(rng: &mut Rng, tip: &str) -> Vec<u8> {
    match rng.below(9) {
        0 => [&b"0"[..], b"1", b"2", b"3", b"4", b"5", b"6", b"7", b"-1", b"", b"4 ", b"99999999999999999999999"]
            [rng.below(12) as usize]
            .to_vec(),
        1 => {
            let len = rng.below(2100) as usize;
            rng.bytes(len)
        }
        2 => b"@tube-../../etc/passwd".to_vec(),
        3 => format!("0:{:032x}", rng.next_u64()).into_bytes(),
        4 => format!("1:{}", "f".repeat(rng.below(3000) as usize)).into_bytes(),
        5 => format!("{tip}/../../../../").into_bytes(),
        6 => b"/local/domain/0/data/nock/0/0".to_vec(),
        7 => vec![0u8; 1 + rng.below(64) as usize],
        _ => "\u{feff}état\u{0}".as_bytes().to_vec(),
    }
}

/// Tip entries in the acceptor's directory of entries from `me` that no tip may take as
/// tubes: a `nock` naming another domain's directory, a state other than the one a fresh
/// entry has, names that are not numbers, oversized values. Returns the paths written (tids
/// from `first_tid` on).
pub fn bogus_entries(xs: &Client, layout: &Layout, me: u32, tip: u32, first_tid: u32, rng: &mut Rng) -> Vec<String> {
    let base = layout.tip_entries(tip, me);
    let fresh = layout.fresh_tip_state().unwrap_or(b"0").to_vec();
    let stale: Vec<u8> = if fresh == b"1" { b"2".to_vec() } else { b"1".to_vec() };
    let mut made = Vec::new();
    let mut put = |dir: String, nock: String, st: &[u8]| {
        let ok = xs.write(0, &format!("{dir}/state"), st).is_ok() && xs.write(0, &format!("{dir}/nock"), nock.as_bytes()).is_ok();
        if ok {
            made.push(dir);
        }
    };
    let t = first_tid;
    let nock = |me: u32, tid: u32| layout.nock_path(me, tip, tid);
    put(format!("{base}/{t}"), nock(me.wrapping_add(1), t), &fresh);
    put(format!("{base}/{}", t + 1), nock(me, t + 1), &stale);
    put(format!("{base}/x{}", t + 2), nock(me, t + 2), &fresh);
    put(format!("{base}/-{}", t + 3), nock(me, t + 3), &fresh);
    put(format!("{base}/{}", t + 4), String::from_utf8_lossy(&rng.bytes(600)).into_owned(), &fresh);
    put(format!("{base}/{}", t + 5), nock(me, t + 5), &rng.bytes(40));
    put(format!("{base}/99999999999999999999"), nock(me, 0), &fresh);
    made
}

#[cfg(test)]
mod tests {
    use super::*;

    const LAYOUT: &str = "nock\t/n/{me}/{tip}/{tid}\ntip\t/t/{tip}/{me}/{tid}\n\
        node\t/n/{me}/{tip}/{tid}\tn{me},r{tip}\t\n\
        node\t/n/{me}/{tip}/{tid}/tip\tn{me},r{tip}\t2f742f7b7469707d2f7b6d657d2f7b7469647d\n\
        node\t/t/{tip}/{me}/{tid}\tn{me},b{tip}\t\n\
        node\t/t/{tip}/{me}/{tid}/state\tn{me},b{tip}\t30\n";

    #[test]
    fn a_layout_is_filled_in_for_each_tube() {
        let l = Layout::parse(LAYOUT).unwrap();
        assert_eq!(l.nock_path(5, 7, 9), "/n/5/7/9");
        assert_eq!(l.tip_path(7, 5, 9), "/t/7/5/9");
        assert_eq!(l.tip_entries(7, 5), "/t/7/5");
        assert_eq!(l.fresh_tip_state(), Some(&b"0"[..]));
        assert_eq!(String::from_utf8(l.nodes[1].value.clone()).unwrap(), "/t/{tip}/{me}/{tid}");
    }

    #[test]
    fn bad_layouts_are_refused() {
        for bad in ["", "nock\t/n\n", "nock\t/n\ntip\t/t\n", "nock\t/n\ntip\t/t\nnode\t/n\tq5\t\nnode\t/t\tn1\t\n", "x\ty"] {
            assert!(Layout::parse(bad).is_err(), "{bad:?}");
        }
    }
}
