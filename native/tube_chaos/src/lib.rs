//! Fault-injection tools for tube's test suite.
//!
//! * [`region`]: raw access to this process's mapping of a tube's shared memory, found through
//!   `/proc/self/maps`, for writing whatever a hostile peer would write.
//! * [`corrupt`]: one random corruption at a time (random bytes, bogus indices, impossible
//!   lengths), and a raw producer that writes records without the ring engine's checks.
//! * [`nock`]: the opening side of the tube handshake, writing the Xenstore nodes recorded
//!   from a BEAM node's open, so a non-BEAM process can open a tube to a BEAM node.
//! * [`ring_fuzz`]: both ends of many tubes in one process, one end scribbling over the
//!   region while the other sends and drains through `tube_ring`.
//!
//! The binary `tube-hostile` drives these from the command line (see its `--help`).

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]
#![deny(missing_docs)]

pub mod corrupt;
pub mod error;
pub mod nock;
pub mod region;
pub mod ring_fuzz;
pub mod rng;

pub use error::ChaosError;
