//! The daemon's log: a file next to the socket (`<socket>.log`) that an operator finds, even
//! when the daemon runs detached with its stderr on /dev/null. Each line is stamped in UTC;
//! lines also go to stderr unless the daemon is quiet.

use crate::files;
use parking_lot::Mutex;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A shared handle on the log.
#[derive(Clone, Default)]
pub struct Log(Arc<Inner>);

#[derive(Default)]
struct Inner {
    file: Option<Mutex<File>>,
    path: Option<PathBuf>,
    quiet: bool,
}

impl Log {
    /// Appends to `path` (created 0600; a symlink or someone else's file is refused).
    pub fn open(path: &Path, quiet: bool) -> std::io::Result<Log> {
        let f = files::open_append(path)?;
        Ok(Log(Arc::new(Inner { file: Some(Mutex::new(f)), path: Some(path.to_owned()), quiet })))
    }

    /// A log that writes to stderr only (embedding without a socket directory of its own).
    pub fn stderr_only(quiet: bool) -> Log {
        Log(Arc::new(Inner { file: None, path: None, quiet }))
    }

    /// The log file, if any.
    pub fn path(&self) -> Option<&Path> {
        self.0.path.as_deref()
    }

    /// Writes one line.
    pub fn line(&self, msg: &str) {
        let line = format!("{} tubestored: {msg}\n", crate::time::format_utc(crate::time::now_ns()));
        if let Some(f) = &self.0.file {
            let _ = f.lock().write_all(line.as_bytes());
        }
        if !self.0.quiet {
            eprint!("{line}");
        }
    }
}
