//! A connection's outgoing byte queue. Replies and events are appended under the store lock
//! (so every connection sees changes in commit order); whoever finds the queue idle writes it
//! out. A queue that grows past its bound marks the connection dead instead of stalling
//! anyone: the slow reader is dropped.

use parking_lot::{Condvar, Mutex};
use std::io::{self, Write};
use std::os::unix::net::UnixStream;

struct State {
    buf: Vec<u8>,
    flushing: bool,
    dead: bool,
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
            state: Mutex::new(State { buf: Vec::new(), flushing: false, dead: false }),
            cv: Condvar::new(),
            limit,
            stream,
        }
    }

    /// Appends one message; `wake` tells the writer thread (pass false when the caller will
    /// call [`Outbox::flush_now`] itself). Overflow kills the connection.
    pub fn push(&self, ty: u32, req_id: u32, tx_id: u32, payload: &[u8], wake: bool) {
        let hdr = tube_xs::wire::Header { ty, req_id, tx_id, len: payload.len() as u32 };
        let mut st = self.state.lock();
        if st.dead {
            return;
        }
        if st.buf.len() + payload.len() + tube_xs::wire::HEADER_LEN > self.limit {
            st.dead = true;
            st.buf = Vec::new();
            drop(st);
            self.kill();
            return;
        }
        st.buf.extend_from_slice(&hdr.to_bytes());
        st.buf.extend_from_slice(payload);
        if wake {
            self.cv.notify_one();
        }
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
        std::mem::take(&mut self.state.lock().buf)
    }

    /// Writes what is queued without blocking, if no one else is writing; leftovers go to the
    /// writer thread.
    pub fn flush_now(&self) {
        let Some(stream) = &self.stream else { return };
        let mut st = self.state.lock();
        if st.flushing || st.buf.is_empty() || st.dead {
            return;
        }
        let buf = std::mem::take(&mut st.buf);
        st.flushing = true;
        drop(st);
        let sent = send_nonblocking(stream, &buf);
        let mut st = self.state.lock();
        st.flushing = false;
        match sent {
            Ok(n) if n == buf.len() => {
                if !st.buf.is_empty() {
                    self.cv.notify_one();
                }
            }
            Ok(n) => {
                let mut rest = buf[n..].to_vec();
                rest.extend_from_slice(&st.buf);
                st.buf = rest;
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
            while (st.buf.is_empty() || st.flushing) && !st.dead {
                self.cv.wait(&mut st);
            }
            if st.dead {
                return;
            }
            let buf = std::mem::take(&mut st.buf);
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
            if !st.buf.is_empty() {
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
