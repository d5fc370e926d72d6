//! Xenstore for `tube`: Xen's wire protocol (message codec, error strings, path and permission rules) and a
//! blocking client with pipelined requests and watch events on a crossbeam channel.
//!
//! The daemon `tubestored` and the client share this one codec, so both sides agree byte for byte with Xen's
//! `xs_wire.h` and `docs/misc/xenstore.txt`.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]
#![deny(missing_docs)]

pub mod client;
pub mod path;
pub mod perms;
pub mod wire;

pub use wire::{Message, MsgType, XsError};
