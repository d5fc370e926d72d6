//! Bounded property-based fuzzing of the decoder + request handlers, in process: random
//! request sequences (valid and garbage) from several connections, some bound to domains.
//! Invariant: no panic, one reply per request, the tree stays consistent, and an
//! unprivileged domain never changes a node it may not write.

use proptest::prelude::*;
use std::sync::Arc;
use tube_xs::wire::{Decoder, Header, Message, MsgType, HEADER_LEN};
use tubestored::outbox::Outbox;
use tubestored::store::Store;
use tubestored::{Quotas, State};

const PATHS: &[&str] = &["/", "/a", "/a/b", "/a/b/c", "/local/domain/1", "/local/domain/1/x", "/local/domain/2/y", "rel", "rel/z", "@releaseDomain", "/a//b", "", "/\u{1}"];

fn arb_payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        (0..PATHS.len(), proptest::collection::vec(any::<u8>(), 0..8)).prop_map(|(i, v)| {
            let mut p = PATHS[i].as_bytes().to_vec();
            p.push(0);
            p.extend(v);
            p
        }),
        (0..PATHS.len(), 0..4usize).prop_map(|(i, t)| {
            let mut p = PATHS[i].as_bytes().to_vec();
            p.push(0);
            p.extend_from_slice(["tok", "n1", "r2", "b0"][t].as_bytes());
            p.push(0);
            p
        }),
        Just(b"T\0".to_vec()),
        Just(b"F\0".to_vec()),
        Just(b"auto\0self\0".to_vec()),
        Just(b"2\0self\0".to_vec()),
        Just(b"1\0".to_vec()),
        Just(b"3\0 0\0 0\0".to_vec()),
        proptest::collection::vec(any::<u8>(), 0..64),
    ]
}

#[derive(Debug, Clone)]
struct Req {
    conn: usize,
    ty: u32,
    tx: u32,
    payload: Vec<u8>,
    /// Replaced by raw garbage bytes on the wire.
    garbage: Option<Vec<u8>>,
}

fn arb_req() -> impl Strategy<Value = Req> {
    (
        0..3usize,
        prop_oneof![0..28u32, Just(0xffff), any::<u32>()],
        prop_oneof![Just(0u32), 1..4u32],
        arb_payload(),
        proptest::option::weighted(0.05, proptest::collection::vec(any::<u8>(), 0..40)),
    )
        .prop_map(|(conn, ty, tx, payload, garbage)| Req { conn, ty, tx, payload, garbage })
}

fn count_replies(bytes: &[u8]) -> (usize, usize) {
    let mut d = Decoder::new();
    d.push(bytes);
    let (mut replies, mut events) = (0, 0);
    while let Ok(Some(m)) = d.next() {
        if m.ty == MsgType::WatchEvent as u32 {
            events += 1;
        } else {
            replies += 1;
        }
    }
    (replies, events)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, max_shrink_iters: 200, ..ProptestConfig::default() })]

    #[test]
    fn handlers_survive_any_sequence(reqs in proptest::collection::vec(arb_req(), 1..60)) {
        let mut st = State::new(Store::new(), Quotas { max_nodes: 20, ..Quotas::default() });
        let boxes: Vec<Arc<Outbox>> = (0..3).map(|_| Arc::new(Outbox::new(None, 1 << 20))).collect();
        for (i, b) in boxes.iter().enumerate() {
            st.add_conn(i as u64, b.clone());
        }
        let mut decoders: Vec<Decoder> = (0..3).map(|_| Decoder::new()).collect();
        let mut dead = [false; 3];
        for r in reqs {
            if dead[r.conn] {
                continue;
            }
            let mut wire = Vec::new();
            match &r.garbage {
                Some(g) => wire.extend_from_slice(g),
                None => Message { ty: r.ty, req_id: 7, tx_id: r.tx, payload: r.payload.clone() }.encode(&mut wire),
            }
            let d = &mut decoders[r.conn];
            d.push(&wire);
            let before = snapshot_before(&st, r.conn);
            loop {
                match d.next() {
                    Ok(Some(m)) => {
                        let _ = boxes[r.conn].take();
                        st.handle(r.conn as u64, &m, false);
                        let out = boxes[r.conn].take();
                        let (replies, _) = count_replies(&out);
                        // A RELEASE may close this connection (its domain was released): then no reply.
                        let closed = !st.conns.contains_key(&(r.conn as u64)) || boxes[r.conn].is_dead();
                        prop_assert!(replies == 1 || closed, "one reply per request");
                    }
                    Ok(None) => break,
                    Err(_) => {
                        st.close_conn(r.conn as u64);
                        dead[r.conn] = true;
                        break;
                    }
                }
            }
            prop_assert!(st.store.check_invariants().is_ok(), "{:?}", st.store.check_invariants());
            // A domain never modified or removed what it could not write. Removed is allowed
            // only with an ancestor the domain could write and removed (RM takes the whole
            // subtree, as in Xen), or when the domain itself was released.
            if let Some(b) = &before {
                if st.domains.contains_key(&b.dom) {
                    for (p, (n, writable)) in &b.nodes {
                        if *writable {
                            continue;
                        }
                        match st.store.get(p) {
                            Some(now) => prop_assert!(
                                now.value == n.value && now.perms == n.perms,
                                "domain {} changed {}", b.dom, p
                            ),
                            None => prop_assert!(
                                removed_with_writable_ancestor(b, &st, p),
                                "domain {} removed {}, which it could not write", b.dom, p
                            ),
                        }
                    }
                }
            }
            // Released by dom0: the server closes a killed connection.
            for (i, b) in boxes.iter().enumerate() {
                if !st.conns.contains_key(&(i as u64)) || b.is_dead() {
                    dead[i] = true;
                }
            }
        }
        for i in 0..3u64 {
            st.close_conn(i);
        }
        prop_assert!(st.store.check_invariants().is_ok());
    }

    #[test]
    fn decoder_never_overreads(bytes in proptest::collection::vec(any::<u8>(), 0..2 * HEADER_LEN + 64)) {
        let mut d = Decoder::new();
        d.push(&bytes);
        while let Ok(Some(m)) = d.next() {
            prop_assert!(m.payload.len() <= bytes.len());
        }
        let _ = Header::parse(&[0; HEADER_LEN]);
    }
}

/// The tree before a request of a bound connection: every node, and whether its domain may
/// write it.
struct Before {
    dom: u32,
    nodes: std::collections::HashMap<String, (tubestored::store::Node, bool)>,
}

fn snapshot_before(st: &State, conn: usize) -> Option<Before> {
    let dom = st.conns.get(&(conn as u64)).and_then(|c| c.domid)?;
    let nodes = st
        .store
        .sorted_paths()
        .into_iter()
        .filter_map(|p| {
            let n = st.store.get(p)?;
            Some((p.to_owned(), (n.clone(), n.perms.can_write(dom))))
        })
        .collect();
    Some(Before { dom, nodes })
}

/// True if a proper ancestor of `p` was writable by the domain before and is gone now.
fn removed_with_writable_ancestor(b: &Before, st: &State, p: &str) -> bool {
    let mut a = p;
    while let Some(parent) = tube_xs::path::parent(a) {
        if b.nodes.get(parent).is_some_and(|(_, w)| *w) && st.store.get(parent).is_none() {
            return true;
        }
        a = parent;
    }
    false
}
