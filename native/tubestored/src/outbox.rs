//! A connection's outgoing byte queue. Replies and events are appended under the store lock
//! (so every connection sees changes in commit order); whoever finds the queue idle writes it
//! out. A queue that grows past its bound marks the connection dead instead of stalling
//! anyone: the slow reader is dropped.

use parking_lot::{Condvar, Mutex};
use std::collections::VecDeque;
use std::io::{self, Write};
use std::os::unix::net::UnixStream;

struct State {
    buf: Vec<u8>,
    flushing: bool,
    dead: bool,
    /// Replies held until their journal frame is durable, in queue order. Nothing from the
    /// first held reply on is sent.
    held: VecDeque<Held>,
}

/// A reply in `buf[start..end]` waiting for journal frame `seq`.
struct Held {
    start: usize,
    end: usize,
    seq: u64,
    req_id: u32,
    tx_id: u32,
}

impl State {
    /// Bytes that may go out now: everything before the first held reply.
    fn sendable(&self) -> usize {
        self.held.front().map_or(self.buf.len(), |h| h.start)
    }

    /// Takes the sendable bytes off the front of the queue.
    fn take_sendable(&mut self) -> Vec<u8> {
        let n = self.sendable();
        if n == self.buf.len() {
            return std::mem::take(&mut self.buf);
        }
        let out = self.buf.drain(..n).collect();
        self.shift_held(0, -(n as isize));
        out
    }

    /// Moves the held offsets at or after `from` by `by` bytes.
    fn shift_held(&mut self, from: usize, by: isize) {
        for h in self.held.iter_mut().filter(|h| h.start >= from) {
            h.start = (h.start as isize + by) as usize;
            h.end = (h.end as isize + by) as usize;
        }
    }
}

/// Outgoing queue of one connection.
pub struct Outbox {
    state: Mutex<State>,
    cv: Condvar,
    limit: usize,
    stream: Option<UnixStream>,
}

impl Outbox {
    /// A queue that writes to `stream` (None: messages are only kept, for tests).
    pub fn new(stream: Option<UnixStream>, limit: usize) -> Outbox {
        Outbox {
            state: Mutex::new(State { buf: Vec::new(), flushing: false, dead: false, held: VecDeque::new() }),
            cv: Condvar::new(),
            limit,
            stream,
        }
    }

    /// Appends one message; `wake` tells the writer thread (pass false when the caller will
    /// call [`Outbox::flush_now`] itself). Overflow kills the connection.
    pub fn push(&self, ty: u32, req_id: u32, tx_id: u32, payload: &[u8], wake: bool) {
        let mut st = self.state.lock();
        if !self.append(&mut st, ty, req_id, tx_id, payload) {
            drop(st);
            self.kill();
            return;
        }
        if wake {
            self.cv.notify_one();
        }
    }

    /// Appends one message under the queue's lock; false when the connection is (now) dead.
    fn append(&self, st: &mut State, ty: u32, req_id: u32, tx_id: u32, payload: &[u8]) -> bool {
        if st.dead {
            return false;
        }
        if st.buf.len() + payload.len() + tube_xs::wire::HEADER_LEN > self.limit {
            st.dead = true;
            st.buf = Vec::new();
            st.held.clear();
            return false;
        }
        let hdr = tube_xs::wire::Header { ty, req_id, tx_id, len: payload.len() as u32 };
        st.buf.extend_from_slice(&hdr.to_bytes());
        st.buf.extend_from_slice(payload);
        true
    }

    /// Appends a reply that must not go out before journal frame `seq` is durable: see
    /// [`Outbox::settle`]. Everything queued after it waits too, so order is kept.
    pub fn push_held(&self, ty: u32, req_id: u32, tx_id: u32, payload: &[u8], seq: u64) {
        let mut st = self.state.lock();
        let start = st.buf.len();
        if !self.append(&mut st, ty, req_id, tx_id, payload) {
            drop(st);
            self.kill();
            return;
        }
        let end = st.buf.len();
        st.held.push_back(Held { start, end, seq, req_id, tx_id });
    }

    /// Releases the held replies of frames up to `upto`; `failed(seq)` says which frames could
    /// not be made durable: their reply becomes an XS_ERROR with that error.
    pub fn settle(&self, upto: u64, failed: impl Fn(u64) -> Option<tube_xs::wire::XsError>) {
        let mut st = self.state.lock();
        while st.held.front().is_some_and(|h| h.seq <= upto) {
            let Some(h) = st.held.pop_front() else { break };
            if let Some(e) = failed(h.seq) {
                let p = crate::state::error_payload(e);
                let hdr = tube_xs::wire::Header {
                    ty: tube_xs::wire::MsgType::Error as u32,
                    req_id: h.req_id,
                    tx_id: h.tx_id,
                    len: p.len() as u32,
                };
                let mut msg = hdr.to_bytes().to_vec();
                msg.extend_from_slice(&p);
                let delta = msg.len() as isize - (h.end - h.start) as isize;
                st.buf.splice(h.start..h.end, msg);
                st.shift_held(h.end, delta);
            }
        }
        drop(st);
        self.cv.notify_one();
    }

    /// Marks the connection dead and shuts its socket down, which ends its reader and writer.
    pub fn kill(&self) {
        self.state.lock().dead = true;
        self.cv.notify_all();
        if let Some(s) = &self.stream {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Bytes queued and not yet handed to the socket.
    pub fn pending(&self) -> usize {
        self.state.lock().buf.len()
    }

    /// True once the connection was killed.
    pub fn is_dead(&self) -> bool {
        self.state.lock().dead
    }

    /// Takes everything queued (tests and the fuzzer read replies this way).
    pub fn take(&self) -> Vec<u8> {
        let mut st = self.state.lock();
        st.held.clear();
        std::mem::take(&mut st.buf)
    }

    /// Writes what is queued without blocking, if no one else is writing; leftovers go to the
    /// writer thread.
    pub fn flush_now(&self) {
        let Some(stream) = &self.stream else { return };
        let mut st = self.state.lock();
        if st.flushing || st.sendable() == 0 || st.dead {
            return;
        }
        let buf = st.take_sendable();
        st.flushing = true;
        drop(st);
        let sent = send_nonblocking(stream, &buf);
        let mut st = self.state.lock();
        st.flushing = false;
        match sent {
            Ok(n) if n == buf.len() => {
                if st.sendable() > 0 {
                    self.cv.notify_one();
                }
            }
            Ok(n) => {
                let rest = &buf[n..];
                st.buf.splice(0..0, rest.iter().copied());
                st.shift_held(0, rest.len() as isize);
                self.cv.notify_one();
            }
            Err(_) => {
                st.dead = true;
                drop(st);
                self.kill();
            }
        }
    }

    /// The writer thread's loop: blocking writes of whatever gets queued, until the connection dies.
    pub fn writer_loop_on(&self, stream: UnixStream) {
        let mut out = &stream;
        loop {
            let mut st = self.state.lock();
            while (st.sendable() == 0 || st.flushing) && !st.dead {
                self.cv.wait(&mut st);
            }
            if st.dead {
                return;
            }
            let buf = st.take_sendable();
            st.flushing = true;
            drop(st);
            let r = out.write_all(&buf);
            let mut st = self.state.lock();
            st.flushing = false;
            if r.is_err() {
                st.dead = true;
                drop(st);
                self.kill();
                return;
            }
            if st.sendable() > 0 {
                // Someone queued while we wrote; loop round without waiting.
                continue;
            }
        }
    }
}

/// `send` with MSG_DONTWAIT: returns how much went out (0 when the socket buffer is full).
fn send_nonblocking(stream: &UnixStream, buf: &[u8]) -> io::Result<usize> {
    use std::os::fd::AsRawFd;
    let mut done = 0;
    while done < buf.len() {
        let rest = &buf[done..];
        // SAFETY: `rest` is a valid readable slice for its length, and the fd is owned by
        // `stream`, which outlives the call.
        let n = unsafe {
            libc::send(
                stream.as_raw_fd(),
                rest.as_ptr().cast(),
                rest.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::WouldBlock => return Ok(done),
                io::ErrorKind::Interrupted => continue,
                _ => return Err(e),
            }
        }
        done += n as usize;
    }
    Ok(done)
}
