//! xenstore-rs (crates.io, an independent client implementation) against tubestored. It finds
//! the daemon through XENSTORED_PATH, so this file holds a single test (one process, one env).

mod common;
use common::*;
use xenstore_rs::unix::XsUnix;
use xenstore_rs::Xs;

#[test]
fn xenstore_rs_reads_writes_lists_removes() {
    let h = start("xsrs");
    std::env::set_var("XENSTORED_PATH", h.path());
    let xs = XsUnix::new().expect("xenstore-rs connects through XENSTORED_PATH");
    xs.write("/rs/a", "alpha").unwrap();
    xs.write("/rs/b/c", "gamma").unwrap();
    assert_eq!(&*xs.read("/rs/a").unwrap(), "alpha");
    assert_eq!(&*xs.read("/rs/b/c").unwrap(), "gamma");
    let mut d: Vec<String> = xs.directory("/rs").unwrap().iter().map(|s| s.to_string()).collect();
    d.sort();
    assert_eq!(d, vec!["a", "b"]);
    assert!(xs.read("/rs/missing").is_err());
    xs.rm("/rs/b").unwrap();
    assert!(xs.read("/rs/b/c").is_err());

    // What it wrote is what our own client reads.
    let mut c = Raw::connect(h.path());
    assert_eq!(c.read("/rs/a").unwrap(), "alpha");
    c.write("/rs/from-raw", "x").unwrap();
    assert_eq!(&*xs.read("/rs/from-raw").unwrap(), "x");
    h.with_state(|s| s.store.check_invariants()).unwrap();
}
