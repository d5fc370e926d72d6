//! Where the daemon's Unix socket lives.

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

/// The daemon's socket: `$XENSTORED_PATH` if set and not empty (Xen's own variable, so Xen's tools and ours
/// agree); else the per-user `$XDG_RUNTIME_DIR/tubestored/socket`, or `/tmp/tubestored-<uid>/socket` when
/// `XDG_RUNTIME_DIR` is unset. Never Xen's `/run/xenstored/socket` unless `XENSTORED_PATH` names it.
pub fn default_socket_path() -> PathBuf {
    let var = |name| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(p) = var("XENSTORED_PATH") {
        return PathBuf::from(p);
    }
    if let Some(dir) = var("XDG_RUNTIME_DIR") {
        return PathBuf::from(dir).join("tubestored").join("socket");
    }
    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = unsafe { libc::getuid() };
    PathBuf::from(format!("/tmp/tubestored-{uid}")).join("socket")
}

/// Connects to the daemon at `path` and checks who is listening (`SO_PEERCRED`): the daemon must
/// run as this process's uid, or as root. Anyone else who got their socket to that path first
/// (a shared `/tmp`, a directory others can write) is refused with a `PermissionDenied` error
/// naming the path and their uid, before a single request is sent.
pub fn connect_trusted(path: &Path) -> io::Result<UnixStream> {
    let stream = UnixStream::connect(path)?;
    let peer = peer_uid(&stream)?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if !trusted_daemon_uid(peer, me) {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "the Xenstore daemon on {} runs as uid {peer}, not as this uid ({me}) or root: refused",
                path.display()
            ),
        ));
    }
    Ok(stream)
}

/// True when a daemon running as `peer` may be trusted by a process running as `me`.
pub fn trusted_daemon_uid(peer: u32, me: u32) -> bool {
    peer == me || peer == 0
}

/// The uid of the process at the other end of a connected Unix socket.
pub fn peer_uid(stream: &UnixStream) -> io::Result<u32> {
    let mut cred = libc::ucred { pid: 0, uid: 0, gid: 0 };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid for writes of the sizes given; the fd is owned by
    // `stream`, which outlives the call.
    let r = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cred.uid)
}
