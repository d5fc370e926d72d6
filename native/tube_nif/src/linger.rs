//! Closing a reliable tube delivers what its owner sent before: a port that
//! stops with messages still in its outbox (the peer's ring was full) hands
//! its tube to a thread of its own, which goes on writing them as the peer
//! frees room, for at most [`LINGER`]. The port itself closes at once, as
//! any port does. Once the outbox is in the ring the tube is dropped: the
//! peer reads everything left in the ring before it sees the hang-up. A peer
//! that does not drain within [`LINGER`] loses the rest and sees the tube
//! close then (`peer_closed`), so a stuck peer holds the memory for a
//! bounded time only.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tube_ring::{Tube, MAX_PACKET};

/// Longest a closed reliable tube goes on delivering its outbox.
pub const LINGER: Duration = Duration::from_millis(tube_ring::proto::CLOSE_LINGER_MS);

/// Most tubes lingering at once (one thread each); a close beyond that drops
/// its outbox at once, as after the full linger.
const MAX_LINGERING: usize = 64;

/// Room worth waiting for: one whole record.
const RECORD_ROOM: usize = MAX_PACKET + 8;

static LINGERING: AtomicUsize = AtomicUsize::new(0);

/// Drops `tube`, after delivering its outbox if it has one and may linger.
/// The emulator no longer polls the tube's fd (called from `stop_select`).
pub fn finish(tube: Tube, may_linger: bool) {
    if !may_linger || tube.queued_bytes() == 0 || !tube.is_open() {
        return drop(tube);
    }
    if LINGERING.fetch_add(1, Ordering::Relaxed) >= MAX_LINGERING {
        LINGERING.fetch_sub(1, Ordering::Relaxed);
        return drop(tube);
    }
    let spawned = std::thread::Builder::new().name("tube_linger".into()).spawn(move || {
        deliver_outbox(tube, Instant::now() + LINGER);
        LINGERING.fetch_sub(1, Ordering::Relaxed);
    });
    if spawned.is_err() {
        // The closure (and the tube in it) was dropped with the error.
        LINGERING.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Writes the outbox as the peer frees room, waiting on the event fd with
/// the wait protocol of `Producer::prepare_wait`, until it is all in the
/// ring, the peer goes, or `deadline` passes.
fn deliver_outbox(mut tube: Tube, deadline: Instant) {
    loop {
        if tube.flush().is_err() || tube.queued_bytes() == 0 {
            return;
        }
        if !tube.prepare_wait_room(RECORD_ROOM) {
            if !tube.is_open() {
                return;
            }
            continue;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || !wait_readable(tube.fd(), left) || tube.on_readable().is_err() {
            return;
        }
    }
}

/// Waits up to `timeout` for `fd` to become readable (a wake-up or the
/// peer's hang-up); false on timeout or error.
fn wait_readable(fd: RawFd, timeout: Duration) -> bool {
    let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    let ms = timeout.as_millis().clamp(1, i32::MAX as u128) as libc::c_int;
    loop {
        // SAFETY: `pfd` is one valid pollfd for the duration of the call.
        let r = unsafe { libc::poll(&mut pfd, 1, ms) };
        if r >= 0 {
            return r > 0;
        }
        if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            return false;
        }
    }
}
