//! Error values of the tube API.

use std::fmt;

/// Why a send did not go out. `Full` is a counted drop (the normal lossy outcome); the
/// others are caller errors or end states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendError {
    /// The ring had no room; the packet was dropped and `Stats::dropped` went up.
    Full,
    /// The packet was empty or longer than `MAX_PACKET` (not counted as a drop).
    BadSize(usize),
    /// The peer has gone; the tube is finished.
    Closed,
    /// The ring was found corrupt; the tube is finished.
    Corrupt,
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::Full => f.write_str("ring full, packet dropped"),
            SendError::BadSize(n) => write!(f, "packet of {n} bytes is outside 1..=4096"),
            SendError::Closed => f.write_str("tube closed: peer gone"),
            SendError::Corrupt => f.write_str("tube closed: ring corrupt"),
        }
    }
}

impl std::error::Error for SendError {}

/// Ring and tube failures.
#[derive(Debug)]
pub enum RingError {
    /// The peer process closed its end, exited or was killed.
    PeerGone,
    /// The shared memory holds something no honest peer writes; the tube is dead.
    Corrupt(&'static str),
    /// An operating system call failed.
    Io(std::io::Error),
    /// The peer did not complete the handshake in time.
    Timeout,
    /// A ring reference or event channel string could not be parsed.
    BadRef(String),
    /// The other side refused the grant, or runs as another user.
    Denied,
    /// The two ends' owners asked for different deliveries (one lossy, one reliable): the
    /// tube is closed on both sides rather than carry records one end cannot read.
    DeliveryMismatch,
}

impl fmt::Display for RingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RingError::PeerGone => f.write_str("peer gone"),
            RingError::Corrupt(why) => write!(f, "corrupt ring: {why}"),
            RingError::Io(e) => write!(f, "i/o error: {e}"),
            RingError::Timeout => f.write_str("timed out waiting for the peer"),
            RingError::BadRef(s) => write!(f, "bad tube reference: {s}"),
            RingError::Denied => f.write_str("access denied"),
            RingError::DeliveryMismatch => f.write_str("the two ends asked for different deliveries"),
        }
    }
}

impl std::error::Error for RingError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            RingError::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<std::io::Error> for RingError {
    fn from(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::TimedOut {
            RingError::Timeout
        } else {
            RingError::Io(e)
        }
    }
}
