//! The project's own client library (tube_xs::client) against the daemon: the calls the BEAM
//! glue makes, including the domain life cycle.

mod common;
use common::*;
use std::time::Duration;
use tube_xs::client::{Client, Error, WatchEvent};
use tube_xs::perms::PermList;
use tube_xs::XsError;

fn next_event(c: &Client) -> WatchEvent {
    c.events().recv_timeout(Duration::from_secs(10)).expect("watch event")
}

#[test]
fn client_calls_and_domain_life_cycle() {
    let h = start("client");
    let dom0 = Client::connect(h.path()).unwrap();
    dom0.watch("@releaseDomain", "rel").unwrap();
    assert_eq!(next_event(&dom0).path, "@releaseDomain");

    let a = Client::connect(h.path()).unwrap();
    let b = Client::connect(h.path()).unwrap();
    let da = a.introduce_self(None).unwrap();
    let db = b.introduce_self(Some(9)).unwrap();
    assert_eq!((da, db), (1, 9));
    assert!(matches!(a.introduce_self(Some(3)), Err(Error::Xs(XsError::Eisconn))));
    assert!(dom0.is_domain_introduced(9).unwrap());
    assert_eq!(a.get_domain_path(da).unwrap(), "/local/domain/1");

    // Seed 001's rendezvous: a makes its tube directory readable by b; b watches it.
    a.mkdir(0, "data/tube").unwrap();
    a.set_perms(0, "data/tube", &PermList::parse_str("n1,r9").unwrap()).unwrap();
    b.watch("/local/domain/1/data/tube", "t").unwrap();
    assert_eq!(next_event(&b).path, "/local/domain/1/data/tube");
    let tx = a.transaction_start().unwrap();
    a.write(tx, "data/tube/state", b"3").unwrap();
    a.write(tx, "data/tube/ring-ref", b"42").unwrap();
    a.transaction_end(tx, true).unwrap();
    let ev = next_event(&b);
    assert!(ev.path.starts_with("/local/domain/1/data/tube/"), "{ev:?}");
    assert_eq!(b.read(0, "/local/domain/1/data/tube/state").unwrap(), b"3");
    assert!(matches!(b.write(0, "/local/domain/1/data/tube/state", b"4"), Err(Error::Xs(XsError::Eacces))));
    assert_eq!(
        dom0.directory(0, "/local/domain/1/data/tube").unwrap(),
        vec!["state".to_owned(), "ring-ref".to_owned()]
    );

    // a dies: b's watch fires for the removal, dom0 sees @releaseDomain, a's nodes are gone.
    drop(a);
    loop {
        let ev = next_event(&b);
        if ev.path == "/local/domain/1/data/tube" {
            break;
        }
    }
    assert_eq!(next_event(&dom0).path, "@releaseDomain");
    assert!(matches!(dom0.read(0, "/local/domain/1"), Err(Error::Xs(XsError::Enoent))));
    assert!(!dom0.is_domain_introduced(1).unwrap());
    dom0.release(9).unwrap();
    assert_eq!(next_event(&dom0).path, "@releaseDomain");
}
