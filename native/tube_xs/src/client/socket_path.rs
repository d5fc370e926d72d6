//! Where the daemon's Unix socket lives.

use std::path::PathBuf;

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
