// The numbers the port driver (Rust), its C glue (c_src/tube_drv.c) and the Erlang side
// (src/*.erl) must agree on. This file is the one definition: native/tube_nif/build.rs
// includes it, writes `include/tube_proto.hrl` for Erlang and `tube_proto.h` for the C glue
// from it, and checks the values src/tube.erl and src/tube_server.erl still define
// themselves. Only plain constants here (build.rs includes the file as it is).

/// `port_control` command: the counters, `STATS.len()` native-endian u64 values.
pub const CTL_STATS: u32 = 1;
/// `port_control` command: close with a reason the control plane saw in Xenstore.
pub const CTL_CLOSE: u32 = 2;
/// `port_control` command: `{active, _}`, `<<Mode:8, N:64/native>>`.
pub const CTL_ACTIVE: u32 = 3;
/// `port_control` command: `{busy_poll, Us}`, `<<Us:32/native>>`.
pub const CTL_BUSY_POLL: u32 = 4;
/// `port_control` command: the port becomes a distribution controller.
pub const CTL_DIST: u32 = 5;

/// The counters of `CTL_STATS`, in order (the names `tube:info/1` gives them).
pub const STATS: [&str; 13] = [
    "sent",
    "sent_bytes",
    "received",
    "received_bytes",
    "dropped",
    "rejected",
    "wakeups",
    "peer_os_pid",
    "busy_poll",
    "polling",
    "busy",
    "busy_us",
    "queued_bytes",
];

/// Active modes of `CTL_ACTIVE`: no limit, set the credit to N, add N to it.
pub const ACTIVE_NO_LIMIT: u8 = 0;
/// See `ACTIVE_NO_LIMIT`.
pub const ACTIVE_SET: u8 = 1;
/// See `ACTIVE_NO_LIMIT`.
pub const ACTIVE_ADD: u8 = 2;
/// The one data byte of a `CTL_ACTIVE` that asks for the mode instead of setting it (a set
/// request is 9 bytes); the answer is `<<Mode:8, N:64/native>>`.
pub const ACTIVE_QUERY: u8 = 255;

/// Largest packet of a lossy tube: packets are `1..=MAX_PACKET` bytes.
pub const MAX_PACKET: u64 = 4096;
/// Largest message of a reliable tube: 256 MiB.
pub const MAX_MESSAGE: u64 = 256 << 20;

/// Delivery word of the open command: lossy packets.
pub const DELIVERY_LOSSY: u64 = 0;
/// Delivery word of the open command: reliable messages.
pub const DELIVERY_RELIABLE: u64 = 1;

/// Largest domain id a node may have.
pub const MAX_DOMID: u32 = 0x7FEF;
/// Largest Tid.
pub const MAX_TID: u32 = 0xFFFF_FFFF;
/// Tids reserved for the distribution carrier (inclusive range).
pub const DIST_TID_MIN: u32 = 0xFFFF_0000;
/// See `DIST_TID_MIN`.
pub const DIST_TID_MAX: u32 = 0xFFFF_FFFF;
/// Bytes of each ring of a tube with a distribution Tid (a lossy tube's are 126 KiB): room
/// for 8 fragments of 64 KiB, so the writer goes on while the reader drains, and small
/// enough to stay in a core's L2 cache (on this machine 4 MiB rings were slower at 64 KiB).
pub const DIST_RING_BYTES: u64 = 512 << 10;
/// Longest a closed reliable tube goes on delivering what its owner sent before the close
/// (the messages still waiting for room in the peer's ring), in milliseconds.
pub const CLOSE_LINGER_MS: u64 = 5000;
/// Longest polling window, in microseconds.
pub const MAX_BUSY_POLL_US: u64 = 100_000;
