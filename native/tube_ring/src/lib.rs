//! Shared-memory packet rings between two processes: the data path of a tube.
//!
//! One tube is one sealed memfd (of [`TUBE_BYTES`] unless its Tid asks for larger rings), mapped shared by both processes, holding
//! a control page and one ring of variable-length packets per direction (see [`layout`]).
//! Sending copies into the ring and never blocks (a full ring drops and counts). A connected
//! Unix socket carries wake-ups, only when the reader announced it would sleep, and reports
//! the peer's exit at once. The peer is treated as hostile: everything read from shared memory
//! is validated (see [`ring`]), and a violation ends the tube with an error.
//!
//! ```no_run
//! use std::time::Duration;
//! let offer = tube_ring::Offer::new()?;
//! // publish offer.event_channel(), offer.tx_ring_ref(), offer.rx_ring_ref(); the peer calls
//! // tube_ring::connect(&channel, &tx_ref, &rx_ref, timeout)
//! let mut tube = offer.accept(Duration::from_secs(5))?;
//! let _ = tube.send(b"ping");
//! tube.recv(64, |pkt| println!("{} bytes", pkt.len()))?;
//! # Ok::<(), tube_ring::RingError>(())
//! ```

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]
#![deny(missing_docs)]

pub mod layout;
/// Numbers shared with the driver's C glue and the Erlang side (see the file).
#[allow(missing_docs)]
pub mod proto {
    include!("proto.rs");
}
pub mod ring;
pub mod sync;

#[cfg(not(loom))]
mod error;
#[cfg(not(loom))]
mod offer;
#[cfg(not(loom))]
mod sys;
#[cfg(not(loom))]
mod tube;

pub use layout::{MAX_MESSAGE, MAX_PACKET, TUBE_BYTES};
#[cfg(not(loom))]
pub use error::{RingError, SendError};
#[cfg(not(loom))]
pub use offer::{connect, connect_ring, Connecting, Offer};
#[cfg(not(loom))]
pub use tube::{Assembly, MessageBuf, Pass, Stats, Tube, RESUME_ROOM};
