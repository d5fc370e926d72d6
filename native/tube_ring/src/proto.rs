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
/// `port_control` command: `{deliver, _}`, one byte, `DELIVER_PACKET` or `DELIVER_BATCH`.
pub const CTL_DELIVER: u32 = 6;
/// `port_control` command: `send_batch/2`, packets framed `<<Len:16, Bytes:Len/binary>>`;
/// the answer is `<<Status:8, Sent:32/native>>` (`SEND_BATCH_*`).
pub const CTL_SEND_BATCH: u32 = 7;
/// `port_control` command from the node's receive governor (src/tube_rx_governor.erl) to a
/// tube in the default, bounded mode: with no data, the packets delivered so far
/// (`<<Count:64/native>>`); with `<<Count:64/native, Queue:64/native>>`, a look: the owner's
/// mailbox held `Queue` messages after the tube had delivered `Count`. The answer is
/// `<<WaitUs:64/native>>`: 0 when the tube was granted a new window (it sends the caller
/// `{tube_rx_low, Port, Owner}` when half of it is gone), else the microseconds after which
/// to look again. A tube in another mode answers nothing (`[]`).
pub const CTL_RX_GRANT: u32 = 8;

/// The counters of `CTL_STATS`, in order (the names `tube:info/1` gives them).
pub const STATS: [&str; 17] = [
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
    "rx_held",
    "rx_held_us",
    "frags_joined",
    "frags_passed_on",
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
/// Active mode of `CTL_ACTIVE` (and of the answer to `ACTIVE_QUERY`): the default, every
/// packet as it arrives while the owner keeps up, in windows the receive governor grants
/// only while the owner's mailbox is shallow (see native/tube_nif/src/rx_bound.rs).
pub const ACTIVE_BOUNDED: u8 = 3;
/// A bounded tube's depth, in packets, at most: a window is granted only up to the depth,
/// counted from the governor's look, so the owner's mailbox never holds more of its packets
/// (times `RX_DEPTH_SCALE` where looks come late).
pub const RX_MAX_QUEUE: u64 = 2048;
/// Bytes of the tube's recent average packet at which that depth is also capped (512
/// packets of 4096 bytes): a mailbox that outgrows the caches costs the receiver up to twice
/// the CPU per packet, and 2 MiB drains in a few hundred microseconds.
pub const RX_QUEUE_BYTES: u64 = 2 * 1024 * 1024;
/// How many times its base a tube's depth may grow (to 4096 packets, 4 MiB of a steady size)
/// where the governor's looks come too late to keep a shallow mailbox from running dry.
pub const RX_DEPTH_SCALE: u64 = 2;
/// Longest wait, in microseconds, before the governor looks again at a tube it holds (the
/// wait is what the owner's observed drain rate needs to bring the mailbox down to half
/// the depth; this is the wait for an owner that is not reading at all).
pub const RX_MAX_WAIT_US: u64 = 2000;

/// Largest packet of a lossy tube: packets are `1..=MAX_PACKET` bytes.
pub const MAX_PACKET: u64 = 4096;
/// Largest message of a reliable tube: 256 MiB.
pub const MAX_MESSAGE: u64 = 256 << 20;

/// Delivery word of the open command: lossy packets.
pub const DELIVERY_LOSSY: u64 = 0;
/// Delivery word of the open command: reliable messages.
pub const DELIVERY_RELIABLE: u64 = 1;

/// `{deliver, packet}`: one `{Tube, {data, Bin}}` message per packet (the default).
pub const DELIVER_PACKET: u8 = 0;
/// `{deliver, batch}`: `{Tube, {data_batch, [Bin]}}`, many packets per message, in order.
pub const DELIVER_BATCH: u8 = 1;
/// Status of a `CTL_SEND_BATCH` answer: the first `Sent` packets are in the ring, the rest
/// were dropped (ring full) and counted.
pub const SEND_BATCH_OK: u8 = 0;
/// Status of a `CTL_SEND_BATCH` answer: the peer has gone; nothing more is sent.
pub const SEND_BATCH_CLOSED: u8 = 1;

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
/// enough to stay in a core's L2 cache (on this machine 4 MiB rings were slower at 64 KiB,
/// and rings of 1 and 2 MiB, four times the shared memory per connection, were no faster
/// from 64 KiB to 16 MiB: the receiving node's copies bound those sizes, not the ring).
pub const DIST_RING_BYTES: u64 = 512 << 10;
/// Longest a closed reliable tube goes on delivering what its owner sent before the close
/// (the messages still waiting for room in the peer's ring), in milliseconds.
pub const CLOSE_LINGER_MS: u64 = 5000;
/// Longest polling window, in microseconds.
pub const MAX_BUSY_POLL_US: u64 = 100_000;

/// `erlang:port_call` command: `send_batch/2` with a list of binaries, which the emulator
/// hands over in the external term format (`<<131, LIST_EXT, ..., BINARY_EXT, Len:32,
/// Bytes...>>`), so that no framing is built in Erlang and no iolist flattened. The answer
/// is the number of packets that went in, the atom `closed`, or the atom `framed`: the
/// list is not all binaries of `1..=MAX_PACKET` bytes (or the tube takes no batches), and
/// nothing was sent; the caller sends it through `CTL_SEND_BATCH`, which gives the answer.
pub const CALL_SEND_BATCH: u32 = 1;
