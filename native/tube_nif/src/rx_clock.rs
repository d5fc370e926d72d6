//! The receive governor's clock: `tube_rx_clock` to a process after a
//! number of microseconds.
//!
//! The governor looks again at a held tube when its owner should have
//! brought its mailbox down to half the tube's depth, which for a fast owner
//! is tens to hundreds of microseconds away; Erlang timers have a grain of a
//! millisecond, in which such an owner empties its mailbox and waits. One
//! thread per node sleeps until the one deadline set (a new setting replaces
//! it: the governor always asks for its earliest) and sends the message.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use rustler::{Atom, Encoder, LocalPid, OwnedEnv};

mod atoms {
    rustler::atoms! { ok, tube_rx_clock }
}

/// The deadline set, and the process to tell.
static DEADLINE: Mutex<Option<(Instant, LocalPid)>> = Mutex::new(None);
/// Wakes the clock thread when the deadline changes.
static CHANGED: Condvar = Condvar::new();
/// The clock thread, started by the first setting.
static THREAD: OnceLock<()> = OnceLock::new();

/// Longest a deadline may be set ahead (the governor's longest wait is a
/// few milliseconds); a longer request is clamped.
const MAX_AHEAD: Duration = Duration::from_secs(1);

/// `tube_nif:rx_clock(Pid, Us)`: sends `tube_rx_clock` to `Pid` in `Us`
/// microseconds, replacing the deadline set before (if any).
#[rustler::nif]
fn rx_clock(pid: LocalPid, us: u64) -> Atom {
    THREAD.get_or_init(|| {
        let _ = std::thread::Builder::new().name("tube_rx_clock".into()).spawn(run);
    });
    let at = Instant::now() + Duration::from_micros(us).min(MAX_AHEAD);
    *DEADLINE.lock() = Some((at, pid));
    CHANGED.notify_one();
    atoms::ok()
}

fn run() {
    // The kernel's default timer slack (50 us) is as long as the waits this
    // clock is for.
    // SAFETY: PR_SET_TIMERSLACK only changes this thread's timer slack.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1000 as libc::c_ulong) };
    let mut env = OwnedEnv::new();
    let mut deadline = DEADLINE.lock();
    loop {
        match *deadline {
            None => CHANGED.wait(&mut deadline),
            Some((at, pid)) if Instant::now() >= at => {
                *deadline = None;
                drop(deadline);
                let _ = env.send_and_clear(&pid, |env| atoms::tube_rx_clock().encode(env));
                deadline = DEADLINE.lock();
            }
            Some((at, _)) => {
                let _ = CHANGED.wait_until(&mut deadline, at);
            }
        }
    }
}
