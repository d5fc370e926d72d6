//! Both ends of a tube in one process: the connector end is the attacker, scribbling one
//! random corruption at a time over the shared region (and sometimes publishing honest or
//! impossible records), while the offerer end, the victim, sends, drains and services its
//! event channel through `tube_ring` exactly as the port driver does. When the victim finds
//! the ring corrupt, the tube must stay dead, and a fresh tube takes over, until the wanted
//! number of corruptions is reached. Single-threaded after the handshake, so every
//! corruption lands between two victim calls and a failure replays from the seed.

use std::time::Duration;

use tube_ring::{Offer, RingError, SendError, Tube, MAX_PACKET};

use crate::corrupt::{wake, RawProducer, Scribbler};
use crate::region::Region;
use crate::rng::Rng;
use crate::ChaosError;

/// Longest a handshake inside this process may take.
const HANDSHAKE: Duration = Duration::from_secs(10);

/// What a run did.
#[derive(Debug, Default, Clone)]
pub struct FuzzReport {
    /// Corruptions applied, in total.
    pub corruptions: u64,
    /// Corruptions per kind, in the order of [`crate::corrupt::KINDS`].
    pub by_kind: [u64; 7],
    /// Tubes used.
    pub tubes: u64,
    /// Tubes the victim found corrupt (the rest reached the per-tube limit still open).
    pub found_corrupt: u64,
    /// Packets the victim received (all checked to be 1..=4096 bytes).
    pub delivered: u64,
}

/// Runs `count` corruptions, at most `per_tube` against any one tube.
pub fn run(count: u64, per_tube: u64, seed: u64) -> Result<FuzzReport, ChaosError> {
    let mut report = FuzzReport::default();
    let mut rng = Rng::new(seed ^ 0x5EED);
    let mut scribbler = Scribbler::new(seed, 1);
    while report.corruptions < count {
        let (mut victim, attacker) = pair()?;
        report.tubes += 1;
        let budget = per_tube.max(1).min(count - report.corruptions);
        let before = scribbler.total();
        let dead = attack(&mut victim, &attacker, &mut scribbler, &mut rng, budget, &mut report.delivered)?;
        report.corruptions += scribbler.total() - before;
        report.found_corrupt += u64::from(dead);
    }
    report.by_kind = scribbler.counts;
    Ok(report)
}

/// A connected pair in this process: (offerer = victim, connector = attacker).
fn pair() -> Result<(Tube, Tube), ChaosError> {
    let offer = Offer::new()?;
    let (ch, tx, rx) = (offer.event_channel(), offer.tx_ring_ref(), offer.rx_ring_ref());
    let connector = std::thread::spawn(move || tube_ring::connect(&ch, &tx, &rx, HANDSHAKE));
    let victim = offer.accept(HANDSHAKE);
    let attacker = connector.join().map_err(|_| ChaosError::Protocol("connector thread panicked".into()))?;
    Ok((victim?, attacker?))
}

/// Up to `budget` corruptions against one tube; true if the victim found it corrupt.
fn attack(
    victim: &mut Tube,
    attacker: &Tube,
    scribbler: &mut Scribbler,
    rng: &mut Rng,
    budget: u64,
    delivered: &mut u64,
) -> Result<bool, ChaosError> {
    // The victim (offerer) reads direction 1, which the attacker (connector) writes.
    let region = Region::of(attacker)?;
    let mut raw = RawProducer::new(&region, 1);
    let payload = rng.bytes(MAX_PACKET);
    for _ in 0..budget {
        scribbler.one(&region, false);
        if rng.one_in(3) {
            let len = 1 + rng.below(MAX_PACKET as u64) as usize;
            raw.push(&region, &payload[..len]);
            wake(attacker.fd());
        } else if rng.one_in(50) {
            raw.push_claiming(&region, [0, 4097, u32::MAX][rng.below(3) as usize], &payload[..16]);
        } else if rng.one_in(200) {
            raw.publish_impossible(&region, rng);
        }
        if victim_step(victim, rng, &payload, delivered)? {
            return check_stays_dead(victim).map(|()| true);
        }
    }
    Ok(false)
}

/// One round of what the port driver does; true once the victim has found corruption.
fn victim_step(victim: &mut Tube, rng: &mut Rng, payload: &[u8], delivered: &mut u64) -> Result<bool, ChaosError> {
    let len = 1 + rng.below(MAX_PACKET as u64) as usize;
    match victim.send(&payload[..len]) {
        Ok(()) | Err(SendError::Full) => {}
        Err(SendError::Corrupt) => return Ok(true),
        Err(e) => return Err(unexpected("send", &e)),
    }
    let mut bad_len = None;
    // The driver's receive pass, with a packet check for its delivery.
    let check = |p: &[u8]| {
        if p.is_empty() || p.len() > MAX_PACKET {
            bad_len = Some(p.len());
        }
    };
    let mut check = check;
    let got = victim
        .receive_pass(64, 16, 8, |t, max| t.recv(max, &mut check), |_| false)
        .map(|(_, n)| n);
    if let Some(n) = bad_len {
        return Err(ChaosError::Protocol(format!("a packet of {n} bytes was delivered")));
    }
    match got {
        Ok(n) => *delivered += n as u64,
        Err(RingError::Corrupt(_)) => return Ok(true),
        Err(e) => return Err(unexpected("recv", &e)),
    }
    let _ = victim.has_data();
    let _ = victim.prepare_sleep();
    match victim.on_readable() {
        Ok(()) => Ok(false),
        Err(RingError::Corrupt(_)) => Ok(true),
        Err(e) => Err(unexpected("on_readable", &e)),
    }
}

fn unexpected(what: &str, e: &dyn std::fmt::Display) -> ChaosError {
    ChaosError::Protocol(format!("{what}: unexpected error {e}"))
}

/// A tube found corrupt must refuse everything from then on.
fn check_stays_dead(victim: &mut Tube) -> Result<(), ChaosError> {
    let dead = victim.send(b"x") == Err(SendError::Corrupt)
        && matches!(victim.recv(1, |_| {}), Err(RingError::Corrupt(_)))
        && !victim.prepare_sleep()
        && !victim.is_open();
    if dead {
        Ok(())
    } else {
        Err(ChaosError::Protocol("a corrupt tube came back to life".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corruptions_only_cause_errors_and_are_detected() {
        let r = run(20_000, 2_000, 7).unwrap();
        assert_eq!(r.corruptions, 20_000);
        assert_eq!(r.by_kind.iter().sum::<u64>(), 20_000);
        assert!(r.tubes >= 10);
        // Bogus indices and lengths are among the corruptions; if no tube ever noticed one,
        // validation is missing.
        assert!(r.found_corrupt > 0, "{r:?}");
    }
}
