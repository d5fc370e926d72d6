use super::*;
use proptest::prelude::*;

/// Buffers in plain memory; delivered messages are recorded in order.
#[derive(Default)]
struct VecStore {
    bufs: Vec<Option<Vec<u8>>>,
    delivered: Vec<Vec<u8>>,
    /// Allocations left before memory "runs out" (`None`: never).
    allocs_left: Option<usize>,
    /// Every resize fails, leaving the buffer as it was.
    resize_fails: bool,
    /// Every resize moves the buffer (a fresh one, the old one's bytes copied in).
    resize_moves: bool,
}

impl Store for &mut VecStore {
    type Buf = usize;

    fn alloc(&mut self, cap: usize) -> Option<(usize, *mut u8)> {
        if let Some(n) = self.allocs_left.as_mut() {
            if *n == 0 {
                return None;
            }
            *n -= 1;
        }
        let mut v = vec![0u8; cap];
        let p = v.as_mut_ptr();
        self.bufs.push(Some(v));
        Some((self.bufs.len() - 1, p))
    }

    fn resize(&mut self, buf: usize, cap: usize) -> Result<(usize, *mut u8), usize> {
        let v = self.bufs[buf].as_mut().expect("live buffer");
        if self.resize_fails {
            return Err(buf);
        }
        if self.resize_moves {
            let mut moved = vec![0u8; cap];
            let keep = cap.min(v.len());
            moved[..keep].copy_from_slice(&v[..keep]);
            // The old bytes are scribbled over: a pointer kept into them would show.
            v.fill(0xEE);
            *v = moved;
            return Ok((buf, v.as_mut_ptr()));
        }
        v.resize(cap, 0);
        Ok((buf, v.as_mut_ptr()))
    }

    fn deliver(&mut self, buf: usize, off: usize, len: usize) {
        let v = self.bufs[buf].take().expect("live buffer");
        self.delivered.push(v[off..off + len].to_vec());
    }

    fn free(&mut self, buf: usize) {
        self.bufs[buf].take().expect("live buffer");
    }
}

impl VecStore {
    fn live(&self) -> usize {
        self.bufs.iter().filter(|b| b.is_some()).count()
    }
}

/// Messages up to this long go through the port's scratch buffer (`Defrag::pass`) when no
/// slot is offered. Shorter than the port's (1 KiB), so that the short messages the tests
/// make take both ways.
const SCRATCH: usize = 64;

/// Feeds messages through a joiner the way the port driver does: into the slot it offers,
/// else short ones from a scratch buffer, else into a buffer of their own.
fn feed(d: &mut Defrag<&mut VecStore>, msg: &[u8]) -> Result<(), NoMemory> {
    if let Some(p) = d.slot(msg.len()) {
        // SAFETY: the slot has room for the message.
        unsafe { ptr::copy_nonoverlapping(msg.as_ptr(), p, msg.len()) };
        return match d.landed(msg.len())? {
            Landed::Held | Landed::Done => Ok(()),
            Landed::Other(buf, data, len) => deliver_own(d, buf, data, len),
        };
    }
    if msg.len() <= SCRATCH {
        d.pass(msg)?;
        d.store.delivered.push(msg.to_vec());
        return Ok(());
    }
    let (buf, data) = d.store.alloc(msg.len()).ok_or(NoMemory)?;
    // SAFETY: a fresh buffer of the message's length.
    unsafe { ptr::copy_nonoverlapping(msg.as_ptr(), data, msg.len()) };
    deliver_own(d, buf, data, msg.len())
}

/// Feeds `input` through a fresh joiner, dropped at the end as a closing port drops it;
/// its counts.
fn feed_all(store: &mut VecStore, input: &[Vec<u8>]) -> Counts {
    let mut d = Defrag::new(store);
    for m in input {
        feed(&mut d, m).unwrap();
    }
    d.counts()
}

fn deliver_own(d: &mut Defrag<&mut VecStore>, buf: usize, data: *mut u8, len: usize) -> Result<(), NoMemory> {
    if let Some(buf) = d.arrive(buf, data, len)? {
        d.store.deliver(buf, 0, len);
    }
    Ok(())
}

fn first(seq: u64, id: u64, body: &[u8]) -> Vec<u8> {
    let mut v = vec![VERSION_MAGIC, DIST_FRAG_HEADER];
    v.extend_from_slice(&seq.to_be_bytes());
    v.extend_from_slice(&id.to_be_bytes());
    v.extend_from_slice(body);
    v
}

fn cont(seq: u64, id: u64, body: &[u8]) -> Vec<u8> {
    let mut v = continuation_header(&seq.to_be_bytes(), id).to_vec();
    v.extend_from_slice(body);
    v
}

fn whole(body: &[u8]) -> Vec<u8> {
    let mut v = vec![VERSION_MAGIC, DIST_HEADER];
    v.extend_from_slice(body);
    v
}

/// A message of `parts` cut into fragments as the emulator does: the fragments, and the
/// message as one piece.
fn fragmented(seq: u64, parts: &[Vec<u8>]) -> (Vec<Vec<u8>>, Vec<u8>) {
    let n = parts.len() as u64;
    let mut frags = vec![first(seq, n, &parts[0])];
    for (i, p) in parts.iter().enumerate().skip(1) {
        frags.push(cont(seq, n - i as u64, p));
    }
    (frags, whole(&parts.concat()))
}

fn bytes(len: usize, tag: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(tag)).collect()
}

#[test]
fn consecutive_fragments_become_one_whole_message() {
    let mut store = VecStore::default();
    let parts = vec![bytes(70_000, 1), bytes(65_536, 2), bytes(100, 3)];
    let (frags, expected) = fragmented(7, &parts);
    assert_eq!(feed_all(&mut store, &frags), Counts { joined: 1, passed_on: 0 });
    assert_eq!(store.delivered, vec![expected]);
    assert_eq!(store.live(), 0);
}

#[test]
fn a_message_between_fragments_sends_them_on_as_they_came() {
    let mut store = VecStore::default();
    let (frags, _) = fragmented(9, &[bytes(70_000, 1), bytes(70_000, 2), bytes(70_000, 3)]);
    let small = whole(&bytes(40, 9));
    let input = vec![frags[0].clone(), frags[1].clone(), small, frags[2].clone()];
    assert_eq!(feed_all(&mut store, &input), Counts { joined: 0, passed_on: 2 });
    assert_eq!(store.delivered, input);
    assert_eq!(store.live(), 0);
}

#[test]
fn interleaved_messages_keep_their_order_and_back_off() {
    let mut store = VecStore::default();
    let (a, _) = fragmented(1, &[bytes(70_000, 1), bytes(70_000, 2), bytes(7, 3)]);
    let (b, _) = fragmented(2, &[bytes(70_000, 3), bytes(70_000, 4), bytes(9, 5)]);
    let input = vec![a[0].clone(), b[0].clone(), a[1].clone(), b[1].clone(), a[2].clone(), b[2].clone()];
    let (c, c_whole) = fragmented(3, &[bytes(70_000, 5), bytes(70_000, 6), bytes(10, 7)]);
    {
        let mut d = Defrag::new(&mut store);
        for m in &input {
            feed(&mut d, m).unwrap();
        }
        // The interruption makes the next first fragment pass unheld (b's was: backoff 1),
        // so c, after the backoff, is put together again.
        for m in &c {
            feed(&mut d, m).unwrap();
        }
    }
    let mut expected = input.clone();
    expected.push(c_whole);
    assert_eq!(store.delivered, expected);
    assert_eq!(store.live(), 0);
}

#[test]
fn a_wrong_fragment_id_or_sequence_is_not_joined() {
    for bad in [cont(5, 3, &bytes(500, 1)), cont(6, 2, &bytes(500, 1)), cont(5, 2, &[]).to_vec()] {
        let mut store = VecStore::default();
        let f0 = first(5, 3, &bytes(70_000, 0));
        {
            let mut d = Defrag::new(&mut store);
            feed(&mut d, &f0).unwrap();
            feed(&mut d, &bad).unwrap();
        }
        assert_eq!(store.delivered, vec![f0, bad]);
        assert_eq!(store.live(), 0);
    }
}

#[test]
fn ticks_and_short_messages_never_land_in_the_open_buffer() {
    let mut store = VecStore::default();
    let mut d = Defrag::new(&mut store);
    feed(&mut d, &first(5, 3, &bytes(70_000, 0))).unwrap();
    assert!(d.slot(0).is_none());
    assert!(d.slot(FRAG_HEADER).is_none());
    assert!(d.slot(FRAG_HEADER + 1).is_some());
}

/// An emulator never starts a message under a sequence id it has open; a peer may. Such a
/// first fragment must reach the emulator as it came, not as the start of a joined message.
#[test]
fn a_first_fragment_under_a_sequence_id_open_in_the_emulator_is_not_held() {
    let mut store = VecStore::default();
    let input = vec![
        first(5, 3, &bytes(70_000, 0)),
        // Interrupts; passes unheld itself (backoff).
        first(1, 3, &bytes(70_000, 1)),
        // Under an id the emulator has open: as it came, and the fragments after it go on
        // with message 1.
        first(1, 3, &bytes(70_000, 2)),
        cont(1, 2, &bytes(70_000, 3)),
        cont(1, 1, &bytes(70_000, 4)),
    ];
    assert_eq!(feed_all(&mut store, &input).joined, 0);
    assert_eq!(events(&store.delivered), events(&input));
    assert_eq!(store.live(), 0);
}

/// Held fragments sent on leave their message open in the emulator, like any.
#[test]
fn fragments_sent_on_leave_their_sequence_id_open_in_the_emulator() {
    let mut store = VecStore::default();
    let input = vec![
        first(1, 4, &bytes(70_000, 0)),
        cont(1, 3, &bytes(70_000, 1)),
        // Interrupts; passes unheld itself (backoff).
        first(2, 3, &bytes(70_000, 2)),
        // Under an id the emulator has open: as it came, and the fragments after it end
        // message 1.
        first(1, 3, &bytes(70_000, 3)),
        cont(1, 2, &bytes(70_000, 4)),
        cont(1, 1, &bytes(70_000, 5)),
    ];
    assert_eq!(feed_all(&mut store, &input).joined, 0);
    assert_eq!(events(&store.delivered), events(&input));
    assert_eq!(store.live(), 0);
}

#[test]
fn past_so_many_messages_left_open_nothing_is_joined() {
    let mut store = VecStore::default();
    {
        let mut d = Defrag::new(&mut store);
        let (ok, _) = fragmented(u64::MAX, &[bytes(70_000, 1), bytes(70_000, 2), bytes(9, 3)]);
        for seq in 1..=MAX_OPEN_IN_EMULATOR as u64 {
            feed(&mut d, &first(seq, 3, &bytes(1, 0))).unwrap();
        }
        for m in &ok {
            feed(&mut d, m).unwrap();
        }
        assert_eq!(d.counts().joined, 1);
        feed(&mut d, &first(1 << 40, 3, &bytes(1, 0))).unwrap();
        for m in &ok {
            feed(&mut d, m).unwrap();
        }
        assert_eq!(d.counts().joined, 1);
    }
    assert_eq!(store.live(), 0);
}

#[test]
fn messages_of_one_or_two_fragments_and_plain_ones_pass_through() {
    let mut store = VecStore::default();
    let one = first(4, 1, &bytes(70_000, 0));
    let (two, _) = fragmented(5, &[bytes(65_518, 1), bytes(52, 2)]);
    let big = whole(&bytes(80_000, 1));
    let input = vec![one, two[0].clone(), two[1].clone(), big];
    assert_eq!(feed_all(&mut store, &input), Counts::default());
    assert_eq!(store.delivered, input);
    assert_eq!(store.live(), 0);
}

#[test]
fn a_message_announced_over_max_held_passes_through() {
    for count in [u64::MAX, (MAX_HELD / 70_018 + 1) as u64] {
        let mut store = VecStore::default();
        let f = first(5, count, &bytes(70_000, 0));
        {
            let mut d = Defrag::new(&mut store);
            feed(&mut d, &f).unwrap();
            assert!(!d.is_open());
        }
        assert_eq!(store.delivered, vec![f]);
        assert_eq!(store.live(), 0);
    }
}

/// A first fragment sets aside its message's announced size, never more than `MAX_HELD`.
#[test]
fn a_first_fragment_sets_aside_its_announced_size() {
    let mut store = VecStore::default();
    let count = 1000;
    let big = first(6, count, &bytes(70_000, 0));
    {
        let mut d = Defrag::new(&mut store);
        feed(&mut d, &big).unwrap();
        assert!(d.is_open());
        let room = d.store.bufs.iter().flatten().map(|b| b.len()).max().unwrap();
        assert_eq!(room, count as usize * big.len());
        assert!(room <= MAX_HELD);
    }
    assert!(store.delivered.is_empty());
    assert_eq!(store.live(), 0);
}

#[test]
fn no_message_longer_than_a_fragment_lands_in_the_open_buffer() {
    let mut store = VecStore::default();
    let f = first(5, 3, &bytes(70_000, 0));
    let mut d = Defrag::new(&mut store);
    feed(&mut d, &f).unwrap();
    assert!(d.slot(f.len() + FRAG_HEADER + 1).is_none());
    assert!(d.slot(f.len() + FRAG_HEADER).is_some());
}

/// The emulator takes a first fragment under sequence id 0 for a message sent whole.
#[test]
fn fragments_under_sequence_id_0_pass_through() {
    let mut store = VecStore::default();
    let (frags, _) = fragmented(0, &[bytes(70_000, 1), bytes(70_000, 2), bytes(9, 3)]);
    assert_eq!(feed_all(&mut store, &frags), Counts::default());
    assert_eq!(store.delivered, frags);
    assert_eq!(store.live(), 0);
}

/// The emulator takes a later fragment that carries nothing; so must the joiner's view of
/// what it has open.
#[test]
fn an_empty_last_fragment_closes_its_message_in_the_emulator() {
    let mut store = VecStore::default();
    let (again, expected) = fragmented(7, &[bytes(70_000, 1), bytes(70_000, 2), bytes(9, 3)]);
    {
        let mut d = Defrag::new(&mut store);
        // Two fragments: not held; the emulator has message 7 open until the empty one.
        feed(&mut d, &first(7, 2, &bytes(100, 0))).unwrap();
        feed(&mut d, &cont(7, 1, &[])).unwrap();
        for f in &again {
            feed(&mut d, f).unwrap();
        }
        assert_eq!(d.counts().joined, 1);
    }
    assert_eq!(store.delivered.last(), Some(&expected));
    assert_eq!(store.live(), 0);
}

#[test]
fn a_buffer_that_cannot_grow_leaves_its_fragment_to_pass_through() {
    let mut store = VecStore { resize_fails: true, ..VecStore::default() };
    let (frags, _) = fragmented(3, &[bytes(70_000, 1), bytes(70_000, 2), bytes(9, 3)]);
    assert_eq!(feed_all(&mut store, &frags), Counts::default());
    assert_eq!(store.delivered, frags);
    assert_eq!(store.live(), 0);
}

#[test]
fn held_fragments_are_freed_when_the_port_closes() {
    let mut store = VecStore::default();
    {
        let mut d = Defrag::new(&mut store);
        let (frags, _) = fragmented(3, &[bytes(70_000, 1), bytes(70_000, 2), bytes(9, 3)]);
        feed(&mut d, &frags[0]).unwrap();
        feed(&mut d, &frags[1]).unwrap();
    }
    assert!(store.delivered.is_empty());
    assert_eq!(store.live(), 0);
}

#[test]
fn no_memory_to_send_held_fragments_on_is_an_error_and_leaks_nothing() {
    let mut store = VecStore::default();
    {
        let mut d = Defrag::new(&mut store);
        let (frags, _) = fragmented(3, &[bytes(70_000, 1), bytes(70_000, 2), bytes(9, 3)]);
        feed(&mut d, &frags[0]).unwrap();
        feed(&mut d, &frags[1]).unwrap();
        d.store.allocs_left = Some(0);
        assert_eq!(feed(&mut d, &whole(&bytes(100, 1))), Err(NoMemory));
    }
    assert_eq!(store.live(), 0);
}

/// Memory running out halfway through sending held fragments on: what went is a prefix of
/// what came, in order; nothing after it.
#[test]
fn no_memory_halfway_through_sending_on_leaves_a_prefix() {
    let mut store = VecStore::default();
    let (frags, _) = fragmented(3, &[bytes(70_000, 1), bytes(70_000, 2), bytes(70_000, 3), bytes(9, 4)]);
    {
        let mut d = Defrag::new(&mut store);
        for f in &frags[..3] {
            feed(&mut d, f).unwrap();
        }
        d.store.allocs_left = Some(1);
        assert_eq!(d.interrupt(), Err(NoMemory));
    }
    assert_eq!(store.delivered, frags[..1].to_vec());
    assert_eq!(store.live(), 0);
}

/// What the emulator makes of a stream: each message as one piece (`131, 68, ...`), in the
/// order they complete, with the start of a fragmented message as an event of its own
/// unless its fragments came one after another (then joining them changes nothing).
/// Anything that is not a well-formed fragment of an open message (which the emulator
/// would refuse) is an event of its own, as it came.
fn events(stream: &[Vec<u8>]) -> Vec<Vec<u8>> {
    /// A message being put together: its bytes so far, the id its next fragment must
    /// have, and where its start event is.
    type Open = (Vec<u8>, u64, usize);
    let mut out: Vec<Vec<u8>> = Vec::new();
    let mut open: std::collections::HashMap<[u8; 8], Open> = Default::default();
    for m in stream {
        // As OTP's erts_net_message reads them: sequence id 0 is a message sent whole, a
        // first fragment carries at least a byte, a later one may carry none.
        let ids = (m.len() >= FRAG_HEADER && m[0] == VERSION_MAGIC && m[2..10] != [0; 8]).then(|| {
            let seq: [u8; 8] = m[2..10].try_into().unwrap();
            (m[1], seq, u64::from_be_bytes(m[10..18].try_into().unwrap()))
        });
        match ids {
            Some((DIST_FRAG_HEADER, seq, id)) if m.len() > FRAG_HEADER && id >= 2 && !open.contains_key(&seq) => {
                out.push([b"start:".as_slice(), &seq].concat());
                open.insert(seq, (whole(&m[FRAG_HEADER..]), id - 1, out.len() - 1));
            }
            Some((DIST_FRAG_CONT, seq, id)) if open.get(&seq).is_some_and(|o| o.1 == id) => {
                let o = open.get_mut(&seq).unwrap();
                o.0.extend_from_slice(&m[FRAG_HEADER..]);
                o.1 -= 1;
                if id == 1 {
                    let (body, _, at) = open.remove(&seq).unwrap();
                    if at == out.len() - 1 {
                        out.pop();
                    }
                    out.push(body);
                }
            }
            _ => out.push(m.clone()),
        }
    }
    out
}

/// Streams of whole messages and fragmented ones, some interleaved, as several sending
/// processes make them.
fn stream() -> impl Strategy<Value = Vec<Vec<u8>>> {
    let message = prop_oneof![
        (1usize..200).prop_map(|n| vec![whole(&bytes(n, n as u8))]),
        (1usize..4, 1usize..3000, any::<u8>()).prop_map(|(k, n, t)| {
            let parts: Vec<Vec<u8>> = (0..=k).map(|i| bytes(n + i * 7 + 2048, t + i as u8)).collect();
            vec![parts.concat()] // marker: cut below
        }),
    ];
    (proptest::collection::vec(message, 1..12), proptest::collection::vec(any::<u8>(), 64)).prop_map(|(msgs, picks)| {
        // Each fragmented message gets its own sequence id and is cut into pieces; the
        // pieces of the messages are then merged, each message's in its own order.
        let mut queues: Vec<std::collections::VecDeque<Vec<u8>>> = Vec::new();
        for (seq, m) in msgs.into_iter().enumerate() {
            let m = &m[0];
            if m[0] == VERSION_MAGIC && m[1] == DIST_HEADER {
                queues.push([m.clone()].into());
            } else {
                let parts: Vec<Vec<u8>> = m.chunks(4096).map(|c| c.to_vec()).collect();
                let (frags, _) = fragmented(seq as u64 + 100, &parts);
                queues.push(frags.into());
            }
        }
        let mut out = Vec::new();
        let mut k = 0;
        while queues.iter().any(|q| !q.is_empty()) {
            let live: Vec<usize> = (0..queues.len()).filter(|&i| !queues[i].is_empty()).collect();
            // Mostly the oldest message goes on (fragments one after another), sometimes
            // another one cuts in.
            let pick = picks[k % picks.len()];
            k += 1;
            let i = if pick < 200 { live[0] } else { live[pick as usize % live.len()] };
            out.push(queues[i].pop_front().unwrap());
        }
        out
    })
}

proptest! {
    #[test]
    fn joining_never_changes_what_the_emulator_sees(input in stream(), moves in any::<bool>()) {
        let mut store = VecStore { resize_moves: moves, ..VecStore::default() };
        {
            let mut d = Defrag::new(&mut store);
            for m in &input {
                feed(&mut d, m).unwrap();
            }
            prop_assert!(!d.is_open());
        }
        prop_assert_eq!(events(&store.delivered), events(&input));
        prop_assert_eq!(store.live(), 0);
    }
}

/// Messages as a peer may write them, well formed or not: fragment headers with a few
/// sequence ids and small fragment ids (so that runs sometimes match), truncated headers,
/// ticks, anything.
fn rough_message() -> impl Strategy<Value = Vec<u8>> {
    let header = (prop_oneof![Just(DIST_FRAG_HEADER), Just(DIST_FRAG_CONT), Just(DIST_HEADER), any::<u8>()], 0u64..3, 0u64..5);
    prop_oneof![
        4 => (header, 0usize..300).prop_map(|((tag, seq, id), n)| {
            let mut v = vec![VERSION_MAGIC, tag];
            v.extend_from_slice(&seq.to_be_bytes());
            v.extend_from_slice(&id.to_be_bytes());
            v.extend(bytes(n, n as u8));
            v
        }),
        1 => proptest::collection::vec(any::<u8>(), 0..40),
    ]
}

proptest! {
    #[test]
    fn rough_input_passes_through_in_order_or_joins_exact_runs(
        input in proptest::collection::vec(rough_message(), 0..40)
    ) {
        let mut store = VecStore::default();
        {
            let mut d = Defrag::new(&mut store);
            for m in input.iter().filter(|m| !m.is_empty()) {
                feed(&mut d, m).unwrap();
            }
            // What a peer left half-sent goes on once anything else comes.
            d.interrupt().unwrap();
        }
        let sent: Vec<Vec<u8>> = input.into_iter().filter(|m| !m.is_empty()).collect();
        prop_assert_eq!(events(&store.delivered), events(&sent));
        prop_assert_eq!(store.live(), 0);
    }
}
