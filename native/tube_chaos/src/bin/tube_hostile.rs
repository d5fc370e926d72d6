//! `tube-hostile`: a peer that is not a BEAM and does not play by the rules.
//!
//! ```text
//! tube-hostile ring-fuzz [--count N] [--per-tube M] [--seed S]
//! tube-hostile MODE --tip DOMID --layout FILE [--tid T] [--count N] [--per-tube M]
//!              [--seed S] [--xs SOCKET] [--timeout-ms MS]
//! ```
//!
//! `ring-fuzz` needs no Xenstore: both ends of many tubes in this process, one scribbling
//! while the other runs `tube_ring` (see `tube_chaos::ring_fuzz`). The other modes introduce
//! themselves as a new domain on the daemon at `--xs` (default `$XENSTORED_PATH`), open tube
//! `--tid` to domain `--tip` like a BEAM nock (writing the nodes of the layout recorded from
//! one, `--layout`; see `tube_chaos::nock`), wait for the tip to accept, then:
//!
//! * `random-bytes`: up to `--count` random bytes and words over the whole shared region,
//!   with honest packets in between, until the tip closes the tube; if it has not, a producer
//!   index no reader accepts, so the tip always closes it as corrupt;
//! * `bad-framing`: three honest packets, then reliable framing no honest peer writes (a
//!   message of 10 bytes announced, then a record of 64);
//! * `bad-length`: three honest packets (`honest-0..2`), then a record of 4097 bytes, its
//!   length claimed and its bytes published;
//! * `bad-indices`: three honest packets and, once they are read, a producer index the
//!   reader must refuse (more than a ring ahead, or behind);
//! * `xenstore-garbage`: first bogus tip entries the tip must ignore, then the tube, one
//!   honest packet (`before-garbage`), then `--count` garbage writes/removals on its nodes,
//!   then the nock's nodes put back with the closing state, to which the tip must answer;
//! * `count`: `--count` random writes over the region spread over successive tubes (tids
//!   from `--tid` on, at most `--per-tube` each); a tube still open after its share is
//!   finished with an impossible length.
//!
//! Output on stdout, one line each: `DOMAIN <me>`, `CONNECTED <tid>` per tube, and a final
//! `RESULT key=value ...`. Exit status 0 when the run went as planned, 1 on a set-up failure
//! (message on stderr), 2 on bad arguments.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use tube_chaos::corrupt::{discard_all, peer_gone, wake, RawProducer, Scribbler, KINDS};
use tube_chaos::nock::{bogus_entries, introduce, Layout, Nock};
use tube_chaos::region::{cons_offset, prod_offset, Region};
use tube_chaos::rng::Rng;
use tube_chaos::{ring_fuzz, ChaosError};
use tube_ring::Tube;

/// Parsed command line.
struct Args {
    mode: String,
    tip: u32,
    tid: u32,
    count: u64,
    per_tube: u64,
    seed: u64,
    xs: PathBuf,
    layout: Option<PathBuf>,
    timeout: Duration,
}

fn usage() -> ExitCode {
    eprintln!(
        "usage: tube-hostile ring-fuzz [--count N] [--per-tube M] [--seed S]\n       \
         tube-hostile random-bytes|bad-length|bad-indices|bad-framing|xenstore-garbage|count --tip DOMID \
         --layout FILE [--tid T] [--count N] [--per-tube M] [--seed S] [--xs SOCKET] [--timeout-ms MS]"
    );
    ExitCode::from(2)
}

fn parse_args() -> Option<Args> {
    let mut it = std::env::args().skip(1);
    let mode = it.next()?;
    let mut a = Args {
        mode,
        tip: u32::MAX,
        tid: 0,
        count: 100_000,
        per_tube: 20_000,
        seed: 1,
        xs: std::env::var_os("XENSTORED_PATH").map(PathBuf::from).unwrap_or_default(),
        layout: None,
        timeout: Duration::from_secs(10),
    };
    while let Some(flag) = it.next() {
        let v = it.next()?;
        match flag.as_str() {
            "--tip" => a.tip = v.parse().ok()?,
            "--tid" => a.tid = v.parse().ok()?,
            "--count" => a.count = v.parse().ok()?,
            "--per-tube" => a.per_tube = v.parse().ok()?,
            "--seed" => a.seed = v.parse().ok()?,
            "--xs" => a.xs = PathBuf::from(v),
            "--layout" => a.layout = Some(PathBuf::from(v)),
            "--timeout-ms" => a.timeout = Duration::from_millis(v.parse().ok()?),
            _ => return None,
        }
    }
    Some(a)
}

fn main() -> ExitCode {
    let Some(args) = parse_args() else { return usage() };
    let known = ["ring-fuzz", "random-bytes", "bad-length", "bad-indices", "bad-framing", "xenstore-garbage", "count"];
    if !known.contains(&args.mode.as_str()) || (args.mode != "ring-fuzz" && (args.tip == u32::MAX || args.xs.as_os_str().is_empty() || args.layout.is_none())) {
        return usage();
    }
    match run(&args) {
        Ok(result) => {
            println!("RESULT mode={} {result}", args.mode);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tube-hostile {}: {e}", args.mode);
            ExitCode::from(1)
        }
    }
}

fn run(a: &Args) -> Result<String, ChaosError> {
    if a.mode == "ring-fuzz" {
        let r = ring_fuzz::run(a.count, a.per_tube, a.seed)?;
        return Ok(format!(
            "corruptions={} tubes={} found_corrupt={} delivered={} {}",
            r.corruptions, r.tubes, r.found_corrupt, r.delivered, by_kind(&r.by_kind)
        ));
    }
    let layout = Layout::read(a.layout.as_deref().unwrap_or(std::path::Path::new("")))?;
    let (xs, me) = introduce(&a.xs)?;
    println!("DOMAIN {me}");
    let mut rng = Rng::new(a.seed);
    if a.mode == "count" {
        return count_mode(a, &layout, xs, me, &mut rng);
    }
    if a.mode == "xenstore-garbage" {
        let bogus = bogus_entries(&xs, &layout, me, a.tip, a.tid + 1000, &mut rng);
        println!("BOGUS {}", bogus.len());
    }
    let nock = Nock::publish(xs, &layout, me, a.tip, a.tid)?;
    let tube = nock.connect(a.timeout)?;
    println!("CONNECTED {}", a.tid);
    let region = Region::of(&tube)?;
    let mut raw = RawProducer::new(&region, 1);
    let result = match a.mode.as_str() {
        "random-bytes" => {
            let mut s = Scribbler::new(a.seed, 1);
            let payload = rng.bytes(512);
            while s.total() < a.count && !peer_gone(tube.fd()) {
                s.one(&region, true);
                if rng.one_in(8) {
                    raw.push(&region, &payload[..1 + rng.below(512) as usize]);
                    wake(tube.fd());
                }
                discard_all(&region, 0);
            }
            if !peer_gone(tube.fd()) {
                // Every scribble may have been one an honest ring could hold: end with a
                // producer index half the index space away from the consumer's, which no
                // reader may accept, so that the tip's one outcome is `corrupt`.
                let cons = region.load_u64(cons_offset(1)).unwrap_or(0);
                region.store_u64(prod_offset(1), cons.wrapping_add(1 << 63));
                wake(tube.fd());
            }
            let closed = wait_gone(&tube, a.timeout);
            format!("corruptions={} tip_closed={closed}", s.total())
        }
        "bad-length" | "bad-indices" | "bad-framing" => {
            for i in 0..3 {
                raw.push(&region, format!("honest-{i}").as_bytes());
            }
            if a.mode == "bad-framing" {
                // For a reliable reader: a message of 10 bytes announced, then a chunk of 64.
                raw.push_flagged(&region, tube_ring::layout::REC_MSG_LEN, &10u64.to_le_bytes());
                raw.push_flagged(&region, 0, &[0xCD; 64]);
            } else if a.mode == "bad-length" {
                // The producer index covers the whole claimed record: only the length
                // check itself can refuse it.
                raw.push_claiming(&region, 4097, &[0xAB; 4097]);
            } else {
                // The reader checks the index before any record: let it take the honest
                // packets first, or they would go down with the tube.
                wake(tube.fd());
                let deadline = Instant::now() + a.timeout;
                while !raw.drained(&region) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(1));
                }
                raw.publish_impossible(&region, &mut rng);
            }
            wake(tube.fd());
            format!("corruptions=1 tip_closed={}", wait_gone(&tube, a.timeout))
        }
        _ => {
            raw.push(&region, b"before-garbage");
            wake(tube.fd());
            let (ok, refused) = nock.garbage(&mut rng, a.count);
            nock.leave()?;
            format!("garbage_ok={ok} garbage_refused={refused} tip_closed={}", wait_gone(&tube, a.timeout))
        }
    };
    Ok(result)
}

/// Waits up to `limit` for the tip to close its end; true if it did.
fn wait_gone(tube: &Tube, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if peer_gone(tube.fd()) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Random writes over the region of successive tubes until `count` are done.
fn count_mode(a: &Args, layout: &Layout, xs: tube_xs::client::Client, me: u32, rng: &mut Rng) -> Result<String, ChaosError> {
    let mut s = Scribbler::new(a.seed, 1);
    let (mut tubes, mut closed_by_tip, mut finished) = (0u64, 0u64, 0u64);
    let payload = rng.bytes(512);
    let mut tid = a.tid;
    while s.total() < a.count {
        let nock = Nock::publish(xs.clone(), layout, me, a.tip, tid)?;
        let tube = nock.connect(a.timeout)?;
        println!("CONNECTED {tid}");
        tubes += 1;
        let region = Region::of(&tube)?;
        let mut raw = RawProducer::new(&region, 1);
        let share = (s.total() + a.per_tube.max(1)).min(a.count);
        let mut gone = false;
        while s.total() < share {
            s.one(&region, true);
            if rng.one_in(8) {
                raw.push(&region, &payload[..1 + rng.below(512) as usize]);
                wake(tube.fd());
            }
            discard_all(&region, 0);
            if peer_gone(tube.fd()) {
                gone = true;
                break;
            }
        }
        if gone {
            closed_by_tip += 1;
        } else {
            raw.push_claiming(&region, 4097, &[0; 16]);
            wake(tube.fd());
            finished += 1;
            if !wait_gone(&tube, a.timeout) {
                return Err(ChaosError::Timeout("the tip to close a tube with an impossible length"));
            }
        }
        drop(tube);
        nock.remove();
        tid = tid.wrapping_add(1);
    }
    Ok(format!(
        "corruptions={} tubes={tubes} closed_during_scribbling={closed_by_tip} finished_with_bad_length={finished} {}",
        s.total(),
        by_kind(&s.counts)
    ))
}

fn by_kind(counts: &[u64; 7]) -> String {
    KINDS.iter().zip(counts).map(|(k, n)| format!("{k:?}={n}")).collect::<Vec<_>>().join(" ")
}
