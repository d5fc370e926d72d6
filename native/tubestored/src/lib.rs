//! `tubestored`: a Xenstore daemon speaking Xen's wire protocol over a Unix socket, with
//! tube's local-domain extension (a process binds its connection to a domid and is then held
//! to that domain's permissions; its domain is released when the connection goes away).
//!
//! Embedding:
//! ```no_run
//! let server = tubestored::Server::bind(tubestored::Options::default()).unwrap();
//! let handle = server.spawn().unwrap();
//! // ... clients connect to handle.path() ...
//! handle.shutdown().unwrap();
//! ```
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]
#![deny(missing_docs)]

pub mod admin;
mod crc;
pub mod domain;
pub mod files;
pub mod history;
pub mod log;
pub mod ops;
pub mod outbox;
pub mod persist;
pub mod server;
pub mod state;
pub mod store;
pub mod time;
mod transaction_doc;
pub mod watch;

pub use ops::Quotas;
pub use server::{default_socket_path, socket_path, BindError, Options, Server, ServerHandle, Stopper};
pub use state::State;
