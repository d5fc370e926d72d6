//! Xen's error strings (`xsd_errors` in `xs_wire.h`): errors travel by name, not by number.

/// An error as the daemon reports it in an `XS_ERROR` reply. Xen has no quota error of its own: it answers
/// `E2BIG` or `ENOSPC`, and so do we.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum XsError {
    /// Invalid argument (bad path, malformed payload).
    Einval,
    /// Permission denied.
    Eacces,
    /// Already exists.
    Eexist,
    /// Is a directory.
    Eisdir,
    /// No such node, transaction or domain.
    Enoent,
    /// Out of memory.
    Enomem,
    /// Out of space (quota).
    Enospc,
    /// I/O error.
    Eio,
    /// Directory not empty.
    Enotempty,
    /// Unsupported message type.
    Enosys,
    /// Read-only.
    Erofs,
    /// Busy.
    Ebusy,
    /// Transaction conflict: try again.
    Eagain,
    /// Already connected.
    Eisconn,
    /// Too big (payload or quota).
    E2big,
    /// Operation not permitted.
    Eperm,
}

const TABLE: [(XsError, &str, i32); 16] = [
    (XsError::Einval, "EINVAL", libc::EINVAL),
    (XsError::Eacces, "EACCES", libc::EACCES),
    (XsError::Eexist, "EEXIST", libc::EEXIST),
    (XsError::Eisdir, "EISDIR", libc::EISDIR),
    (XsError::Enoent, "ENOENT", libc::ENOENT),
    (XsError::Enomem, "ENOMEM", libc::ENOMEM),
    (XsError::Enospc, "ENOSPC", libc::ENOSPC),
    (XsError::Eio, "EIO", libc::EIO),
    (XsError::Enotempty, "ENOTEMPTY", libc::ENOTEMPTY),
    (XsError::Enosys, "ENOSYS", libc::ENOSYS),
    (XsError::Erofs, "EROFS", libc::EROFS),
    (XsError::Ebusy, "EBUSY", libc::EBUSY),
    (XsError::Eagain, "EAGAIN", libc::EAGAIN),
    (XsError::Eisconn, "EISCONN", libc::EISCONN),
    (XsError::E2big, "E2BIG", libc::E2BIG),
    (XsError::Eperm, "EPERM", libc::EPERM),
];

impl XsError {
    /// Every error, in Xen's table order.
    pub const ALL: [XsError; 16] = [
        XsError::Einval,
        XsError::Eacces,
        XsError::Eexist,
        XsError::Eisdir,
        XsError::Enoent,
        XsError::Enomem,
        XsError::Enospc,
        XsError::Eio,
        XsError::Enotempty,
        XsError::Enosys,
        XsError::Erofs,
        XsError::Ebusy,
        XsError::Eagain,
        XsError::Eisconn,
        XsError::E2big,
        XsError::Eperm,
    ];

    fn entry(self) -> (XsError, &'static str, i32) {
        TABLE[self as usize]
    }

    /// The name sent on the wire, e.g. `"EINVAL"`.
    pub fn as_str(self) -> &'static str {
        self.entry().1
    }

    /// The error with wire name `s` (exact, upper case).
    pub fn from_name(s: &str) -> Option<XsError> {
        TABLE.iter().find(|e| e.1 == s).map(|e| e.0)
    }

    /// The host's errno value for this error.
    pub fn errno(self) -> i32 {
        self.entry().2
    }

    /// The error for host errno `n`, if Xen has a name for it.
    pub fn from_errno(n: i32) -> Option<XsError> {
        TABLE.iter().find(|e| e.2 == n).map(|e| e.0)
    }
}

impl std::fmt::Display for XsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::error::Error for XsError {}

impl From<XsError> for std::io::Error {
    fn from(e: XsError) -> std::io::Error {
        std::io::Error::from_raw_os_error(e.errno())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_in_enum_order_and_round_trips() {
        for (i, e) in XsError::ALL.iter().enumerate() {
            assert_eq!(TABLE[i].0, *e);
            assert_eq!(XsError::from_name(e.as_str()), Some(*e));
            assert_eq!(XsError::from_errno(e.errno()), Some(*e));
            assert_eq!(e.to_string(), e.as_str());
        }
    }

    #[test]
    fn unknown_names_are_none() {
        for s in ["", "einval", "EQUOTA", "EINVAL\0", " EINVAL", "E"] {
            assert_eq!(XsError::from_name(s), None, "{s:?}");
        }
    }
}
