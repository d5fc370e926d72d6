//! The socket side: binding (with stale-socket and already-running detection), the accept
//! loop, and one reader thread plus one writer thread per connection.

use crate::ops::Quotas;
use crate::outbox::Outbox;
use crate::files;
use crate::log::Log;
use crate::persist::{self, Loaded};
use crate::state::State;
use crate::store::Store;
use crate::watch::ConnId;
use parking_lot::Mutex;
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use tube_xs::wire::Decoder;

/// How to start a daemon.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Socket path; None: $XENSTORED_PATH, else the per-user default.
    pub socket: Option<PathBuf>,
    /// Database file for persistence; None: memory only.
    pub db: Option<PathBuf>,
    /// Limits for unprivileged connections.
    pub quotas: Quotas,
    /// Log file; None: `<socket>.log`, next to the socket.
    pub log: Option<PathBuf>,
    /// Log to the log file only, not to stderr too.
    pub quiet: bool,
    /// With `db`: bound, in bytes, of each of the two history files (0: no history).
    pub history_bytes: u64,
}

/// Why [`Server::bind`] did not give a server.
#[derive(Debug)]
pub enum BindError {
    /// Another daemon answers on the socket.
    AlreadyRunning(PathBuf),
    /// Anything else.
    Io(io::Error),
}

impl fmt::Display for BindError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BindError::AlreadyRunning(p) => write!(f, "already running on {}", p.display()),
            BindError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for BindError {}

impl From<io::Error> for BindError {
    fn from(e: io::Error) -> Self {
        BindError::Io(e)
    }
}

struct Shared {
    state: Mutex<State>,
    log: Log,
    stop: AtomicBool,
    next_id: AtomicU64,
    path: PathBuf,
    ino: (u64, u64),
    /// A duplicate of the listening socket, shut down to wake the accept loop on stop; owned
    /// here, so its fd cannot be closed and reused while a `Stopper` may still use it.
    listen_ctl: UnixListener,
}

/// A bound, not yet running daemon.
pub struct Server {
    listener: UnixListener,
    shared: Arc<Shared>,
    journal: Option<Loaded>,
    history_bytes: u64,
}

/// `<socket>.log`: where the daemon logs, next to its socket.
pub fn log_path(socket: &Path) -> PathBuf {
    let mut s = socket.as_os_str().to_owned();
    s.push(".log");
    PathBuf::from(s)
}

/// Stops a running server from another thread (signal handler thread, tests).
#[derive(Clone)]
pub struct Stopper(Arc<Shared>);

/// A server running on its own thread.
pub struct ServerHandle {
    stopper: Stopper,
    thread: Option<JoinHandle<io::Result<()>>>,
}

/// The socket path the options resolve to.
pub fn socket_path(opts: &Options) -> PathBuf {
    if let Some(p) = &opts.socket {
        return p.clone();
    }
    match std::env::var_os("XENSTORED_PATH") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => default_socket_path(),
    }
}

/// The per-user default socket (the client library's rule, so both sides agree).
pub fn default_socket_path() -> PathBuf {
    tube_xs::client::default_socket_path()
}

impl Server {
    /// Loads the database (if any) and binds the socket. Starts no thread, so the caller may fork.
    pub fn bind(opts: Options) -> Result<Server, BindError> {
        let path = socket_path(&opts);
        let listener = bind_socket(&path)?;
        let md = fs::metadata(&path)?;
        let ino = (md.dev(), md.ino());
        // Loaded only once the socket is ours: a running daemon's journal is never touched.
        let loaded = (|| -> Result<_, BindError> {
            let log = Log::open(&opts.log.clone().unwrap_or_else(|| log_path(&path)), opts.quiet)?;
            let (store, journal) = match &opts.db {
                Some(db) => {
                    let (s, l) = persist::load_logged(db, &log)?;
                    (s, Some(l))
                }
                None => (Store::new(), None),
            };
            Ok((log, store, journal, listener.try_clone()?))
        })();
        let (log, store, journal, listen_ctl) = match loaded {
            Ok(x) => x,
            Err(e) => {
                drop(listener);
                unlink_if_ours(&path, ino);
                return Err(e);
            }
        };
        let mut state = State::new(store, opts.quotas);
        state.log = log.clone();
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            log,
            stop: AtomicBool::new(false),
            next_id: AtomicU64::new(1),
            path,
            ino,
            listen_ctl,
        });
        Ok(Server { listener, shared, journal, history_bytes: opts.history_bytes })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// A handle that stops [`Server::run`].
    pub fn stopper(&self) -> Stopper {
        Stopper(self.shared.clone())
    }

    /// Serves until stopped; then closes every connection, flushes the journal and unlinks the
    /// socket. Domains are not released on shutdown: their nodes stay in the database.
    pub fn run(mut self) -> io::Result<()> {
        if let Some(l) = self.journal.take() {
            let mut st = self.shared.state.lock();
            let j = l.start(self.shared.log.clone(), &st.store, self.history_bytes)?;
            st.journal = Some(j);
        }
        let res = self.accept_loop();
        let journal = {
            let mut st = self.shared.state.lock();
            st.shutting_down = true;
            for c in st.conns.values() {
                c.outbox.kill();
            }
            st.journal.take()
        };
        if let Some(j) = journal {
            j.sync();
        }
        unlink_if_ours(&self.shared.path, self.shared.ino);
        res
    }

    /// Runs the server on a new thread.
    pub fn spawn(self) -> io::Result<ServerHandle> {
        let stopper = self.stopper();
        let thread = std::thread::Builder::new().name("tubestored-accept".into()).spawn(move || self.run())?;
        Ok(ServerHandle { stopper, thread: Some(thread) })
    }

    fn accept_loop(&self) -> io::Result<()> {
        for s in self.listener.incoming() {
            if self.shared.stop.load(Ordering::Acquire) {
                break;
            }
            match s {
                Ok(stream) => {
                    let shared = self.shared.clone();
                    let r = std::thread::Builder::new()
                        .name("tubestored-conn".into())
                        .spawn(move || serve_conn(&shared, stream));
                    if let Err(e) = r {
                        self.shared.log.line(&format!("cannot start connection thread: {e}"));
                    }
                }
                Err(_) if self.shared.stop.load(Ordering::Acquire) => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_transient(&e) => {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

fn is_transient(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM | libc::ECONNABORTED))
}

impl Stopper {
    /// Asks the server to stop (returns at once).
    pub fn stop(&self) {
        self.0.stop.store(true, Ordering::Release);
        // Wake the accept loop: shutting a listening socket down makes accept() fail at once,
        // even when the socket's path is already gone (a connect to the path would not reach
        // it then, and the daemon would never exit).
        let fd = std::os::fd::AsRawFd::as_raw_fd(&self.0.listen_ctl);
        // SAFETY: shutdown takes no pointers; `fd` belongs to `listen_ctl`, which `self` keeps
        // open for the duration of the call.
        unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
    }
}

impl ServerHandle {
    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.stopper.0.path
    }

    /// Runs `f` on the daemon's state under its lock (tests inspect the store this way).
    pub fn with_state<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        f(&mut self.stopper.0.state.lock())
    }

    /// Stops the server and waits for it.
    pub fn shutdown(mut self) -> io::Result<()> {
        self.stop_and_join()
    }

    fn stop_and_join(&mut self) -> io::Result<()> {
        self.stopper.stop();
        match self.thread.take() {
            Some(t) => t.join().unwrap_or_else(|_| Err(io::Error::other("server thread panicked"))),
            None => Ok(()),
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        let _ = self.stop_and_join();
    }
}

/// Reads requests, handles each batch under one lock, flushes replies inline when possible.
fn serve_conn(shared: &Shared, stream: UnixStream) {
    let id: ConnId = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let (Ok(wstream), Ok(kstream)) = (stream.try_clone(), stream.try_clone()) else { return };
    let limit = shared.state.lock().quotas.max_outbox;
    let outbox = Arc::new(Outbox::new(Some(kstream), limit));
    {
        let mut st = shared.state.lock();
        if st.shutting_down {
            return;
        }
        st.add_conn(id, outbox.clone());
    }
    let wbox = outbox.clone();
    let writer = std::thread::Builder::new()
        .name("tubestored-out".into())
        .spawn(move || wbox.writer_loop_on(wstream));
    let mut dec = Decoder::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut input = &stream;
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        dec.push(&buf[..n]);
        let mut bad = false;
        let mut wait_for = None;
        {
            let mut st = None;
            loop {
                match dec.next() {
                    Ok(Some(m)) => {
                        let st = st.get_or_insert_with(|| shared.state.lock());
                        if let Some(seq) = st.handle(id, &m, false) {
                            wait_for = st.journal.as_ref().map(|j| (seq, j.durable()));
                        }
                    }
                    Ok(None) => break,
                    Err(_) => {
                        bad = true;
                        break;
                    }
                }
            }
        }
        // Replies to commits go out once their frames are durable (one wait for the batch:
        // frames are fsynced in order).
        if let Some((seq, durable)) = wait_for {
            let r = durable.wait(seq);
            outbox.settle(seq, |s| if s == seq { r.err() } else { durable.wait(s).err() });
        }
        outbox.flush_now();
        if bad || outbox.is_dead() {
            break;
        }
    }
    shared.state.lock().close_conn(id);
    outbox.kill();
    if let Ok(w) = writer {
        let _ = w.join();
    }
}

/// Creates the parent directory (0700) or checks the existing one, takes `<socket>.lock`,
/// replaces a stale socket, binds (0600). Another daemon answering on the path is
/// [`BindError::AlreadyRunning`].
fn bind_socket(path: &Path) -> Result<UnixListener, BindError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
        }
        check_socket_dir(dir)?;
    }
    let mut lock_name = path.as_os_str().to_owned();
    lock_name.push(".lock");
    let lock = files::open_append(Path::new(&lock_name))?;
    flock(&lock)?;
    match fs::symlink_metadata(path) {
        Ok(md) => {
            if UnixStream::connect(path).is_ok() {
                return Err(BindError::AlreadyRunning(path.to_owned()));
            }
            if !md.file_type().is_socket() {
                return Err(BindError::Io(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} exists and is not a socket", path.display()),
                )));
            }
            fs::remove_file(path)?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    let listener = UnixListener::bind(path)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
    drop(lock);
    Ok(listener)
}

/// The socket's directory must be a real directory (not a symlink), owned by the daemon's uid
/// and writable by no one else: whoever can write it could put their own socket in the
/// daemon's place, or plant symlinks for the files the daemon writes there.
pub fn check_socket_dir(dir: &Path) -> io::Result<()> {
    let refuse = |why: String| {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("socket directory {} {why}: refused (it must be the daemon's own, mode 0700)", dir.display()),
        ))
    };
    let md = fs::symlink_metadata(dir)?;
    if md.file_type().is_symlink() {
        return refuse("is a symlink".into());
    }
    if !md.is_dir() {
        return refuse("is not a directory".into());
    }
    if md.uid() != files::euid() {
        return refuse(format!("is owned by uid {}, not {}", md.uid(), files::euid()));
    }
    if md.mode() & 0o022 != 0 {
        return refuse(format!("is writable by others (mode {:o})", md.mode() & 0o7777));
    }
    Ok(())
}

fn flock(f: &File) -> io::Result<()> {
    loop {
        // SAFETY: flock on a valid fd owned by `f` has no memory effects.
        let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
        if r == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

fn unlink_if_ours(path: &Path, ino: (u64, u64)) {
    if let Ok(md) = fs::symlink_metadata(path) {
        if (md.dev(), md.ino()) == ino {
            let _ = fs::remove_file(path);
        }
    }
}
