//! Opening the daemon's own files without trusting what is already at their paths: never
//! through a symlink (`O_NOFOLLOW`), fresh files with `O_EXCL`, and a file that already
//! exists only when it is a regular file owned by the daemon's uid.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

/// The daemon's effective uid.
pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Creates `path` anew (mode 0600), replacing a previous file of ours: whatever is at the path
/// is unlinked first (a symlink itself, never its target), then the file is created with
/// `O_CREAT | O_EXCL | O_NOFOLLOW`, so no one else's file can be written through it.
pub fn create_fresh(path: &Path) -> io::Result<File> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// Opens `path` for appending (and reading), creating it 0600 if missing. A symlink is refused
/// (`O_NOFOLLOW`), and an existing file must be a regular file owned by the daemon's uid.
pub fn open_append(path: &Path) -> io::Result<File> {
    let f = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| refused(path, e))?;
    check_ours(path, &f)?;
    Ok(f)
}

/// Opens an existing file of ours for reading, without following a symlink.
pub fn open_read(path: &Path) -> io::Result<File> {
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| refused(path, e))?;
    check_ours(path, &f)?;
    Ok(f)
}

fn refused(path: &Path, e: io::Error) -> io::Error {
    if e.raw_os_error() == Some(libc::ELOOP) {
        io::Error::new(io::ErrorKind::PermissionDenied, format!("{} is a symlink: refused", path.display()))
    } else {
        io::Error::new(e.kind(), format!("{}: {e}", path.display()))
    }
}

fn check_ours(path: &Path, f: &File) -> io::Result<()> {
    let md = f.metadata()?;
    if !md.file_type().is_file() {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("{} is not a regular file: refused", path.display()),
        ));
    }
    if md.uid() != euid() {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("{} is owned by uid {}, not {}: refused", path.display(), md.uid(), euid()),
        ));
    }
    Ok(())
}

/// fsyncs a directory, making renames and creations in it durable.
pub fn sync_dir_of(path: &Path) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()
}
