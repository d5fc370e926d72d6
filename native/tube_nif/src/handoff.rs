//! Hand-over of an established ring from the NIF side to the port driver.
//!
//! The handshake (control plane, NIFs) ends with a connected [`Tube`]; the
//! port that will own it is then opened with `open_port({spawn_driver,
//! "tube_nif <Id>"}, ...)`. Both run in one shared library, so the tube waits
//! in this table between the two steps, keyed by a number that is never
//! reused.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use tube_ring::Tube;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);
static WAITING: Mutex<Option<HashMap<u64, Tube>>> = Mutex::new(None);

/// Parks `tube` until a port claims it; returns its claim number.
pub fn park(tube: Tube) -> u64 {
    // Relaxed: the number only has to be unique, it orders nothing.
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    WAITING.lock().get_or_insert_with(HashMap::new).insert(id, tube);
    id
}

/// Takes the tube parked under `id`, if any.
pub fn claim(id: u64) -> Option<Tube> {
    WAITING.lock().as_mut().and_then(|m| m.remove(&id))
}

/// Number of tubes parked and not yet claimed (for leak checks).
pub fn parked() -> usize {
    WAITING.lock().as_ref().map_or(0, HashMap::len)
}
