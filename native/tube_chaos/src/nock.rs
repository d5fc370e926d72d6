//! The opening side ("nock") of a tube, for a process that is not a BEAM: the same Xenstore
//! layout and states as `src/tube_server.erl` (publish_nock / write_nock), so a BEAM node
//! accepts it like any other peer, after which the caller owns a real `tube_ring::Tube`
//! and can misbehave with it.
//!
//! ```text
//! /local/domain/<me>/data/nock/<tip>/<tid>   perms n<me>,r<tip>   tip, state
//! /local/domain/<tip>/data/tip/<me>/<tid>    perms n<me>,b<tip>   nock, state,
//!                                            tx-ring-ref, rx-ring-ref, event-channel
//! ```

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
    /// Unknown: how the nock creates the tip's `state`.
    pub const UNKNOWN: &[u8] = b"0";
    /// InitWait: the nock's state once published.
    pub const INIT_WAIT: &[u8] = b"2";
    /// Initialised: the tip has published its ring.
    pub const INITIALISED: &[u8] = b"3";
    /// Connected.
    pub const CONNECTED: &[u8] = b"4";
}

/// How often a transaction that met a concurrent commit is retried.
const TX_RETRIES: usize = 20;

/// A Xenstore connection bound to a domain of its own.
pub fn introduce(xs_path: &Path) -> Result<(Client, u32), ChaosError> {
    let xs = Client::connect(xs_path)?;
    xs.set_timeout(Some(Duration::from_secs(10)));
    let me = xs.introduce_self(None)?;
    Ok((xs, me))
}

/// `/local/domain/<me>/data/nock/<tip>/<tid>`.
pub fn nock_path(me: u32, tip: u32, tid: u32) -> String {
    format!("/local/domain/{me}/data/nock/{tip}/{tid}")
}

/// `/local/domain/<tip>/data/tip/<me>/<tid>`.
pub fn tip_path(tip: u32, me: u32, tid: u32) -> String {
    format!("/local/domain/{tip}/data/tip/{me}/{tid}")
}

/// One tube being opened (or open) from domain `me` to domain `tip`.
#[derive(Debug)]
pub struct Nock {
    /// The connection, bound to domain `me`.
    pub xs: Client,
    /// Our domid.
    pub me: u32,
    /// The accepting domain.
    pub tip: u32,
    /// Tube id.
    pub tid: u32,
}

fn perms(me: u32, other: Access, tip: u32) -> PermList {
    PermList(vec![Perm { access: Access::None, domid: me }, Perm { access: other, domid: tip }])
}

impl Nock {
    /// Our nock directory.
    pub fn nock_path(&self) -> String {
        nock_path(self.me, self.tip, self.tid)
    }

    /// The tip's directory for this tube.
    pub fn tip_path(&self) -> String {
        tip_path(self.tip, self.me, self.tid)
    }

    /// Publishes both directories in one transaction, as the BEAM's nock does.
    pub fn publish(xs: Client, me: u32, tip: u32, tid: u32) -> Result<Nock, ChaosError> {
        let n = Nock { xs, me, tip, tid };
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
        let xs = &self.xs;
        xs.mkdir(tx, &nock)?;
        xs.set_perms(tx, &nock, &perms(self.me, Access::Read, self.tip))?;
        xs.write(tx, &format!("{nock}/tip"), tip.as_bytes())?;
        xs.write(tx, &format!("{nock}/state"), state::INIT_WAIT)?;
        xs.mkdir(tx, &tip)?;
        // data/tip/<me> may already be ours from an earlier tube; as in the BEAM, not fatal.
        let parent = format!("/local/domain/{}/data/tip/{}", self.tip, self.me);
        let _ = xs.set_perms(tx, &parent, &perms(self.me, Access::Read, self.tip));
        xs.set_perms(tx, &tip, &perms(self.me, Access::Both, self.tip))?;
        xs.write(tx, &format!("{tip}/nock"), nock.as_bytes())?;
        xs.write(tx, &format!("{tip}/state"), state::UNKNOWN)?;
        for field in ["tx-ring-ref", "rx-ring-ref", "event-channel"] {
            xs.write(tx, &format!("{tip}/{field}"), b"")?;
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

/// Tip entries under `/local/domain/<tip>/data/tip/<me>/` that no tip may take as tubes: a
/// `nock` naming another domain's directory, a state other than 0, names that are not
/// numbers, oversized values. Returns the paths written (tids from `first_tid` on).
pub fn bogus_entries(xs: &Client, me: u32, tip: u32, first_tid: u32, rng: &mut Rng) -> Vec<String> {
    let base = format!("/local/domain/{tip}/data/tip/{me}");
    let mut made = Vec::new();
    let mut put = |dir: String, nock: String, st: &[u8]| {
        let ok = xs.write(0, &format!("{dir}/state"), st).is_ok() && xs.write(0, &format!("{dir}/nock"), nock.as_bytes()).is_ok();
        if ok {
            made.push(dir);
        }
    };
    let t = first_tid;
    put(format!("{base}/{t}"), nock_path(me.wrapping_add(1), tip, t), b"0");
    put(format!("{base}/{}", t + 1), nock_path(me, tip, t + 1), b"1");
    put(format!("{base}/x{}", t + 2), nock_path(me, tip, t + 2), b"0");
    put(format!("{base}/-{}", t + 3), nock_path(me, tip, t + 3), b"0");
    put(format!("{base}/{}", t + 4), String::from_utf8_lossy(&rng.bytes(600)).into_owned(), b"0");
    put(format!("{base}/{}", t + 5), nock_path(me, tip, t + 5), &rng.bytes(40));
    put(format!("{base}/99999999999999999999"), nock_path(me, tip, 0), b"0");
    made
}
