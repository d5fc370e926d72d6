//! A blocking Xenstore client over the daemon's Unix socket.
//!
//! One connection carries requests from any number of threads at once: each gets its own `req_id`, and a
//! reader thread matches replies to requests in whatever order they come, and forwards `XS_WATCH_EVENT`s to
//! an unbounded crossbeam channel (see [`Client::events`]), or to a handler of the caller's on that thread
//! (see [`Client::from_stream_with_handler`]). When the connection dies, requests in flight and
//! all later ones fail with [`Error::Closed`] and the events channel disconnects, so a watcher blocked in
//! `recv()` wakes up. Dropping the last [`Client`] clone shuts the socket down and joins the reader thread.
//!
//! ```no_run
//! use tube_xs::client::Client;
//! let xs = Client::connect_default()?;
//! xs.write(0, "/local/domain/0/name", b"dom0")?;
//! xs.watch("/local/domain/0/name", "t1")?;
//! let ev = xs.events().recv().expect("connection alive");  // fires once straight away
//! assert_eq!(ev.token, "t1");
//! # Ok::<(), tube_xs::client::Error>(())
//! ```

mod conn;
mod error;
mod socket_path;

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::Receiver;
use parking_lot::Mutex;

pub use error::Error;
pub use socket_path::{connect_trusted, default_socket_path, peer_uid, trusted_daemon_uid};

use crate::perms::PermList;
use crate::wire::{join_fields, split_fields, DirectoryPart, MsgType, XsError};
use conn::{Shared, Sink};

/// A watch firing: the path that changed (or the watched path itself on set-up) and the watch's token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchEvent {
    /// The event's path (`<epath>`), relative if the watch was set on a relative path.
    pub path: String,
    /// The token given to [`Client::watch`].
    pub token: String,
}

/// What a watch handler (see [`Client::from_stream_with_handler`]) is called with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Watch {
    /// A watch fired.
    Event(WatchEvent),
    /// The connection ended; the handler is not called again.
    Closed,
}

/// A connection to a Xenstore daemon. Cheap to clone (clones share the connection); `Send + Sync`.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

/// The connection proper; its drop (with the last `Client`) closes the socket and joins the reader.
struct Inner {
    shared: Arc<Shared>,
    /// Longest wait for a reply, `None` for no limit; shared by all clones.
    timeout: Mutex<Option<Duration>>,
    events: Receiver<WatchEvent>,
    reader: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shared.shutdown();
        if let Some(h) = self.reader.get_mut().take() {
            let _ = h.join();
        }
    }
}

/// How many times `directory` restarts a piecewise listing whose node keeps changing before giving up.
const DIRECTORY_PART_RETRIES: usize = 16;

impl Client {
    /// Connects to the daemon's socket at `path`, refusing a daemon that runs as another uid
    /// than this process's (root excepted): see [`connect_trusted`].
    pub fn connect(path: &Path) -> Result<Client, Error> {
        Client::from_stream(connect_trusted(path)?)
    }

    /// Connects to [`default_socket_path`].
    pub fn connect_default() -> Result<Client, Error> {
        Client::connect(&default_socket_path())
    }

    /// Runs the protocol over an already connected stream (a socketpair, a passed fd, ...).
    pub fn from_stream(stream: UnixStream) -> Result<Client, Error> {
        let (tx, events) = crossbeam_channel::unbounded();
        Client::start(stream, Sink::Channel(tx), events)
    }

    /// As [`Client::from_stream`], but watch events go to `handler`, called on the connection's reader
    /// thread with each event and once when the connection ends: they reach their consumer without a
    /// thread hop of their own, in wire order with the replies. `handler` must not block (a request on
    /// this connection would wait for its own thread). [`Client::events`] then yields nothing.
    pub fn from_stream_with_handler(
        stream: UnixStream,
        handler: impl FnMut(Watch) + Send + 'static,
    ) -> Result<Client, Error> {
        let (_, events) = crossbeam_channel::unbounded();
        Client::start(stream, Sink::Handler(Box::new(handler)), events)
    }

    fn start(stream: UnixStream, sink: Sink, events: Receiver<WatchEvent>) -> Result<Client, Error> {
        let (shared, reader) = Shared::start(stream, sink)?;
        Ok(Client {
            inner: Arc::new(Inner {
                shared,
                timeout: Mutex::new(None),
                events,
                reader: Mutex::new(Some(reader)),
            }),
        })
    }

    /// A receiver of this connection's watch events; every clone takes from the same queue.
    pub fn events(&self) -> Receiver<WatchEvent> {
        self.inner.events.clone()
    }

    /// Limits how long every request (of this client and its clones) waits for its reply; `None`, the
    /// default, waits as long as the connection lives. A request that runs out of time fails with
    /// `Error::Io` of kind `TimedOut` and its late reply is dropped; the connection stays usable.
    pub fn set_timeout(&self, timeout: Option<Duration>) {
        *self.inner.timeout.lock() = timeout;
    }

    /// Sends a raw request and waits for the reply payload; an `XS_ERROR` reply is `Err(Error::Xs(..))`.
    pub fn request(&self, ty: MsgType, tx_id: u32, payload: &[u8]) -> Result<Vec<u8>, Error> {
        let timeout = *self.inner.timeout.lock();
        self.inner.shared.request(ty, tx_id, payload, timeout)
    }

    /// Sends `reqs` (type, transaction id, payload) together and returns one result per
    /// request, in order. The daemon handles them in order, so this is the same as calling
    /// [`Client::request`] for each, in one round trip instead of one per request.
    pub fn request_many(&self, reqs: &[(MsgType, u32, &[u8])]) -> Vec<Result<Vec<u8>, Error>> {
        let timeout = *self.inner.timeout.lock();
        self.inner.shared.request_batch(reqs, timeout)
    }

    /// Sends `reqs` together, as [`Client::request_many`], without waiting: `done` is called
    /// with one result per request, in order, once every reply is in, on the connection's
    /// reader thread (so it must not block), or right away if nothing could be sent. If the
    /// connection ends first, the missing results are errors. The client's timeout does not
    /// apply: the caller keeps its own.
    pub fn request_many_then(
        &self,
        reqs: &[(MsgType, u32, &[u8])],
        done: impl FnOnce(Vec<Result<Vec<u8>, Error>>) + Send + 'static,
    ) {
        self.inner.shared.request_batch_then(reqs, Box::new(done));
    }

    /// Reads a node's value (`XS_READ`).
    pub fn read(&self, tx: u32, path: &str) -> Result<Vec<u8>, Error> {
        self.request(MsgType::Read, tx, &fields(&[path])?)
    }

    /// Writes a node's value, creating missing parents (`XS_WRITE`).
    pub fn write(&self, tx: u32, path: &str, value: &[u8]) -> Result<(), Error> {
        let mut payload = fields(&[path])?;
        payload.extend_from_slice(value);
        self.request(MsgType::Write, tx, &payload).map(drop)
    }

    /// Creates a node and missing parents, leaving existing values alone (`XS_MKDIR`).
    pub fn mkdir(&self, tx: u32, path: &str) -> Result<(), Error> {
        self.request(MsgType::Mkdir, tx, &fields(&[path])?)
            .map(drop)
    }

    /// Removes a node and its children (`XS_RM`).
    pub fn rm(&self, tx: u32, path: &str) -> Result<(), Error> {
        self.request(MsgType::Rm, tx, &fields(&[path])?).map(drop)
    }

    /// Names of a node's children (`XS_DIRECTORY`). A list longer than one payload (`E2BIG`) is read in
    /// pieces with `XS_DIRECTORY_PART`, restarting if the node changes meanwhile, as Xen's libxenstore does.
    pub fn directory(&self, tx: u32, path: &str) -> Result<Vec<String>, Error> {
        match self.request(MsgType::Directory, tx, &fields(&[path])?) {
            Ok(list) => names(&list),
            Err(Error::Xs(XsError::E2big)) => self.directory_in_parts(tx, path),
            Err(e) => Err(e),
        }
    }

    fn directory_in_parts(&self, tx: u32, path: &str) -> Result<Vec<String>, Error> {
        'restart: for _ in 0..DIRECTORY_PART_RETRIES {
            let mut list = Vec::new();
            let mut generation: Option<Vec<u8>> = None;
            loop {
                let reply = self.request(
                    MsgType::DirectoryPart,
                    tx,
                    &fields(&[path, &list.len().to_string()])?,
                )?;
                let part = DirectoryPart::parse(&reply)
                    .ok_or_else(|| Error::Protocol("directory part without generation".into()))?;
                match &generation {
                    Some(g) if g.as_slice() != part.generation => continue 'restart,
                    Some(_) => {}
                    None => generation = Some(part.generation.to_vec()),
                }
                if !part.complete && part.names.is_empty() {
                    return Err(Error::Protocol("directory part made no progress".into()));
                }
                list.extend_from_slice(part.names);
                if part.complete {
                    return names(&list);
                }
            }
        }
        Err(Error::Xs(XsError::Eagain))
    }

    /// A node's permissions (`XS_GET_PERMS`).
    pub fn get_perms(&self, tx: u32, path: &str) -> Result<PermList, Error> {
        let reply = self.request(MsgType::GetPerms, tx, &fields(&[path])?)?;
        PermList::parse(&split_fields(&reply))
            .map_err(|_| Error::Protocol("malformed permission list".into()))
    }

    /// Sets a node's permissions (`XS_SET_PERMS`).
    pub fn set_perms(&self, tx: u32, path: &str, perms: &PermList) -> Result<(), Error> {
        let mut payload = fields(&[path])?;
        payload.extend_from_slice(&perms.to_wire());
        self.request(MsgType::SetPerms, tx, &payload).map(drop)
    }

    /// Adds a watch (`XS_WATCH`); it fires once straight away, then on every change at or below `path`.
    pub fn watch(&self, path: &str, token: &str) -> Result<(), Error> {
        self.request(MsgType::Watch, 0, &fields(&[path, token])?)
            .map(drop)
    }

    /// Removes a watch (`XS_UNWATCH`). Events already queued stay in the channel.
    pub fn unwatch(&self, path: &str, token: &str) -> Result<(), Error> {
        self.request(MsgType::Unwatch, 0, &fields(&[path, token])?)
            .map(drop)
    }

    /// Removes all watches and transactions of this connection (`XS_RESET_WATCHES`).
    pub fn reset_watches(&self) -> Result<(), Error> {
        self.request(MsgType::ResetWatches, 0, b"\0").map(drop)
    }

    /// Starts a transaction (`XS_TRANSACTION_START`) and returns its id, to pass as `tx` to other calls.
    pub fn transaction_start(&self) -> Result<u32, Error> {
        let reply = self.request(MsgType::TransactionStart, 0, b"\0")?;
        parse_number(&reply)
    }

    /// Commits (`commit = true`) or abandons a transaction (`XS_TRANSACTION_END`). A conflicting commit
    /// fails with `Err(Error::Xs(XsError::Eagain))`: start again.
    pub fn transaction_end(&self, tx: u32, commit: bool) -> Result<(), Error> {
        self.request(
            MsgType::TransactionEnd,
            tx,
            if commit { b"T\0" } else { b"F\0" },
        )
        .map(drop)
    }

    /// A domain's home path, `/local/domain/<domid>` (`XS_GET_DOMAIN_PATH`).
    pub fn get_domain_path(&self, domid: u32) -> Result<String, Error> {
        let reply = self.request(MsgType::GetDomainPath, 0, &fields(&[&domid.to_string()])?)?;
        first_string(&reply)
    }

    /// Whether the daemon knows domain `domid` (`XS_IS_DOMAIN_INTRODUCED`).
    pub fn is_domain_introduced(&self, domid: u32) -> Result<bool, Error> {
        let reply = self.request(
            MsgType::IsDomainIntroduced,
            0,
            &fields(&[&domid.to_string()])?,
        )?;
        match split_fields(&reply).first().copied() {
            Some(b"T") => Ok(true),
            Some(b"F") => Ok(false),
            _ => Err(Error::Protocol(
                "IS_DOMAIN_INTRODUCED reply is neither T nor F".into(),
            )),
        }
    }

    /// Binds this connection to a domain (tube's local-domain extension: `XS_INTRODUCE` with
    /// `<domid>|self|` or `auto|self|`) and returns the domid the daemon bound. `None` lets the daemon pick
    /// the lowest free one.
    pub fn introduce_self(&self, domid: Option<u32>) -> Result<u32, Error> {
        let id = domid.map_or_else(|| "auto".to_owned(), |d| d.to_string());
        let reply = self.request(MsgType::Introduce, 0, &fields(&[&id, "self"])?)?;
        parse_number(&reply)
    }

    /// Releases a domain (`XS_RELEASE`); privileged connections only.
    pub fn release(&self, domid: u32) -> Result<(), Error> {
        self.request(MsgType::Release, 0, &fields(&[&domid.to_string()])?)
            .map(drop)
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").finish_non_exhaustive()
    }
}

/// NUL-terminated fields; a field containing a NUL cannot be sent (`EINVAL`).
fn fields(items: &[&str]) -> Result<Vec<u8>, Error> {
    if items.iter().any(|s| s.as_bytes().contains(&0)) {
        return Err(Error::Xs(XsError::Einval));
    }
    let bytes: Vec<&[u8]> = items.iter().map(|s| s.as_bytes()).collect();
    Ok(join_fields(&bytes))
}

/// A list of NUL-terminated names as strings.
fn names(list: &[u8]) -> Result<Vec<String>, Error> {
    split_fields(list)
        .into_iter()
        .map(|n| {
            String::from_utf8(n.to_vec())
                .map_err(|_| Error::Protocol("child name is not UTF-8".into()))
        })
        .collect()
}

/// The first field of a reply as a string.
fn first_string(reply: &[u8]) -> Result<String, Error> {
    let f = split_fields(reply).first().copied().unwrap_or_default();
    String::from_utf8(f.to_vec()).map_err(|_| Error::Protocol("reply is not UTF-8".into()))
}

/// The first field of a reply as an unsigned decimal.
fn parse_number(reply: &[u8]) -> Result<u32, Error> {
    let s = first_string(reply)?;
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Error::Protocol(format!(
            "expected a decimal number, got {s:?}"
        )));
    }
    s.parse()
        .map_err(|_| Error::Protocol(format!("number out of range: {s:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_refuse_nul() {
        assert!(matches!(
            fields(&["/a\0b"]),
            Err(Error::Xs(XsError::Einval))
        ));
        assert_eq!(fields(&["/a", "t"]).unwrap(), b"/a\0t\0");
    }

    #[test]
    fn numbers_are_strict() {
        assert_eq!(parse_number(b"17\0").unwrap(), 17);
        assert_eq!(parse_number(b"17").unwrap(), 17);
        for bad in [&b""[..], b"\0", b"-1\0", b"x\0", b"99999999999\0", b" 1\0"] {
            assert!(
                matches!(parse_number(bad), Err(Error::Protocol(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn client_is_send_sync() {
        fn check<T: Send + Sync>() {}
        check::<Client>();
    }
}
