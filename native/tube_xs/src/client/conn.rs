//! The connection core: one socket, a table of requests in flight keyed by `req_id`, and a reader thread
//! that hands each reply to its waiter and each watch event to the events channel.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::net::Shutdown;
use std::sync::Arc;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use parking_lot::Mutex;

use super::{Error, Watch, WatchEvent};
use crate::wire::{Decoder, Message, MsgType, XsError, PAYLOAD_MAX};

/// One request's outcome.
pub(crate) type Outcome = Result<Vec<u8>, Error>;

/// What runs once every reply of an asynchronous batch is in, on the reader thread.
pub(crate) type BatchDone = Box<dyn FnOnce(Vec<Outcome>) + Send>;

/// Where a reply goes: the request's type (to check the reply's) and who takes the result.
struct Waiter {
    ty: MsgType,
    reply: Reply,
}

enum Reply {
    /// A caller blocked on a one-shot channel.
    Channel(Sender<Outcome>),
    /// Slot `.1` of an asynchronous batch.
    Batch(Arc<BatchSlots>, usize),
}

impl Reply {
    fn complete(self, r: Outcome) {
        match self {
            Reply::Channel(tx) => {
                let _ = tx.send(r);
            }
            Reply::Batch(b, i) => b.fill(i, r),
        }
    }
}

/// The results of an asynchronous batch as they come in; the callback gets them all, in order,
/// when the last one lands.
pub(crate) struct BatchSlots {
    state: Mutex<BatchState>,
}

struct BatchState {
    results: Vec<Option<Outcome>>,
    missing: usize,
    done: Option<BatchDone>,
}

impl BatchSlots {
    fn new(n: usize, done: BatchDone) -> Arc<BatchSlots> {
        Arc::new(BatchSlots {
            state: Mutex::new(BatchState {
                results: (0..n).map(|_| None).collect(),
                missing: n,
                done: Some(done),
            }),
        })
    }

    /// Stores result `i`; the last one runs the callback (outside the lock).
    fn fill(&self, i: usize, r: Outcome) {
        let mut st = self.state.lock();
        let Some(slot) = st.results.get_mut(i) else { return };
        if slot.is_some() {
            return;
        }
        *slot = Some(r);
        st.missing -= 1;
        if st.missing > 0 {
            return;
        }
        let done = st.done.take();
        let results = st.results.iter_mut().map(|r| r.take().unwrap_or(Err(Error::Closed))).collect();
        drop(st);
        if let Some(done) = done {
            done(results);
        }
    }
}

/// Where the reader thread puts watch events.
pub(crate) enum Sink {
    /// An unbounded channel; dropping the sender tells receivers the connection ended.
    Channel(Sender<WatchEvent>),
    /// A handler called on the reader thread, in wire order with the replies.
    Handler(Box<dyn FnMut(Watch) + Send>),
}

impl Sink {
    fn event(&mut self, ev: WatchEvent) {
        match self {
            Sink::Channel(tx) => {
                // No receiver left only happens while the client is being dropped; the event is moot then.
                let _ = tx.send(ev);
            }
            Sink::Handler(h) => h(Watch::Event(ev)),
        }
    }

    /// Tells the sink the connection ended; a channel learns it when its sender drops here.
    fn closed(self) {
        if let Sink::Handler(mut h) = self {
            h(Watch::Closed);
        }
    }
}

/// Requests in flight. Once `closed` is set no request is added and the table stays empty.
#[derive(Default)]
struct Pending {
    waiters: HashMap<u32, Waiter>,
    /// Ids whose waiter gave up (timed out); their late replies are dropped, and the ids are not reused
    /// until then.
    abandoned: HashSet<u32>,
    next_req_id: u32,
    closed: bool,
}

/// State shared by the client handles and the reader thread.
pub(crate) struct Shared {
    /// The socket; writes hold this lock so that messages from several threads never interleave.
    writer: Mutex<UnixStream>,
    /// The same socket, unlocked, for shutting it down even while a writer is blocked.
    control: UnixStream,
    pending: Mutex<Pending>,
}

impl Shared {
    /// Wraps a connected socket and starts the reader thread, which owns `sink`.
    pub(crate) fn start(
        stream: UnixStream,
        sink: Sink,
    ) -> std::io::Result<(std::sync::Arc<Shared>, std::thread::JoinHandle<()>)> {
        let read_half = stream.try_clone()?;
        let control = stream.try_clone()?;
        let shared = std::sync::Arc::new(Shared {
            writer: Mutex::new(stream),
            control,
            pending: Mutex::default(),
        });
        let reader_shared = shared.clone();
        let reader = std::thread::Builder::new()
            .name("tube_xs-reader".into())
            .spawn(move || reader_shared.read_loop(read_half, sink))?;
        Ok((shared, reader))
    }

    /// Sends one request and blocks until its reply (the payload, or the daemon's error), or until
    /// `timeout` passes (`Io` of kind `TimedOut`; the late reply is then dropped).
    pub(crate) fn request(
        &self,
        ty: MsgType,
        tx_id: u32,
        payload: &[u8],
        timeout: Option<std::time::Duration>,
    ) -> Result<Vec<u8>, Error> {
        self.request_batch(&[(ty, tx_id, payload)], timeout)
            .pop()
            .unwrap_or(Err(Error::Closed))
    }

    /// Sends several requests in one write, so they are in flight together, and waits for every
    /// reply. The daemon handles a connection's requests in order, so a batch behaves as the
    /// same requests one after another, at the cost of one round trip. One result per request.
    pub(crate) fn request_batch(
        &self,
        reqs: &[(MsgType, u32, &[u8])],
        timeout: Option<std::time::Duration>,
    ) -> Vec<Result<Vec<u8>, Error>> {
        type Slot = Result<(u32, Receiver<Result<Vec<u8>, Error>>), Error>;
        let mut bytes = Vec::new();
        let slots: Vec<Slot> = reqs
            .iter()
            .map(|&(ty, tx_id, payload)| {
                if payload.len() > PAYLOAD_MAX {
                    return Err(Error::Xs(XsError::E2big));
                }
                let (tx, rx) = crossbeam_channel::bounded(1);
                let req_id = self.register(ty, Reply::Channel(tx))?;
                Message::new(ty, req_id, tx_id, payload.to_vec()).encode(&mut bytes);
                Ok((req_id, rx))
            })
            .collect();
        if let Err(e) = self.send(&bytes) {
            let mut p = self.pending.lock();
            for (req_id, _) in slots.iter().flatten() {
                p.waiters.remove(req_id);
            }
            drop(p);
            // A partial write leaves the stream out of step: end the connection for everyone.
            self.shutdown();
            let closed = matches!(
                e.kind(),
                std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::NotConnected
            );
            return slots
                .into_iter()
                .map(|_| {
                    Err(if closed {
                        Error::Closed
                    } else {
                        Error::Io(std::io::Error::new(e.kind(), e.to_string()))
                    })
                })
                .collect();
        }
        slots
            .into_iter()
            .map(|slot| slot.and_then(|(req_id, rx)| self.wait(req_id, &rx, timeout)))
            .collect()
    }

    /// Sends several requests in one write, as [`Shared::request_batch`], without waiting: `done`
    /// gets one result per request, in order, on the reader thread once the last reply is in (or
    /// at once, on this thread, if none could be sent). There is no timeout: the caller keeps its
    /// own.
    pub(crate) fn request_batch_then(&self, reqs: &[(MsgType, u32, &[u8])], done: BatchDone) {
        let slots = BatchSlots::new(reqs.len(), done);
        let mut bytes = Vec::new();
        let mut sent = Vec::new();
        for (i, &(ty, tx_id, payload)) in reqs.iter().enumerate() {
            if payload.len() > PAYLOAD_MAX {
                slots.fill(i, Err(Error::Xs(XsError::E2big)));
                continue;
            }
            match self.register(ty, Reply::Batch(slots.clone(), i)) {
                Ok(req_id) => {
                    Message::new(ty, req_id, tx_id, payload.to_vec()).encode(&mut bytes);
                    sent.push(req_id);
                }
                Err(e) => slots.fill(i, Err(e)),
            }
        }
        if bytes.is_empty() {
            return;
        }
        if self.send(&bytes).is_err() {
            let failed: Vec<Waiter> = {
                let mut p = self.pending.lock();
                sent.iter().filter_map(|id| p.waiters.remove(id)).collect()
            };
            self.shutdown();
            for w in failed {
                w.reply.complete(Err(Error::Closed));
            }
        }
    }

    /// Waits for the reply to `req_id`, or gives up after `timeout`.
    fn wait(
        &self,
        req_id: u32,
        rx: &Receiver<Result<Vec<u8>, Error>>,
        timeout: Option<std::time::Duration>,
    ) -> Result<Vec<u8>, Error> {
        match timeout {
            None => rx.recv().unwrap_or(Err(Error::Closed)),
            Some(t) => match rx.recv_timeout(t) {
                Ok(r) => r,
                Err(RecvTimeoutError::Disconnected) => Err(Error::Closed),
                Err(RecvTimeoutError::Timeout) => self.abandon(req_id, rx),
            },
        }
    }

    /// Gives up waiting for `req_id`, unless its reply slipped in meanwhile.
    fn abandon(
        &self,
        req_id: u32,
        rx: &Receiver<Result<Vec<u8>, Error>>,
    ) -> Result<Vec<u8>, Error> {
        let mut p = self.pending.lock();
        if p.waiters.remove(&req_id).is_some() {
            p.abandoned.insert(req_id);
            return Err(Error::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no reply in time",
            )));
        }
        drop(p);
        // The reader took the waiter out, so the result is in the channel (or the connection ended).
        rx.recv().unwrap_or(Err(Error::Closed))
    }

    /// Shuts the socket down both ways; the reader thread then sees end of stream and fails the waiters.
    pub(crate) fn shutdown(&self) {
        let _ = self.control.shutdown(Shutdown::Both);
    }

    fn register(&self, ty: MsgType, reply: Reply) -> Result<u32, Error> {
        let mut p = self.pending.lock();
        if p.closed {
            return Err(Error::Closed);
        }
        // Ids wrap; skip any still in flight (at most `waiters.len()` of them).
        let mut id = p.next_req_id;
        while p.waiters.contains_key(&id) || p.abandoned.contains(&id) {
            id = id.wrapping_add(1);
        }
        p.next_req_id = id.wrapping_add(1);
        p.waiters.insert(id, Waiter { ty, reply });
        Ok(id)
    }

    /// Writes all of `bytes` with `MSG_NOSIGNAL`, so a dead peer gives `EPIPE` instead of killing the host
    /// process (an Erlang VM must not die of `SIGPIPE`).
    fn send(&self, mut bytes: &[u8]) -> std::io::Result<()> {
        let sock = self.writer.lock();
        while !bytes.is_empty() {
            // SAFETY: the fd is open for as long as `sock` (the locked UnixStream) lives, and the pointer and
            // length describe the live slice `bytes`.
            let n = unsafe {
                libc::send(
                    sock.as_raw_fd(),
                    bytes.as_ptr().cast(),
                    bytes.len(),
                    libc::MSG_NOSIGNAL,
                )
            };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            bytes = &bytes[n as usize..];
        }
        Ok(())
    }

    /// The reader thread's body. Ends on end of stream, a socket error or a protocol violation; then every
    /// waiter is failed, new requests are refused, and the sink is told (a channel by disconnecting).
    fn read_loop(&self, mut sock: UnixStream, mut sink: Sink) {
        let failure = self.pump(&mut sock, &mut sink);
        let _ = sock.shutdown(Shutdown::Both);
        let waiters = {
            let mut p = self.pending.lock();
            p.closed = true;
            std::mem::take(&mut p.waiters)
        };
        for w in waiters.into_values() {
            w.reply.complete(Err(failure.duplicate()));
        }
        sink.closed();
    }

    /// Reads and dispatches until the stream ends (`Closed`) or breaks (`Protocol`).
    fn pump(&self, sock: &mut UnixStream, sink: &mut Sink) -> Error {
        let mut decoder = Decoder::new();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match sock.read(&mut buf) {
                Ok(0) => return Error::Closed,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => return Error::Closed,
            };
            decoder.push(&buf[..n]);
            loop {
                match decoder.next() {
                    Ok(Some(msg)) => {
                        if let Err(e) = self.dispatch(msg, sink) {
                            return e;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => return Error::Protocol(e.to_string()),
                }
            }
        }
    }

    /// Routes one message from the daemon. Errors are violations that end the connection.
    fn dispatch(&self, msg: Message, sink: &mut Sink) -> Result<(), Error> {
        if msg.ty == MsgType::WatchEvent as u32 {
            sink.event(parse_watch_event(&msg.payload)?);
            return Ok(());
        }
        let w = {
            let mut p = self.pending.lock();
            match p.waiters.remove(&msg.req_id) {
                Some(w) => w,
                // The waiter timed out; its reply is dropped and the id may be reused.
                None if p.abandoned.remove(&msg.req_id) => return Ok(()),
                None => {
                    return Err(Error::Protocol(format!(
                        "reply to unknown request id {}",
                        msg.req_id
                    )))
                }
            }
        };
        w.reply.complete(reply_result(w.ty, msg));
        Ok(())
    }
}

/// The waiter's result for a reply: its payload if the type matches, the daemon's error, or a violation.
fn reply_result(expected: MsgType, msg: Message) -> Result<Vec<u8>, Error> {
    if msg.ty == MsgType::Error as u32 {
        let fields = msg.fields();
        let name = fields
            .first()
            .and_then(|f| std::str::from_utf8(f).ok())
            .unwrap_or("");
        return Err(XsError::from_name(name)
            .map(Error::Xs)
            .unwrap_or_else(|| Error::Protocol(format!("unknown error name {name:?}"))));
    }
    if msg.ty != expected as u32 {
        return Err(Error::Protocol(format!(
            "reply type {} to {}",
            msg.ty,
            expected.name()
        )));
    }
    Ok(msg.payload)
}

/// `<epath>|<token>|` into a [`WatchEvent`].
fn parse_watch_event(payload: &[u8]) -> Result<WatchEvent, Error> {
    let fields = crate::wire::split_fields(payload);
    let text = |f: &[u8]| {
        String::from_utf8(f.to_vec())
            .map_err(|_| Error::Protocol("watch event is not UTF-8".into()))
    };
    match fields.as_slice() {
        [path, token, ..] => Ok(WatchEvent {
            path: text(path)?,
            token: text(token)?,
        }),
        _ => Err(Error::Protocol("watch event without path and token".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_reply_maps_name() {
        let r = reply_result(MsgType::Read, Message::error(1, 0, XsError::Enoent));
        assert!(matches!(r, Err(Error::Xs(XsError::Enoent))));
        let garbage = Message {
            ty: 16,
            req_id: 1,
            tx_id: 0,
            payload: b"EWHAT\0".to_vec(),
        };
        assert!(matches!(
            reply_result(MsgType::Read, garbage),
            Err(Error::Protocol(_))
        ));
        let empty = Message {
            ty: 16,
            req_id: 1,
            tx_id: 0,
            payload: Vec::new(),
        };
        assert!(matches!(
            reply_result(MsgType::Read, empty),
            Err(Error::Protocol(_))
        ));
    }

    #[test]
    fn reply_type_must_match() {
        let m = Message::new(MsgType::Write, 1, 0, b"OK\0".to_vec());
        assert!(matches!(
            reply_result(MsgType::Read, m.clone()),
            Err(Error::Protocol(_))
        ));
        assert_eq!(reply_result(MsgType::Write, m).unwrap(), b"OK\0");
    }

    #[test]
    fn watch_event_payloads() {
        let e = parse_watch_event(b"/a\0tok\0").unwrap();
        assert_eq!(
            e,
            WatchEvent {
                path: "/a".into(),
                token: "tok".into()
            }
        );
        assert!(parse_watch_event(b"/a\0").is_err());
        assert!(parse_watch_event(b"").is_err());
        assert!(parse_watch_event(b"/\xff\0t\0").is_err());
    }
}
