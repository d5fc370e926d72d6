//! The fragments of a large Erlang distribution message, put back together by the carrier.
//!
//! The emulator sends a distribution message of over 64 KiB as fragments: the first starts
//! `131, 69`, the others `131, 70`, each followed by the message's sequence id and a
//! fragment id that counts down to 1 (OTP's erl_ext_dist, "Distribution Header for
//! Fragmented Messages"). A receiving emulator keeps each fragment until the last one has
//! come, then copies them all into one buffer of the message's size to decode it. A message
//! handed over whole, in one binary, is decoded where it lies instead: a large binary in it
//! becomes a reference into that buffer. Seen on OTP 25: a 60,000-byte binary received in
//! one piece references the 60,051 bytes of its message, and one of 70,000 bytes received
//! as two fragments is a copy of its own.
//!
//! So the receiving port copies the fragments of a message from the ring straight into one
//! buffer, one after the other, and hands the emulator the whole message under the header
//! a message sent in one piece has (`131, 68`, then the same atom cache header): each byte
//! of a message joined whole is copied once on the receiving side, where it was copied
//! twice (fragments sent on after an interruption are copied again).
//!
//! Only what an emulator sends is joined. A sequence id of 0 is not a fragment to the
//! emulator, and a first fragment under a sequence id the emulator has open is an error to
//! it ([`EmulatorView`]): such messages go on as they came, and so does every message of
//! over [`MAX_HELD`] bytes. A peer can make a joined message pass the emulator's checks
//! where its fragments would not (an atom cache header cut at the first fragment's end is
//! read whole): nothing it could not send as one message.
//!
//! Nothing may overtake a fragment. The atom cache header of a message's first fragment
//! sets entries that later messages use, so the emulator must see the messages in the
//! order they were sent. Fragments are put together only while they come one after
//! another; anything else arriving first (a fragment of another message, a whole message)
//! sends the held fragments on as they came, before itself, and the rest of their message
//! passes through as it comes. Messages that interleave tend to go on doing so (two
//! processes sending large messages at once), so after such an interruption the next
//! messages are not held at all ([`Backoff`]).

use std::collections::HashMap;
use std::ptr;

/// The version byte that starts every distribution header.
const VERSION_MAGIC: u8 = 131;
/// A message sent in one piece.
const DIST_HEADER: u8 = 68;
/// The first fragment of a message.
const DIST_FRAG_HEADER: u8 = 69;
/// Any later fragment.
const DIST_FRAG_CONT: u8 = 70;

/// Bytes of a fragment header before what it carries: magic, tag, sequence id, fragment id.
pub const FRAG_HEADER: usize = 18;

/// The fewest fragments a message must have to be joined. A message of two (a binary of
/// 64 KiB is one: 64 KiB, then a few bytes) costs more to join than the emulator's own copy
/// of it. Run after the other loads of `bash scripts/bench-dist.sh`, the receiving node
/// used 44 ms of CPU per 100 MB with the buffer grown for the second fragment, against 27
/// without joining (six alternating runs), and 29.9 against 22.7 with room for it set aside
/// when the first arrived and given back at the end (six runs). Run alone, setting room
/// aside was the cheaper (19.6 against 22.6): the binary allocator's state after other
/// loads decides, which no carrier can count on.
const MIN_FRAGMENTS: u64 = 3;

/// The largest message joined, as its first fragment announces it (fragment count times
/// the first fragment's length). Sending held fragments on copies them all again in one
/// callback, and the emulator does as much for a message that came in fragments, so this
/// bounds the pause both make; a larger message passes through as it comes. It also bounds
/// the room a first fragment sets aside: all its message's size at once, which a peer
/// may announce and never send. Setting aside room for a few fragments and growing it
/// when they were used cost the receiving node of 16 MiB messages 72 ms of CPU per
/// 100 MB against 16, most of it page faults: the allocator reuses a freed buffer of the
/// size asked, but not one that grew (`bash scripts/bench-dist.sh --only 16777216`,
/// three alternating runs).
pub const MAX_HELD: usize = 128 << 20;

/// Fragmented messages the emulator may have open at once before joining stops for good
/// ([`EmulatorView`]): an emulator has one per process whose large message is under way,
/// so only a node with that many such processes at once, or a peer that never finishes
/// the messages it starts, gets here.
const MAX_OPEN_IN_EMULATOR: usize = 1 << 16;

/// Messages not held at most, after interruptions one after another.
const MAX_SKIP: u32 = 64;

/// Where buffers come from and whole messages go: the emulator's driver binaries in the
/// port driver, plain memory in tests.
pub trait Store {
    /// One buffer.
    type Buf;
    /// A buffer of `cap` bytes and its first byte; `None` when out of memory.
    fn alloc(&mut self, cap: usize) -> Option<(Self::Buf, *mut u8)>;
    /// The buffer with room for `cap` bytes, keeping its bytes up to the smaller size, and
    /// its (possibly moved) first byte; out of memory gives it back unchanged.
    fn resize(&mut self, buf: Self::Buf, cap: usize) -> Result<(Self::Buf, *mut u8), Self::Buf>;
    /// Hands bytes `off..off + len` of a buffer to the emulator as one message, and the
    /// buffer with them.
    fn deliver(&mut self, buf: Self::Buf, off: usize, len: usize);
    /// Frees a buffer that was not delivered.
    fn free(&mut self, buf: Self::Buf);
}

/// Memory ran out while held fragments had to go on: the channel cannot go on in order.
#[derive(Debug, PartialEq, Eq)]
pub struct NoMemory;

/// What became of a message received into a [`Defrag::slot`].
#[derive(Debug)]
pub enum Landed<B> {
    /// The open message's next fragment, now joined to it; more are to come.
    Held,
    /// Its last fragment: the whole message has gone to the emulator.
    Done,
    /// Not the open message's next fragment: the held fragments have gone on as they
    /// came, and the message is now in a buffer of its own (`buf`, its first byte, its
    /// length), to be handled as any arrival ([`Defrag::arrive`]).
    Other(B, *mut u8, usize),
}

/// A message being put back together.
struct Open<B> {
    buf: B,
    data: *mut u8,
    cap: usize,
    /// Bytes in the buffer: the first fragment whole, then what each later one carries.
    filled: usize,
    seq: [u8; 8],
    /// The first fragment's id: how many fragments the message has.
    first_id: u64,
    /// The first fragment's length, header included.
    first_len: usize,
    /// The bytes the header of a fragment landing in a slot lies over, until it is checked.
    saved: [u8; FRAG_HEADER],
}

/// How many first fragments go through unheld after interruptions: none at first, one
/// after an interruption, twice as many after each further one (up to [`MAX_SKIP`]); a
/// message put together whole ends the backoff.
#[derive(Debug, Default)]
pub struct Backoff {
    skip: u32,
    left: u32,
}

impl Backoff {
    /// A first fragment came: true if it may be held.
    fn may_hold(&mut self) -> bool {
        if self.left == 0 {
            return true;
        }
        self.left -= 1;
        false
    }

    fn interrupted(&mut self) {
        self.skip = (self.skip * 2).clamp(1, MAX_SKIP);
        self.left = self.skip;
    }

    fn completed(&mut self) {
        self.skip = 0;
    }
}

/// Counters of a [`Defrag`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Messages handed over whole that came as fragments.
    pub joined: u64,
    /// Held fragments sent on as they came, when something came between them.
    pub passed_on: u64,
}

/// The fragmented messages the emulator has open because their fragments went to it as they
/// came (its sequence ids, with the fragment id each expects next), followed the way the
/// emulator follows them. A first fragment whose sequence id is open there is not held: the
/// emulator would not take it for the start of a new message, so it must see it as it
/// came. An emulator never sends one; a peer writing anything may.
#[derive(Default)]
struct EmulatorView {
    open: HashMap<[u8; 8], u64>,
    /// More were open than [`MAX_OPEN_IN_EMULATOR`]: nothing is held any more.
    lost_track: bool,
}

impl EmulatorView {
    /// A message went to the emulator as it came.
    fn saw(&mut self, bytes: &[u8]) {
        let Some((tag, seq, id)) = fragment_ids(bytes) else { return };
        match tag {
            DIST_FRAG_HEADER if id >= 2 && !self.open.contains_key(&seq) => self.opened(seq, id - 1),
            DIST_FRAG_CONT if self.open.get(&seq) == Some(&id) => {
                if id == 1 {
                    self.open.remove(&seq);
                } else {
                    self.open.insert(seq, id - 1);
                }
            }
            _ => {}
        }
    }

    /// Message `seq` is open, its fragment `next` expected.
    fn opened(&mut self, seq: [u8; 8], next: u64) {
        if self.open.len() >= MAX_OPEN_IN_EMULATOR {
            self.lost_track = true;
        } else {
            self.open.insert(seq, next);
        }
    }

    fn may_hold(&self, seq: &[u8; 8]) -> bool {
        !self.lost_track && !self.open.contains_key(seq)
    }
}

/// The fragment joiner of one distribution port's receive side (see the crate's comment).
pub struct Defrag<S: Store> {
    store: S,
    open: Option<Open<S::Buf>>,
    /// Where each held fragment ends in the open buffer.
    ends: Vec<usize>,
    backoff: Backoff,
    counts: Counts,
    emulator: EmulatorView,
}

impl<S: Store> Defrag<S> {
    pub fn new(store: S) -> Defrag<S> {
        Defrag {
            store,
            open: None,
            ends: Vec::new(),
            backoff: Backoff::default(),
            counts: Counts::default(),
            emulator: EmulatorView::default(),
        }
    }

    pub fn counts(&self) -> Counts {
        self.counts
    }

    /// True while fragments are held.
    pub fn is_open(&self) -> bool {
        self.open.is_some()
    }

    /// Where the next message, of `len` bytes, is to be copied while fragments are held:
    /// straight after them, as their message's next fragment would go, with its header
    /// over the last bytes held (saved here, put back by [`Defrag::landed`]). `None`: the
    /// message gets a buffer of its own (nothing held, too short to be a fragment, or no
    /// memory to make room).
    pub fn slot(&mut self, len: usize) -> Option<*mut u8> {
        if len <= FRAG_HEADER {
            return None;
        }
        // A fragment is never longer than a first fragment plus a header: anything longer
        // goes elsewhere, so an unrelated large message never grows the held buffer.
        if len > self.open.as_ref()?.first_len + FRAG_HEADER {
            return None;
        }
        let mut o = self.open.take()?;
        let need = o.filled - FRAG_HEADER + len;
        if need > o.cap {
            // The buffer already has the announced size: only a message longer than
            // announced gets here.
            let cap = need.max(o.cap.saturating_mul(2));
            match self.store.resize(o.buf, cap) {
                Ok((buf, data)) => {
                    (o.buf, o.data, o.cap) = (buf, data, cap);
                }
                Err(buf) => {
                    o.buf = buf;
                    self.open = Some(o);
                    return None;
                }
            }
        }
        let at = o.filled - FRAG_HEADER;
        // SAFETY: `at + FRAG_HEADER == filled <= cap`: bytes of the open buffer, which is
        // ours until delivered; `saved` is a separate array.
        unsafe { ptr::copy_nonoverlapping(o.data.add(at), o.saved.as_mut_ptr(), FRAG_HEADER) };
        // SAFETY: `at + len <= cap` (made so above).
        let p = unsafe { o.data.add(at) };
        self.open = Some(o);
        Some(p)
    }

    /// The message given [`Defrag::slot`]`(len)` has been copied there.
    pub fn landed(&mut self, len: usize) -> Result<Landed<S::Buf>, NoMemory> {
        let o = self.open.as_mut().expect("landed without a slot");
        let at = o.filled - FRAG_HEADER;
        let next_id = o.first_id - self.ends.len() as u64;
        // SAFETY: the slot gave `len > FRAG_HEADER` bytes from `at`, all within the buffer.
        let header = unsafe { std::slice::from_raw_parts(o.data.add(at), FRAG_HEADER) };
        if is_continuation(header, &o.seq, next_id) {
            // SAFETY: as in `slot`: the `FRAG_HEADER` bytes at `at` are ours.
            unsafe { ptr::copy_nonoverlapping(o.saved.as_ptr(), o.data.add(at), FRAG_HEADER) };
            o.filled = at + len;
            self.ends.push(o.filled);
            if next_id == 1 {
                self.complete();
                return Ok(Landed::Done);
            }
            return Ok(Landed::Held);
        }
        // Something else: out of the way of the held bytes before they are put back.
        let Some((buf, data)) = self.store.alloc(len) else {
            self.restore_saved();
            self.drop_open();
            return Err(NoMemory);
        };
        // SAFETY: `len` bytes at `at` in the open buffer (the slot's), into a fresh buffer
        // of `len` bytes.
        unsafe { ptr::copy_nonoverlapping(o.data.add(at), data, len) };
        self.restore_saved();
        self.backoff.interrupted();
        if let Err(e) = self.pass_on() {
            self.store.free(buf);
            return Err(e);
        }
        Ok(Landed::Other(buf, data, len))
    }

    /// A message in a buffer of its own (`len` bytes at `data`) arrived. The first fragment
    /// of a message of [`MIN_FRAGMENTS`] or more is held as the start of its message
    /// (`Ok(None)`); any other message is given back to be delivered (`Ok(Some)`) once the
    /// held fragments have gone on.
    pub fn arrive(&mut self, buf: S::Buf, data: *mut u8, len: usize) -> Result<Option<S::Buf>, NoMemory> {
        if let Err(e) = self.interrupt() {
            self.store.free(buf);
            return Err(e);
        }
        // SAFETY: the caller's buffer holds `len` bytes of the message at `data`.
        let bytes = unsafe { std::slice::from_raw_parts(data, len) };
        let to_hold = first_fragment(bytes).filter(|&(seq, first_id)| {
            first_id >= MIN_FRAGMENTS
                && announced(first_id, len) <= MAX_HELD
                && self.emulator.may_hold(&seq)
                && self.backoff.may_hold()
        });
        let Some((seq, first_id)) = to_hold else {
            self.emulator.saw(bytes);
            return Ok(Some(buf));
        };
        match self.hold(buf, len, seq, first_id) {
            Ok(()) => Ok(None),
            Err(buf) => {
                // SAFETY: a buffer that could not grow is as it was: `len` bytes at `data`.
                self.emulator.saw(unsafe { std::slice::from_raw_parts(data, len) });
                Ok(Some(buf))
            }
        }
    }

    /// A message the port delivers itself (`bytes`, copied from a scratch buffer) is about
    /// to go: the held fragments go on first.
    pub fn pass(&mut self, bytes: &[u8]) -> Result<(), NoMemory> {
        self.interrupt()?;
        self.emulator.saw(bytes);
        Ok(())
    }

    /// Whatever is held goes on as it came (a peer left a message half-sent, or something
    /// else comes first).
    pub fn interrupt(&mut self) -> Result<(), NoMemory> {
        if self.open.is_none() {
            return Ok(());
        }
        self.backoff.interrupted();
        self.pass_on()
    }

    /// Makes the buffer of a first fragment the buffer of its message, grown to the size
    /// the fragment announces; gives it back when it cannot grow.
    fn hold(&mut self, buf: S::Buf, len: usize, seq: [u8; 8], first_id: u64) -> Result<(), S::Buf> {
        let cap = announced(first_id, len).max(len);
        let (buf, data) = self.store.resize(buf, cap)?;
        self.ends.clear();
        self.ends.push(len);
        self.open = Some(Open {
            buf,
            data,
            cap,
            filled: len,
            seq,
            first_id,
            first_len: len,
            saved: [0; FRAG_HEADER],
        });
        Ok(())
    }

    /// The last fragment has joined: the message goes to the emulator under a whole
    /// message's header, which is the first fragment's without its two ids.
    fn complete(&mut self) {
        let o = self.open.take().expect("complete with a message open");
        // SAFETY: the first fragment (more than FRAG_HEADER bytes) is at the start of the
        // buffer; its ids are overwritten by the shorter header, which ends where they did.
        unsafe {
            *o.data.add(FRAG_HEADER - 2) = VERSION_MAGIC;
            *o.data.add(FRAG_HEADER - 1) = DIST_HEADER;
        }
        let mut buf = o.buf;
        // Room set aside beyond the message goes back (the emulator keeps the buffer for as
        // long as a binary decoded from it lives).
        if o.cap - o.filled >= o.cap / 8 {
            buf = match self.store.resize(buf, o.filled) {
                Ok((b, _)) => b,
                Err(b) => b,
            };
        }
        self.store.deliver(buf, FRAG_HEADER - 2, o.filled - (FRAG_HEADER - 2));
        self.backoff.completed();
        self.counts.joined += 1;
    }

    /// Sends the held fragments on as they came, each in a buffer of its own with its own
    /// header, and frees the message's buffer.
    fn pass_on(&mut self) -> Result<(), NoMemory> {
        let Some(o) = self.open.take() else { return Ok(()) };
        let mut start = 0;
        let mut result = Ok(());
        let mut sent = 0;
        for (i, &end) in self.ends.iter().enumerate() {
            // The first fragment still has its header; the later ones get theirs back.
            let header = (i > 0).then(|| continuation_header(&o.seq, o.first_id - i as u64));
            let head: &[u8] = header.as_ref().map_or(&[], |h| &h[..]);
            let len = head.len() + (end - start);
            let Some((buf, data)) = self.store.alloc(len) else {
                result = Err(NoMemory);
                break;
            };
            // SAFETY: `data` is a fresh buffer of `len` bytes; `start..end` lies within the
            // open buffer's filled bytes.
            unsafe {
                ptr::copy_nonoverlapping(head.as_ptr(), data, head.len());
                ptr::copy_nonoverlapping(o.data.add(start), data.add(head.len()), end - start);
            }
            self.store.deliver(buf, 0, len);
            self.counts.passed_on += 1;
            sent += 1;
            start = end;
        }
        self.store.free(o.buf);
        // The emulator now has the message open, as far as its fragments went.
        if sent > 0 {
            self.emulator.opened(o.seq, o.first_id - sent);
        }
        result
    }

    /// Puts back the bytes a slot's header lay over.
    fn restore_saved(&mut self) {
        let o = self.open.as_mut().expect("a message is open");
        let at = o.filled - FRAG_HEADER;
        // SAFETY: as in `slot`.
        unsafe { ptr::copy_nonoverlapping(o.saved.as_ptr(), o.data.add(at), FRAG_HEADER) };
    }

    fn drop_open(&mut self) {
        if let Some(o) = self.open.take() {
            self.store.free(o.buf);
        }
    }
}

impl<S: Store> Drop for Defrag<S> {
    /// Fragments still held when the port closes are never delivered.
    fn drop(&mut self) {
        self.drop_open();
    }
}

/// The sequence id and fragment id of a first fragment of two or more.
fn first_fragment(bytes: &[u8]) -> Option<([u8; 8], u64)> {
    match fragment_ids(bytes) {
        Some((DIST_FRAG_HEADER, seq, id)) if id >= 2 => Some((seq, id)),
        _ => None,
    }
}

/// The tag, sequence id and fragment id of a fragment as the emulator takes one: a first
/// fragment (at least one byte after its header) or a later one (possibly empty), under a
/// sequence id other than 0 (the emulator takes a first fragment under 0 for a message
/// sent whole).
fn fragment_ids(bytes: &[u8]) -> Option<(u8, [u8; 8], u64)> {
    if bytes.len() < FRAG_HEADER || bytes[0] != VERSION_MAGIC {
        return None;
    }
    let tag = bytes[1];
    let shortest = match tag {
        DIST_FRAG_HEADER => FRAG_HEADER + 1,
        DIST_FRAG_CONT => FRAG_HEADER,
        _ => return None,
    };
    let seq: [u8; 8] = bytes[2..10].try_into().expect("8 bytes");
    if bytes.len() < shortest || seq == [0; 8] {
        return None;
    }
    let id = u64::from_be_bytes(bytes[10..18].try_into().expect("8 bytes"));
    Some((tag, seq, id))
}

/// A message's size as its first fragment (`len` bytes, fragment id `first_id`) announces
/// it: no fragment is longer than the first.
fn announced(first_id: u64, len: usize) -> usize {
    usize::try_from(first_id).unwrap_or(usize::MAX).saturating_mul(len)
}

/// True if `header` is that of fragment `id` of message `seq`.
fn is_continuation(header: &[u8], seq: &[u8; 8], id: u64) -> bool {
    header[..] == continuation_header(seq, id)[..]
}

fn continuation_header(seq: &[u8; 8], id: u64) -> [u8; FRAG_HEADER] {
    let mut h = [0u8; FRAG_HEADER];
    h[0] = VERSION_MAGIC;
    h[1] = DIST_FRAG_CONT;
    h[2..10].copy_from_slice(seq);
    h[10..18].copy_from_slice(&id.to_be_bytes());
    h
}

#[cfg(test)]
mod tests;
