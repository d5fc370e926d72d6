//! Permission strings and access rules.

use tube_xs::perms::{Access, Perm, PermList};
use tube_xs::XsError;

#[test]
fn parses_all_letters() {
    let l = PermList::parse(&[b"n0", b"r5", b"w7", b"b65535"]).unwrap();
    let want = [
        (Access::None, 0),
        (Access::Read, 5),
        (Access::Write, 7),
        (Access::Both, 65535),
    ];
    let got: Vec<(Access, u32)> = l.0.iter().map(|p| (p.access, p.domid)).collect();
    assert_eq!(got, want);
    assert_eq!(l.to_wire(), b"n0\0r5\0w7\0b65535\0");
    assert_eq!(l.to_string(), "n0,r5,w7,b65535");
}

#[test]
fn rejects_malformed_entries() {
    for bad in [
        &b""[..],
        b"n",
        b"x0",
        b"N0",
        b"r-1",
        b"r+1",
        b"r 1",
        b"r1 ",
        b"r0x10",
        b"r65536",
        b"r99999999999",
        b"5",
    ] {
        assert_eq!(
            Perm::parse(bad),
            Err(XsError::Einval),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
    assert_eq!(PermList::parse(&[]), Err(XsError::Einval));
    assert_eq!(PermList::parse(&[b"n0", b"q1"]), Err(XsError::Einval));
}

#[test]
fn parse_str_accepts_commas_and_spaces() {
    let want = PermList::parse(&[b"n0", b"r5"]).unwrap();
    assert_eq!(PermList::parse_str("n0,r5"), Ok(want.clone()));
    assert_eq!(PermList::parse_str(" n0  r5 "), Ok(want.clone()));
    assert_eq!(PermList::parse_str("n0, r5"), Ok(want));
    assert_eq!(PermList::parse_str(""), Err(XsError::Einval));
    assert_eq!(PermList::parse_str(",,"), Err(XsError::Einval));
}

#[test]
fn owner_gets_everything() {
    let l = PermList::parse_str("n3").unwrap();
    assert_eq!(l.owner(), 3);
    assert_eq!(l.access_for(3), Access::Both);
    assert_eq!(l.access_for(4), Access::None);
}

#[test]
fn later_entries_override_default() {
    let l = PermList::parse_str("r1,n2,w3,b4").unwrap();
    assert!(l.can_read(9) && !l.can_write(9), "default from entry 0");
    assert!(!l.can_read(2) && !l.can_write(2));
    assert!(!l.can_read(3) && l.can_write(3));
    assert!(l.can_read(4) && l.can_write(4));
    assert!(l.can_read(1) && l.can_write(1), "owner");
    assert_eq!(PermList::owned_by(6), PermList::parse_str("n6").unwrap());
}

#[test]
fn first_matching_entry_wins() {
    let l = PermList::parse_str("n0,r5,w5").unwrap();
    assert_eq!(l.access_for(5), Access::Read);
}

#[test]
fn empty_list_grants_nothing() {
    let l = PermList(Vec::new());
    assert_eq!(l.access_for(0), Access::None);
    assert_eq!(l.owner(), 0);
}
