//! The error of a client request.

use crate::wire::XsError;

/// Why a request failed.
#[derive(Debug)]
pub enum Error {
    /// The daemon answered with `XS_ERROR` and this error name.
    Xs(XsError),
    /// The socket failed while connecting or sending.
    Io(std::io::Error),
    /// The connection is gone (daemon exited, socket shut down): this and every later request fail.
    Closed,
    /// The daemon sent something that is not valid Xenstore protocol.
    Protocol(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Xs(e) => write!(f, "xenstore error {e}"),
            Error::Io(e) => write!(f, "xenstore socket: {e}"),
            Error::Closed => f.write_str("xenstore connection closed"),
            Error::Protocol(what) => write!(f, "xenstore protocol violation: {what}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Xs(e) => Some(e),
            Error::Io(e) => Some(e),
            Error::Closed | Error::Protocol(_) => None,
        }
    }
}

impl From<XsError> for Error {
    fn from(e: XsError) -> Error {
        Error::Xs(e)
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Error {
        Error::Io(e)
    }
}

impl Error {
    /// A copy suitable for handing to several waiters (`io::Error` is not `Clone`).
    pub(crate) fn duplicate(&self) -> Error {
        match self {
            Error::Xs(e) => Error::Xs(*e),
            Error::Io(e) => Error::Io(std::io::Error::new(e.kind(), e.to_string())),
            Error::Closed => Error::Closed,
            Error::Protocol(s) => Error::Protocol(s.clone()),
        }
    }
}
