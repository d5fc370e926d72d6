//! NIFs of `tube_nif` that set up rings: the offering side (`tip`) creates
//! the shared memory and waits for its peer; the connecting side (`nock`)
//! maps it. Both end with a tube parked for the port driver.

use std::time::Duration;

use parking_lot::Mutex;
use rustler::{Encoder, Env, NifResult, ResourceArc, Term};
use tube_ring::layout::ring_bytes_for_tid;
use tube_ring::{Connecting, Offer, RingError, Tube};

use crate::{atoms, handoff};

/// An offer made but not yet accepted.
pub struct OfferRes(Mutex<Option<Offer>>);

#[rustler::resource_impl]
impl rustler::Resource for OfferRes {}

/// A connection to an offer that presented its grant and awaits the ring.
pub struct ConnectingRes(Mutex<Option<Connecting>>);

#[rustler::resource_impl]
impl rustler::Resource for ConnectingRes {}

/// A connected tube not yet handed to a port.
pub struct TubeRes(Mutex<Option<Tube>>);

#[rustler::resource_impl]
impl rustler::Resource for TubeRes {}

fn ring_error<'a>(env: Env<'a>, e: &RingError) -> Term<'a> {
    let reason = match e {
        RingError::PeerGone => atoms::peer_gone().encode(env),
        RingError::Corrupt(what) => (atoms::corrupt(), *what).encode(env),
        RingError::Io(io) => (atoms::io(), io.to_string()).encode(env),
        RingError::Timeout => atoms::timeout().encode(env),
        RingError::BadRef(r) => (atoms::bad_ref(), r.as_str()).encode(env),
        RingError::Denied => atoms::denied().encode(env),
        RingError::DeliveryMismatch => atoms::delivery_mismatch().encode(env),
    };
    (atoms::error(), reason).encode(env)
}

fn tube_result<'a>(env: Env<'a>, r: Result<Tube, RingError>) -> Term<'a> {
    match r {
        Ok(t) => (atoms::ok(), ResourceArc::new(TubeRes(Mutex::new(Some(t))))).encode(env),
        Err(e) => ring_error(env, &e),
    }
}

fn offer_term(env: Env<'_>, offer: Result<Offer, RingError>) -> Term<'_> {
    match offer {
        Ok(o) => {
            let (evt, tx, rx) = (o.event_channel(), o.tx_ring_ref(), o.rx_ring_ref());
            let res = ResourceArc::new(OfferRes(Mutex::new(Some(o))));
            (atoms::ok(), res, evt, tx, rx).encode(env)
        }
        Err(e) => ring_error(env, &e),
    }
}

/// `ring_offer() -> {ok, Offer, EventChannel, TxRingRef, RxRingRef}`, rings of the seed's size.
#[rustler::nif]
fn ring_offer(env: Env<'_>) -> Term<'_> {
    offer_term(env, Offer::new())
}

/// `ring_offer(Tid)`: as `ring_offer/0`, with the ring size of the tube's Tid
/// (`layout::ring_bytes_for_tid`: larger rings for distribution tubes).
#[rustler::nif(name = "ring_offer")]
fn ring_offer_for(env: Env<'_>, tid: u32) -> Term<'_> {
    offer_term(env, Offer::with_ring_bytes(ring_bytes_for_tid(tid)))
}

/// `ring_accept(Offer, TimeoutMs) -> {ok, TubeRes} | {error, Reason}`.
/// An offer can be accepted once; again is badarg.
#[rustler::nif(schedule = "DirtyIo")]
fn ring_accept(env: Env<'_>, offer: ResourceArc<OfferRes>, timeout_ms: u32) -> NifResult<Term<'_>> {
    let Some(o) = offer.0.lock().take() else {
        return Err(rustler::Error::BadArg);
    };
    Ok(tube_result(env, o.accept(Duration::from_millis(timeout_ms.into()))))
}

/// `ring_connect(EventChannel, TxRingRef, RxRingRef, TimeoutMs)`, with the
/// offerer's refs as read from Xenstore.
#[rustler::nif(schedule = "DirtyIo")]
fn ring_connect(env: Env<'_>, evt: String, tx: String, rx: String, timeout_ms: u32) -> Term<'_> {
    tube_result(env, tube_ring::connect(&evt, &tx, &rx, Duration::from_millis(timeout_ms.into())))
}

/// `ring_connect(EventChannel, TxRingRef, RxRingRef, Tid, TimeoutMs)`: as
/// `ring_connect/4`, expecting the ring size of the tube's Tid.
#[rustler::nif(name = "ring_connect", schedule = "DirtyIo")]
fn ring_connect_for(env: Env<'_>, evt: String, tx: String, rx: String, tid: u32, timeout_ms: u32) -> Term<'_> {
    let timeout = Duration::from_millis(timeout_ms.into());
    tube_result(env, tube_ring::connect_ring(&evt, &tx, &rx, ring_bytes_for_tid(tid), timeout))
}

/// `ring_connect_start(EventChannel, TxRingRef, RxRingRef) -> {ok, Connecting}
/// | {error, Reason}`: connects and presents the grant without blocking, so
/// the offerer can answer while `ring_connect_finish/2` is being scheduled.
#[rustler::nif]
fn ring_connect_start(env: Env<'_>, evt: String, tx: String, rx: String) -> Term<'_> {
    connecting_term(env, Connecting::start(&evt, &tx, &rx))
}

/// `ring_connect_start(EventChannel, TxRingRef, RxRingRef, Tid)`: as
/// `ring_connect_start/3`, expecting the ring size of the tube's Tid.
#[rustler::nif(name = "ring_connect_start")]
fn ring_connect_start_for(env: Env<'_>, evt: String, tx: String, rx: String, tid: u32) -> Term<'_> {
    let ring = ring_bytes_for_tid(tid);
    connecting_term(env, Connecting::start(&evt, &tx, &rx).and_then(|c| c.expect_ring_bytes(ring)))
}

fn connecting_term(env: Env<'_>, c: Result<Connecting, RingError>) -> Term<'_> {
    match c {
        Ok(c) => (atoms::ok(), ResourceArc::new(ConnectingRes(Mutex::new(Some(c))))).encode(env),
        Err(e) => ring_error(env, &e),
    }
}

/// `ring_connect_finish(Connecting, TimeoutMs) -> {ok, TubeRes} | {error,
/// Reason}`: waits for the offerer's ring. Once per connection; again is badarg.
#[rustler::nif(schedule = "DirtyIo")]
fn ring_connect_finish(env: Env<'_>, conn: ResourceArc<ConnectingRes>, timeout_ms: u32) -> NifResult<Term<'_>> {
    let Some(c) = conn.0.lock().take() else {
        return Err(rustler::Error::BadArg);
    };
    Ok(tube_result(env, c.finish(Duration::from_millis(timeout_ms.into()))))
}

/// `ring_handoff(TubeRes) -> {ok, Id}`: parks the tube for
/// `open_port({spawn_driver, "tube_nif Id"}, [binary])`.
#[rustler::nif]
fn ring_handoff(env: Env<'_>, tube: ResourceArc<TubeRes>) -> NifResult<Term<'_>> {
    let Some(t) = tube.0.lock().take() else {
        return Err(rustler::Error::BadArg);
    };
    Ok((atoms::ok(), handoff::park(t)).encode(env))
}

/// `ring_discard(Id) -> boolean()`: drops a parked tube that no port will
/// claim (the open_port call failed).
#[rustler::nif]
fn ring_discard(id: u64) -> bool {
    handoff::claim(id).is_some()
}

/// `ring_parked() -> integer()`: tubes parked and not claimed.
#[rustler::nif]
fn ring_parked() -> usize {
    handoff::parked()
}
