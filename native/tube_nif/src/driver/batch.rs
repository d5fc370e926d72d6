//! Batch mode of a lossy tube: many packets per message each way.
//!
//! Receiving (`{deliver, batch}`): each wake-up copies the packets waiting in
//! the ring, in order, into one driver binary and sends the owner one
//! message per binary, `{Port, {data_batch, [Bin1, ..., BinN]}}`. A packet of
//! up to 64 bytes becomes a heap binary (the emulator copies it, as it does
//! for one packet in the default mode); a larger one is a sub-binary of the
//! batch's binary, with no copy beyond the one out of the ring. The BEAM's
//! cost of a message (allocating it, queueing it, the owner's receive) is
//! then paid once per batch instead of once per packet. A credit (`{active,
//! N}`) still counts packets: a batch never holds more than the credit left.
//!
//! Sending (`tube:send_batch/2`): one `erlang:port_call` carries a list of
//! binaries in the external term format, which the emulator writes in C with
//! each binary's length before its bytes: the packets' boundaries, with no
//! framing built in Erlang and no iolist flattened. They go into the ring
//! under one publish of the producer index (so the peer is woken at most
//! once), up to the first that finds the ring full; that one and the rest are
//! dropped and counted, and the answer says how many went in. A list that is
//! not all binaries of 1..4096 bytes comes back as `framed`, nothing sent:
//! `send_batch/2` then frames its iodata itself into one `port_control`
//! (`CTL_SEND_BATCH`), whose checks give the answer.

use super::{set_from_control, DrvPort, PortState, RingError, SendError, Tube, MAX_PACKET};
use super::{guarded, tube_drv_alloc_binary, tube_drv_free_binary, CloseReason};
use std::ffi::{c_char, c_int, c_void};

extern "C" {
    fn tube_drv_deliver_batch(
        port: DrvPort,
        bin: *mut *mut c_void,
        used: usize,
        offs: *const u32,
        lens: *const u32,
        n: usize,
        spec: *mut usize,
    ) -> c_int;
}

/// Packets one driver callback delivers in batch mode (in one message or more) before it
/// yields, as `BATCH` is in the default mode. A full ring of 64-byte packets is 1792.
pub(super) const BUDGET: usize = 4096;

/// Most packets in one message.
const MAX_PACKETS: usize = 1024;

/// Largest binary of one message (a batch ends early when its next packet does not fit).
const MAX_BYTES: usize = 64 * 1024;

/// Smallest binary asked for: room for two packets of the largest size.
const MIN_BYTES: usize = 2 * MAX_PACKET;

/// Terms of the message spec besides four per packet (see `tube_drv_deliver_batch`).
const SPEC_FIXED: usize = 12;

/// The receive state of a tube in batch mode.
pub(super) struct Batcher {
    /// The driver binary the next batch is copied into (we hold one reference), or null.
    bin: *mut c_void,
    /// Its bytes, `cap` of them.
    data: *mut u8,
    cap: usize,
    /// Size of the next binary to allocate: twice what the last batch used, within
    /// `MIN_BYTES..=MAX_BYTES`, so a trickle does not hold 64 KiB per message.
    want: usize,
    /// Where each packet of the batch being filled starts in `bin`, and its length.
    offs: Vec<u32>,
    lens: Vec<u32>,
    /// The message's term spec, built by the C glue.
    spec: Vec<usize>,
}

impl Batcher {
    pub(super) fn new() -> Batcher {
        Batcher {
            bin: std::ptr::null_mut(),
            data: std::ptr::null_mut(),
            cap: 0,
            want: MAX_BYTES,
            offs: Vec::with_capacity(MAX_PACKETS),
            lens: Vec::with_capacity(MAX_PACKETS),
            spec: vec![0; 4 * MAX_PACKETS + SPEC_FIXED],
        }
    }

    /// Delivers up to `max` packets to the owner of `port`, as few messages as the bounds
    /// allow. Packets copied before a ring error are delivered before the error is returned.
    pub(super) fn receive(&mut self, tube: &mut Tube, port: DrvPort, max: usize) -> Result<usize, RingError> {
        let mut total = 0;
        while total < max {
            let want = (max - total).min(MAX_PACKETS);
            let (filled, full) = self.fill(tube, want);
            let got = self.lens.len();
            if got > 0 {
                self.deliver(port);
                total += got;
            }
            filled?;
            // The ring ran empty (or memory did): the pass decides whether to spin or sleep.
            if !full && got < want {
                break;
            }
        }
        Ok(total)
    }

    /// Copies up to `max` packets into the batch's binary; true in the second place when
    /// the batch ended because its next packet did not fit.
    fn fill(&mut self, tube: &mut Tube, max: usize) -> (Result<usize, RingError>, bool) {
        self.offs.clear();
        self.lens.clear();
        if self.bin.is_null() && !self.allocate() {
            // Out of memory: the packets stay in the ring for the next wake-up.
            return (Ok(0), false);
        }
        let (data, cap) = (self.data, self.cap);
        let mut used = 0usize;
        let mut full = false;
        let Batcher { offs, lens, .. } = self;
        let r = tube.recv_into(
            max,
            |len| {
                if len > cap - used {
                    full = true;
                    return None;
                }
                let at = used;
                used += len;
                // SAFETY: `data` is the start of the `cap` bytes of our binary, which nothing
                // else writes while we hold it (it is not yet in a message); `at + len <= cap`
                // and the ranges handed out never overlap. The slice is used for one copy.
                let s = unsafe { std::slice::from_raw_parts_mut(data.add(at), len) };
                Some((s, at))
            },
            |at, len| {
                offs.push(at as u32);
                lens.push(len as u32);
            },
        );
        (r, full)
    }

    /// A binary of `want` bytes; false when out of memory.
    fn allocate(&mut self) -> bool {
        let mut data: *mut c_char = std::ptr::null_mut();
        // SAFETY: plain allocation through the emulator; `data` receives the bytes.
        let bin = unsafe { tube_drv_alloc_binary(self.want, &mut data) };
        if bin.is_null() || data.is_null() {
            return false;
        }
        self.bin = bin;
        self.data = data as *mut u8;
        self.cap = self.want;
        true
    }

    /// Sends the filled batch as one message. A binary the message now refers to is left to
    /// it; one whose packets were all copied is filled again next time.
    fn deliver(&mut self, port: DrvPort) {
        let n = self.lens.len();
        debug_assert!(n <= MAX_PACKETS && self.spec.len() >= 4 * n + SPEC_FIXED);
        let used = self.offs.last().zip(self.lens.last()).map_or(0, |(o, l)| (o + l) as usize);
        // SAFETY: `port` is the live port this callback runs for; `self.bin` is our binary of
        // `cap >= used` bytes holding the `n` packets at `offs`/`lens`; `spec` has room for
        // `4 * n + SPEC_FIXED` terms. The glue may replace `self.bin` by a smaller copy
        // (realloc), and leaves us our one reference either way.
        let shared = unsafe {
            tube_drv_deliver_batch(
                port,
                &mut self.bin,
                used,
                self.offs.as_ptr(),
                self.lens.as_ptr(),
                n,
                self.spec.as_mut_ptr(),
            )
        };
        if shared != 0 {
            self.want = if used * 2 > self.cap { MAX_BYTES } else { (used * 2).clamp(MIN_BYTES, MAX_BYTES) };
            self.release();
        }
    }

    /// Drops our reference to the staging binary.
    fn release(&mut self) {
        if !self.bin.is_null() {
            // SAFETY: our one reference, never used again (the pointer is cleared).
            unsafe { tube_drv_free_binary(self.bin) };
        }
        self.bin = std::ptr::null_mut();
        self.data = std::ptr::null_mut();
        self.cap = 0;
    }
}

impl Drop for Batcher {
    fn drop(&mut self) {
        self.release();
    }
}

/// The packets of a `CTL_SEND_BATCH` buffer, framed `<<Len:16, Bytes:Len/binary>>`; `None`
/// if a frame is cut short or a length is out of `1..=MAX_PACKET`.
fn frames(mut buf: &[u8]) -> Option<Vec<&[u8]>> {
    let mut pkts = Vec::with_capacity(buf.len() / 66 + 1);
    while !buf.is_empty() {
        let (hdr, rest) = buf.split_first_chunk::<2>()?;
        let len = usize::from(u16::from_be_bytes(*hdr));
        if !(1..=MAX_PACKET).contains(&len) || rest.len() < len {
            return None;
        }
        let (pkt, rest) = rest.split_at(len);
        pkts.push(pkt);
        buf = rest;
    }
    Some(pkts)
}

/// External term format tags (erts' `external.h`).
const VERSION_MAGIC: u8 = 131;
const NIL_EXT: u8 = 106;
const LIST_EXT: u8 = 108;
const BINARY_EXT: u8 = 109;
const SMALL_ATOM_UTF8_EXT: u8 = 119;

/// The packets of a `CALL_SEND_BATCH` buffer: a proper list of binaries of `1..=MAX_PACKET`
/// bytes in the external term format, put in `pkts` (cleared first); false for anything
/// else (nothing is sent then, and `send_batch/2` takes the framed path).
fn ext_binaries<'a>(buf: &'a [u8], pkts: &mut Vec<&'a [u8]>) -> bool {
    pkts.clear();
    let Some((&VERSION_MAGIC, rest)) = buf.split_first() else { return false };
    match rest {
        [NIL_EXT] => return true,
        [LIST_EXT, ..] => {}
        _ => return false,
    }
    let Some((n, mut rest)) = rest[1..].split_first_chunk::<4>() else { return false };
    let n = u32::from_be_bytes(*n) as usize;
    // Each element takes at least 6 bytes: a count past that is a lie (no allocation for it).
    if n > rest.len() / 6 {
        return false;
    }
    pkts.reserve(n);
    for _ in 0..n {
        let Some((&BINARY_EXT, r)) = rest.split_first() else { return false };
        let Some((len, r)) = r.split_first_chunk::<4>() else { return false };
        let len = u32::from_be_bytes(*len) as usize;
        if !(1..=MAX_PACKET).contains(&len) || r.len() < len {
            return false;
        }
        let (pkt, r) = r.split_at(len);
        pkts.push(pkt);
        rest = r;
    }
    rest == [NIL_EXT]
}

/// The answer of a `CALL_SEND_BATCH` in the external term format: `Sent` (an integer) or
/// an atom; `out` has room for `CALL_REPLY_MAX` bytes. Returns the length written.
pub(super) const CALL_REPLY_MAX: usize = 16;

fn call_reply(answer: CallAnswer, out: &mut [u8; CALL_REPLY_MAX]) -> usize {
    out[0] = VERSION_MAGIC;
    let atom: &[u8] = match answer {
        CallAnswer::Sent(n) => {
            // INTEGER_EXT: a signed 32-bit big-endian integer. `n` is at most what one ring
            // holds, far below 2^31.
            out[1] = 98;
            out[2..6].copy_from_slice(&i32::try_from(n).unwrap_or(i32::MAX).to_be_bytes());
            return 6;
        }
        CallAnswer::Closed => b"closed",
        CallAnswer::Framed => b"framed",
    };
    out[1] = SMALL_ATOM_UTF8_EXT;
    out[2] = atom.len() as u8;
    out[3..3 + atom.len()].copy_from_slice(atom);
    3 + atom.len()
}

/// What a `CALL_SEND_BATCH` did.
#[derive(Clone, Copy, Debug, PartialEq)]
enum CallAnswer {
    /// The first `n` packets went in.
    Sent(usize),
    /// The tube is closed or its peer has gone.
    Closed,
    /// Nothing sent: the framed path must answer (see `CALL_SEND_BATCH`).
    Framed,
}

impl PortState {
    /// `{deliver, _}`: batch mode is for lossy tubes that are not distribution ports.
    fn set_deliver(&mut self, mode: u8) -> bool {
        use tube_ring::proto::{DELIVER_BATCH, DELIVER_PACKET};
        match mode {
            DELIVER_PACKET => {
                self.inbox.batch = None;
                true
            }
            DELIVER_BATCH if !self.reliable && !self.dist => {
                self.inbox.batch.get_or_insert_with(Batcher::new);
                true
            }
            _ => false,
        }
    }

    /// One `send_batch/2`: `(status, sent)`, see `CTL_SEND_BATCH`.
    fn send_batch(&mut self, pkts: &[&[u8]]) -> Option<(u8, u32)> {
        use tube_ring::proto::{SEND_BATCH_CLOSED, SEND_BATCH_OK};
        if self.reliable {
            return None;
        }
        match self.tube.send_prefix(pkts) {
            Ok(sent) => {
                if sent > 0 {
                    self.start_polling();
                }
                Some((SEND_BATCH_OK, sent as u32))
            }
            // The peer's hang-up arrives on the fd and closes the port.
            Err(SendError::Closed) => Some((SEND_BATCH_CLOSED, 0)),
            Err(SendError::Corrupt) => {
                self.close(CloseReason::Corrupt);
                Some((SEND_BATCH_CLOSED, 0))
            }
            Err(SendError::BadSize(_)) | Err(SendError::Full) => None,
        }
    }
}

/// `erlang:port_call(Tube, 1, Packets)`: sends a list of binaries (see `CALL_SEND_BATCH`)
/// and writes the answer, in the external term format, to `out` (room for `n` bytes).
/// Returns its length, or -1 (badarg) when `out` is too small.
#[no_mangle]
pub extern "C" fn tube_rs_call_send_batch(
    st: *mut c_void,
    buf: *const c_char,
    len: usize,
    out: *mut u8,
    n: usize,
) -> c_int {
    if out.is_null() || n < CALL_REPLY_MAX {
        return -1;
    }
    let bytes: &[u8] = if buf.is_null() || len == 0 {
        &[]
    } else {
        // SAFETY: the C glue passes the emulator's buffer of `len` bytes, alive for this call.
        unsafe { std::slice::from_raw_parts(buf as *const u8, len) }
    };
    let mut pkts = Vec::new();
    let mut answer = CallAnswer::Closed;
    if ext_binaries(bytes, &mut pkts) {
        guarded(st, |state| {
            answer = match state.send_batch(&pkts) {
                Some((tube_ring::proto::SEND_BATCH_OK, sent)) => CallAnswer::Sent(sent as usize),
                Some(_) => CallAnswer::Closed,
                None => CallAnswer::Framed,
            }
        });
    } else {
        answer = CallAnswer::Framed;
    }
    let mut reply = [0u8; CALL_REPLY_MAX];
    let k = call_reply(answer, &mut reply);
    // SAFETY: the caller passes room for `n >= CALL_REPLY_MAX >= k` bytes.
    unsafe { std::ptr::copy_nonoverlapping(reply.as_ptr(), out, k) };
    k as c_int
}

/// The deliver mode of the open command: the word `deliver=batch` anywhere in it (a named
/// word, so it does not depend on how many numbers come before it).
pub(super) fn from_command(command: &std::ffi::CStr) -> Option<Batcher> {
    let words = command.to_str().ok()?;
    words.split_ascii_whitespace().any(|w| w == "deliver=batch").then(Batcher::new)
}

/// `port_control(Tube, 6, <<Mode:8>>)`: `{deliver, _}`, see [`PortState::set_deliver`].
#[no_mangle]
pub extern "C" fn tube_rs_set_deliver(st: *mut c_void, buf: *const c_char, len: usize) -> c_int {
    set_from_control(st, buf, len, 1, |state, bytes| state.set_deliver(bytes[0]))
}

/// `port_control(Tube, 7, Framed)`: sends the framed packets and writes the answer
/// `<<Status:8, Sent:32/native>>` to `out` (room for `n >= 5` bytes). Returns -1 (badarg)
/// for a malformed buffer, a reliable tube or a closed port.
#[no_mangle]
pub extern "C" fn tube_rs_send_batch(
    st: *mut c_void,
    buf: *const c_char,
    len: usize,
    out: *mut u8,
    n: usize,
) -> c_int {
    if buf.is_null() || out.is_null() || n < 5 {
        return -1;
    }
    // SAFETY: the C glue passes the control buffer of `len` bytes, alive for this call.
    let bytes = unsafe { std::slice::from_raw_parts(buf as *const u8, len) };
    let Some(pkts) = frames(bytes) else { return -1 };
    let mut answer = None;
    guarded(st, |state| answer = state.send_batch(&pkts));
    let Some((status, sent)) = answer else { return -1 };
    let mut reply = [0u8; 5];
    reply[0] = status;
    reply[1..5].copy_from_slice(&sent.to_ne_bytes());
    // SAFETY: the caller passes room for `n >= 5` bytes.
    unsafe { std::ptr::copy_nonoverlapping(reply.as_ptr(), out, reply.len()) };
    0
}
