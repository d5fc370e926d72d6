//! The error of a chaos tool.

use std::fmt;

/// Why a fault-injection run could not proceed (not the faults it injects: those are the point).
#[derive(Debug)]
pub enum ChaosError {
    /// A Xenstore request failed.
    Xs(tube_xs::client::Error),
    /// Setting up or using a tube failed.
    Ring(tube_ring::RingError),
    /// An operating system call failed.
    Io(std::io::Error),
    /// Something was not as the protocol says (a missing node, a value that does not parse).
    Protocol(String),
    /// The peer did not do its part in time.
    Timeout(&'static str),
}

impl fmt::Display for ChaosError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChaosError::Xs(e) => write!(f, "xenstore: {e}"),
            ChaosError::Ring(e) => write!(f, "ring: {e}"),
            ChaosError::Io(e) => write!(f, "i/o: {e}"),
            ChaosError::Protocol(what) => write!(f, "protocol: {what}"),
            ChaosError::Timeout(what) => write!(f, "timed out waiting for {what}"),
        }
    }
}

impl std::error::Error for ChaosError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ChaosError::Xs(e) => Some(e),
            ChaosError::Ring(e) => Some(e),
            ChaosError::Io(e) => Some(e),
            ChaosError::Protocol(_) | ChaosError::Timeout(_) => None,
        }
    }
}

impl From<tube_xs::client::Error> for ChaosError {
    fn from(e: tube_xs::client::Error) -> Self {
        ChaosError::Xs(e)
    }
}

impl From<tube_ring::RingError> for ChaosError {
    fn from(e: tube_ring::RingError) -> Self {
        ChaosError::Ring(e)
    }
}

impl From<std::io::Error> for ChaosError {
    fn from(e: std::io::Error) -> Self {
        ChaosError::Io(e)
    }
}
