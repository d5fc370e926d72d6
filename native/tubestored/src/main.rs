//! `tubestored [--socket PATH] [--db FILE] [--daemon] [--pidfile FILE] [--quiet]
//!  [--quota-nodes N] [--quota-watches N] [--quota-transactions N] [--history-bytes N]`
//! `tubestored history --db FILE [--since TIME] [PATH]`
//! `tubestored dump --db FILE --at TIME [PATH]`
//!
//! The binary's quotas are sized for tubes, not Xen's guest defaults: each
//! tube costs its opening domain about 8 nodes and each side one watch, so
//! Xen's 1000 nodes and 128 watches would cap a node at about 120 tubes.

use std::io::{self, Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::ExitCode;
use tubestored::{BindError, Options, Server};

struct Cli {
    opts: Options,
    daemon: bool,
    pidfile: Option<PathBuf>,
    quiet: bool,
}

const USAGE: &str = "usage: tubestored [--socket PATH] [--db FILE] [--daemon] [--pidfile FILE] [--quiet] \
[--quota-nodes N] [--quota-watches N] [--quota-transactions N] [--history-bytes N]
       tubestored history --db FILE [--since TIME] [PATH]
       tubestored dump --db FILE --at TIME [PATH]
TIME: UTC YYYY-MM-DDTHH:MM:SS[.fff][Z], or seconds since the epoch";

/// Bound of each history file: 32 MiB (about 150 000 commits of a tube's size), two kept.
const HISTORY_BYTES: u64 = 32 << 20;

/// Nodes a domain may own: room for about 2000 tubes opened by one node.
const TUBE_QUOTA_NODES: usize = 16384;
/// Watches per connection: one per tube, plus a few for the node itself.
const TUBE_QUOTA_WATCHES: usize = 4096;

fn parse_count(name: &str, v: PathBuf) -> Result<usize, String> {
    v.to_string_lossy().parse::<usize>().ok().filter(|n| *n > 0).ok_or(format!("{name} needs a positive integer"))
}

fn parse_args() -> Result<Cli, String> {
    let mut cli = Cli { opts: Options::default(), daemon: false, pidfile: None, quiet: false };
    cli.opts.quotas.max_nodes = TUBE_QUOTA_NODES;
    cli.opts.quotas.max_watches = TUBE_QUOTA_WATCHES;
    cli.opts.history_bytes = HISTORY_BYTES;
    let mut args = std::env::args_os().skip(1);
    while let Some(a) = args.next() {
        let a = a.to_string_lossy().into_owned();
        let mut value = |name: &str| args.next().map(PathBuf::from).ok_or(format!("{name} needs a value"));
        match a.as_str() {
            "--socket" => cli.opts.socket = Some(value("--socket")?),
            "--db" => cli.opts.db = Some(value("--db")?),
            "--pidfile" => cli.pidfile = Some(value("--pidfile")?),
            "--daemon" => cli.daemon = true,
            "--quiet" => cli.quiet = true,
            "--quota-nodes" => cli.opts.quotas.max_nodes = parse_count(&a, value(&a)?)?,
            "--quota-watches" => cli.opts.quotas.max_watches = parse_count(&a, value(&a)?)?,
            "--quota-transactions" => cli.opts.quotas.max_transactions = parse_count(&a, value(&a)?)?,
            "--history-bytes" => {
                let v = value(&a)?;
                cli.opts.history_bytes =
                    v.to_string_lossy().parse::<u64>().map_err(|_| format!("{a} needs a byte count (0: no history)"))?;
            }
            "-h" | "--help" => return Err(USAGE.to_owned()),
            _ => return Err(format!("unknown argument {a}\n{USAGE}")),
        }
    }
    cli.opts.quiet = cli.quiet;
    Ok(cli)
}

/// `history` / `dump`: reads the history of a database and prints it.
fn look_back(cmd: &str, args: Vec<String>) -> ExitCode {
    let mut db = None;
    let mut since = None;
    let mut at = None;
    let mut path = None;
    let mut it = args.into_iter();
    let time = |v: Option<String>, name: &str| -> Result<u64, String> {
        let v = v.ok_or(format!("{name} needs a value"))?;
        tubestored::time::parse_time(&v).ok_or(format!("{name}: cannot read {v:?} as a time\n{USAGE}"))
    };
    let parsed = (|| -> Result<(), String> {
        while let Some(a) = it.next() {
            match a.as_str() {
                "--db" => db = Some(PathBuf::from(it.next().ok_or("--db needs a value")?)),
                "--since" if cmd == "history" => since = Some(time(it.next(), "--since")?),
                "--at" if cmd == "dump" => at = Some(time(it.next(), "--at")?),
                p if !p.starts_with('-') && path.is_none() => path = Some(p.to_owned()),
                _ => return Err(format!("unknown argument {a}\n{USAGE}")),
            }
        }
        Ok(())
    })();
    if let Err(e) = parsed {
        eprintln!("{e}");
        return ExitCode::from(2);
    }
    let Some(db) = db else {
        eprintln!("{cmd} needs --db FILE\n{USAGE}");
        return ExitCode::from(2);
    };
    let path = path.unwrap_or_else(|| "/".to_owned());
    if !path.starts_with('/') || tube_xs::path::canonicalize(0, &path).is_err() {
        eprintln!("{path}: not an absolute Xenstore path");
        return ExitCode::from(2);
    }
    let out = io::stdout();
    let mut out = io::BufWriter::new(out.lock());
    let r = match (cmd, at) {
        ("history", _) => tubestored::history::print_history(&db, since, &path, &mut out),
        (_, Some(at)) => tubestored::history::print_dump(&db, at, &path, &mut out),
        _ => {
            eprintln!("dump needs --at TIME\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match r.and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tubestored {cmd}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    if let Some(cmd) = args.next().filter(|c| c == "history" || c == "dump") {
        return look_back(&cmd, args.collect());
    }
    let cli = match parse_args() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let server = match Server::bind(cli.opts.clone()) {
        Ok(s) => s,
        Err(BindError::AlreadyRunning(p)) => {
            if !cli.quiet {
                eprintln!("tubestored: already running on {}", p.display());
            }
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("tubestored: {e}");
            return ExitCode::FAILURE;
        }
    };
    if cli.daemon {
        match daemonize() {
            Ok(true) => {}
            Ok(false) => return ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("tubestored: cannot daemonize: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    if let Some(p) = &cli.pidfile {
        // A fresh file (O_EXCL, O_NOFOLLOW): a symlink planted at the path is replaced, never
        // written through.
        let written = tubestored::files::create_fresh(p)
            .and_then(|mut f| f.write_all(format!("{}\n", std::process::id()).as_bytes()));
        if let Err(e) = written {
            eprintln!("tubestored: cannot write pidfile {}: {e}", p.display());
        }
    }
    if cli.daemon {
        signal_ready();
    }
    if !cli.quiet {
        eprintln!("tubestored: listening on {}", server.path().display());
    }
    if let Err(e) = block_signals() {
        eprintln!("tubestored: cannot block signals: {e}");
        return ExitCode::FAILURE;
    }
    let stopper = server.stopper();
    let spawned = std::thread::Builder::new().name("tubestored-signals".into()).spawn(move || {
        wait_signal();
        stopper.stop();
    });
    if let Err(e) = spawned {
        eprintln!("tubestored: {e}");
        return ExitCode::FAILURE;
    }
    let res = server.run();
    if let Some(p) = &cli.pidfile {
        remove_pidfile_if_ours(p);
    }
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tubestored: {e}");
            ExitCode::FAILURE
        }
    }
}

static READY_FD: std::sync::Mutex<Option<OwnedFd>> = std::sync::Mutex::new(None);

/// Forks. The parent waits until the child says it is ready (socket bound before the fork,
/// pidfile written) and returns Ok(false); the child detaches and returns Ok(true).
fn daemonize() -> io::Result<bool> {
    let mut fds = [0i32; 2];
    // SAFETY: `fds` is a valid array of two ints for pipe to fill.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both fds were just returned by pipe and are owned by nothing else.
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: no other thread runs yet (Server::bind starts none), so the child is consistent.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => {
            drop(rd);
            // SAFETY: setsid has no memory effects; failure is harmless here.
            unsafe { libc::setsid() };
            redirect_stdio()?;
            *READY_FD.lock().unwrap_or_else(|e| e.into_inner()) = Some(wr);
            Ok(true)
        }
        _ => {
            drop(wr);
            let mut f = std::fs::File::from(rd);
            let mut b = [0u8; 1];
            match f.read(&mut b) {
                Ok(1) => Ok(false),
                _ => Err(io::Error::other("daemon failed to start")),
            }
        }
    }
}

fn signal_ready() {
    if let Some(fd) = READY_FD.lock().unwrap_or_else(|e| e.into_inner()).take() {
        let _ = std::fs::File::from(fd).write_all(b"1");
    }
}

fn redirect_stdio() -> io::Result<()> {
    let null = std::fs::OpenOptions::new().read(true).write(true).open("/dev/null")?;
    use std::os::fd::AsRawFd;
    for fd in 0..3 {
        // SAFETY: dup2 onto the standard descriptors; `null` stays open during the call.
        if unsafe { libc::dup2(null.as_raw_fd(), fd) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

fn signal_set() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it before use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
    }
    set
}

/// Blocks SIGTERM/SIGINT in this thread and every thread started after, so that only the
/// signal thread (sigwait) sees them.
fn block_signals() -> io::Result<()> {
    let set = signal_set();
    // SAFETY: `set` is initialised; the old mask is not wanted.
    let r = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(r))
    }
}

fn wait_signal() {
    let set = signal_set();
    let mut sig = 0;
    // SAFETY: `set` is initialised and `sig` is a valid out pointer.
    unsafe { libc::sigwait(&set, &mut sig) };
}

/// Removes the pidfile only if it still names this process: a daemon started
/// after this one (for example after a kill) may have written its own.
fn remove_pidfile_if_ours(p: &std::path::Path) {
    let ours = tubestored::files::open_read(p)
        .and_then(|mut f| {
            let mut s = String::new();
            f.read_to_string(&mut s).map(|_| s)
        })
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .is_some_and(|pid| pid == std::process::id());
    if ours {
        let _ = std::fs::remove_file(p);
    }
}
