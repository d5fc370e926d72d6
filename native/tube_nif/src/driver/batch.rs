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
//! Sending (`tube:send_batch/2`): one `port_control` carries many packets,
//! framed `<<Len:16, Bytes:Len/binary>>`, which go into the ring under one
//! publish of the producer index (so the peer is woken at most once), up to
//! the first that finds the ring full; that one and the rest are dropped and
//! counted, and the answer says how many went in.

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
