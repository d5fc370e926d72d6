//! Compiles the erl_driver glue in `c_src/` against the emulator's own
//! `erl_driver.h`, found through `TUBE_ERTS_INCLUDE` or by asking `erl`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The shared numbers: the one definition, in tube_ring.
#[allow(dead_code)]
mod proto {
    include!("../tube_ring/src/proto.rs");
}

fn erts_include() -> PathBuf {
    if let Ok(dir) = std::env::var("TUBE_ERTS_INCLUDE") {
        return PathBuf::from(dir);
    }
    let out = Command::new("erl")
        .args([
            "-noshell",
            "-eval",
            "io:format(\"~s\", [filename:join([code:root_dir(), \"usr\", \"include\"])]), halt().",
        ])
        .output();
    match out {
        Ok(o) if o.status.success() && !o.stdout.is_empty() => {
            PathBuf::from(String::from_utf8_lossy(&o.stdout).trim().to_string())
        }
        _ => PathBuf::from("/usr/lib/erlang/usr/include"),
    }
}

/// `include/tube_proto.hrl`, the shared numbers for Erlang.
fn erlang_header() -> String {
    use proto::*;
    let mut h = String::from(
        "%% The numbers the tube driver and the Erlang side share, generated from\n\
         %% native/tube_ring/src/proto.rs by native/tube_nif/build.rs: do not edit.\n",
    );
    let defs: &[(&str, u64)] = &[
        ("TUBE_CTL_STATS", CTL_STATS.into()),
        ("TUBE_CTL_CLOSE", CTL_CLOSE.into()),
        ("TUBE_CTL_ACTIVE", CTL_ACTIVE.into()),
        ("TUBE_CTL_BUSY_POLL", CTL_BUSY_POLL.into()),
        ("TUBE_CTL_DIST", CTL_DIST.into()),
        ("TUBE_STATS_N", STATS.len() as u64),
        ("TUBE_ACTIVE_NO_LIMIT", ACTIVE_NO_LIMIT.into()),
        ("TUBE_ACTIVE_SET", ACTIVE_SET.into()),
        ("TUBE_ACTIVE_ADD", ACTIVE_ADD.into()),
        ("TUBE_ACTIVE_QUERY", ACTIVE_QUERY.into()),
        ("TUBE_DELIVERY_LOSSY", DELIVERY_LOSSY),
        ("TUBE_DELIVERY_RELIABLE", DELIVERY_RELIABLE),
        ("TUBE_MAX_PACKET", MAX_PACKET),
        ("TUBE_MAX_MESSAGE", MAX_MESSAGE),
        ("TUBE_MAX_DOMID", MAX_DOMID.into()),
        ("TUBE_MAX_TID", MAX_TID.into()),
        ("TUBE_DIST_TID_MIN", DIST_TID_MIN.into()),
        ("TUBE_DIST_TID_MAX", DIST_TID_MAX.into()),
        ("TUBE_DIST_RING_BYTES", DIST_RING_BYTES),
        ("TUBE_CLOSE_LINGER_MS", CLOSE_LINGER_MS),
        ("TUBE_MAX_BUSY_POLL", MAX_BUSY_POLL_US),
        ("TUBE_CTL_DELIVER", CTL_DELIVER.into()),
        ("TUBE_CTL_SEND_BATCH", CTL_SEND_BATCH.into()),
        ("TUBE_DELIVER_PACKET", DELIVER_PACKET.into()),
        ("TUBE_DELIVER_BATCH", DELIVER_BATCH.into()),
        ("TUBE_SEND_BATCH_OK", SEND_BATCH_OK.into()),
        ("TUBE_SEND_BATCH_CLOSED", SEND_BATCH_CLOSED.into()),
        ("TUBE_CTL_RX_GRANT", CTL_RX_GRANT.into()),
        ("TUBE_ACTIVE_BOUNDED", ACTIVE_BOUNDED.into()),
        ("TUBE_RX_MAX_QUEUE", RX_MAX_QUEUE),
        ("TUBE_RX_QUEUE_BYTES", RX_QUEUE_BYTES),
        ("TUBE_RX_MAX_WAIT_US", RX_MAX_WAIT_US),
        ("TUBE_RX_DEPTH_SCALE", RX_DEPTH_SCALE),
        ("TUBE_CALL_SEND_BATCH", CALL_SEND_BATCH.into()),
    ];
    for (name, v) in defs {
        let _ = writeln!(h, "-define({name}, {v}).");
    }
    let names: Vec<&str> = STATS.to_vec();
    let _ = writeln!(h, "%% The counters of TUBE_CTL_STATS, in order.");
    let _ = writeln!(h, "-define(TUBE_STATS, [{}]).", names.join(", "));
    h
}

/// `tube_proto.h`, the shared numbers for the C glue.
fn c_header() -> String {
    use proto::*;
    let mut h = String::from("/* Generated from native/tube_ring/src/proto.rs by build.rs. */\n");
    for (name, v) in [
        ("TUBE_CTL_STATS", CTL_STATS),
        ("TUBE_CTL_CLOSE", CTL_CLOSE),
        ("TUBE_CTL_ACTIVE", CTL_ACTIVE),
        ("TUBE_CTL_BUSY_POLL", CTL_BUSY_POLL),
        ("TUBE_CTL_DIST", CTL_DIST),
        ("TUBE_STATS_N", STATS.len() as u32),
        ("TUBE_ACTIVE_QUERY", ACTIVE_QUERY.into()),
        ("TUBE_CTL_DELIVER", CTL_DELIVER),
        ("TUBE_CTL_SEND_BATCH", CTL_SEND_BATCH),
        ("TUBE_CTL_RX_GRANT", CTL_RX_GRANT),
        ("TUBE_CALL_SEND_BATCH", CALL_SEND_BATCH),
    ] {
        let _ = writeln!(h, "#define {name} {v}");
    }
    h
}

/// Writes `text` to `path` unless it already holds it (an unchanged file keeps its time,
/// so mix does not recompile what includes it).
fn write_if_changed(path: &Path, text: &str) {
    if std::fs::read_to_string(path).ok().as_deref() != Some(text) {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("create include/");
        }
        std::fs::write(path, text).expect("write generated header");
    }
}

fn main() {
    let include = erts_include();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let proto_rs = root.join("native/tube_ring/src/proto.rs");
    println!("cargo:rerun-if-changed={}", proto_rs.display());
    write_if_changed(&root.join("include/tube_proto.hrl"), &erlang_header());
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    write_if_changed(&out.join("tube_proto.h"), &c_header());
    let c_src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../c_src");
    println!("cargo:rerun-if-env-changed=TUBE_ERTS_INCLUDE");
    println!("cargo:rerun-if-changed={}", c_src.join("tube_drv.c").display());
    cc::Build::new()
        .file(c_src.join("tube_drv.c"))
        .include(&include)
        .include(&out)
        .flag_if_supported("-Wall")
        .flag_if_supported("-Wextra")
        .compile("tube_drv");
}
