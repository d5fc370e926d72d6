//! Transactions read a snapshot: the store as it was at TRANSACTION_START plus the
//! transaction's own changes, whatever other connections commit meanwhile; a commit after
//! such a change still fails with EAGAIN.

mod common;
use common::*;
use tube_xs::wire::MsgType;

fn start_tx(c: &mut Raw) -> u32 {
    fields(&c.req(MsgType::TransactionStart, 0, b"\0").unwrap())[0].parse().unwrap()
}

fn end(c: &mut Raw, tx: u32, commit: bool) -> Result<Vec<u8>, String> {
    c.req(MsgType::TransactionEnd, tx, if commit { b"T\0" } else { b"F\0" })
}

/// DIRECTORY_PART's reply: the generation, then the names.
fn dir_part(c: &mut Raw, tx: u32, path: &str) -> Result<(String, Vec<String>), String> {
    let v = c.req(MsgType::DirectoryPart, tx, &zz(&[path, "0"]))?;
    let mut f = fields(&v);
    let gen = f.remove(0);
    Ok((gen, f))
}

#[test]
fn read_sees_the_value_at_start_and_commit_fails() {
    let h = start("snap-read");
    let (mut a, mut b) = (Raw::connect(h.path()), Raw::connect(h.path()));
    b.write("/s/x", "before").unwrap();
    let tx = start_tx(&mut a);
    b.write("/s/x", "after").unwrap();
    b.write("/s/new", "n").unwrap();
    assert_eq!(a.req(MsgType::Read, tx, &z("/s/x")).unwrap(), b"before");
    assert_eq!(a.req(MsgType::Read, tx, &z("/s/new")), Err("ENOENT".into()), "created after start");
    assert_eq!(b.read("/s/x").unwrap(), "after", "outside the transaction: the committed value");
    assert_eq!(end(&mut a, tx, true), Err("EAGAIN".into()));
}

#[test]
fn read_of_a_node_removed_after_start_still_sees_it() {
    let h = start("snap-rm");
    let (mut a, mut b) = (Raw::connect(h.path()), Raw::connect(h.path()));
    b.write("/s/gone/deep", "d").unwrap();
    let tx = start_tx(&mut a);
    b.req(MsgType::Rm, 0, &z("/s/gone")).unwrap();
    assert_eq!(a.req(MsgType::Read, tx, &z("/s/gone/deep")).unwrap(), b"d");
    assert_eq!(a.dir_tx(tx, "/s").unwrap(), vec!["gone"]);
    assert_eq!(end(&mut a, tx, true), Err("EAGAIN".into()));
    assert_eq!(b.read("/s/gone/deep"), Err("ENOENT".into()), "the failed commit changed nothing");
}

#[test]
fn directory_and_directory_part_see_the_children_at_start() {
    let h = start("snap-dir");
    let (mut a, mut b) = (Raw::connect(h.path()), Raw::connect(h.path()));
    b.write("/d/one", "1").unwrap();
    let (gen0, names0) = dir_part(&mut b, 0, "/d").unwrap();
    assert_eq!(names0, vec!["one"]);
    let tx = start_tx(&mut a);
    b.write("/d/two", "2").unwrap();
    assert_eq!(b.dir("/d").unwrap(), vec!["one", "two"]);
    assert_eq!(a.dir_tx(tx, "/d").unwrap(), vec!["one"]);
    assert_eq!(dir_part(&mut a, tx, "/d").unwrap(), (gen0, names0), "same generation and names as at start");
    // The transaction's own child shows up on top of the snapshot.
    a.req(MsgType::Write, tx, &wr("/d/mine", "m")).unwrap();
    assert_eq!(a.dir_tx(tx, "/d").unwrap(), vec!["one", "mine"]);
    assert_eq!(end(&mut a, tx, true), Err("EAGAIN".into()));
    assert_eq!(b.dir("/d").unwrap(), vec!["one", "two"]);
}

#[test]
fn get_perms_sees_the_permissions_at_start() {
    let h = start("snap-perms");
    let (mut a, mut b) = (Raw::connect(h.path()), Raw::connect(h.path()));
    b.write("/p", "v").unwrap();
    b.req(MsgType::SetPerms, 0, &zz(&["/p", "n0", "r5"])).unwrap();
    let tx = start_tx(&mut a);
    b.req(MsgType::SetPerms, 0, &zz(&["/p", "n0", "b7"])).unwrap();
    assert_eq!(fields(&a.req(MsgType::GetPerms, tx, &z("/p")).unwrap()), vec!["n0", "r5"]);
    assert_eq!(fields(&b.req(MsgType::GetPerms, 0, &z("/p")).unwrap()), vec!["n0", "b7"]);
    assert_eq!(end(&mut a, tx, true), Err("EAGAIN".into()));
}

#[test]
fn own_writes_read_back_over_the_snapshot_and_commit_when_nothing_changed() {
    let h = start("snap-own");
    let (mut a, mut b) = (Raw::connect(h.path()), Raw::connect(h.path()));
    b.write("/o/x", "base").unwrap();
    let tx = start_tx(&mut a);
    assert_eq!(a.req(MsgType::Read, tx, &z("/o/x")).unwrap(), b"base");
    a.req(MsgType::Write, tx, &wr("/o/x", "mine")).unwrap();
    a.req(MsgType::Rm, tx, &z("/o/x")).unwrap();
    assert_eq!(a.req(MsgType::Read, tx, &z("/o/x")), Err("ENOENT".into()));
    a.req(MsgType::Write, tx, &wr("/o/x", "again")).unwrap();
    assert_eq!(a.req(MsgType::Read, tx, &z("/o/x")).unwrap(), b"again");
    b.write("/unrelated", "u").unwrap();
    end(&mut a, tx, true).unwrap();
    assert_eq!(b.read("/o/x").unwrap(), "again");
}

#[test]
fn a_change_made_after_start_fails_the_commit_even_if_read_later() {
    let h = start("snap-late");
    let (mut a, mut b) = (Raw::connect(h.path()), Raw::connect(h.path()));
    b.write("/l/x", "1").unwrap();
    let tx = start_tx(&mut a);
    b.write("/l/x", "2").unwrap();
    // Written, never read: the write was based on the snapshot, so it conflicts.
    a.req(MsgType::Write, tx, &wr("/l/x", "3")).unwrap();
    assert_eq!(end(&mut a, tx, true), Err("EAGAIN".into()));
    assert_eq!(b.read("/l/x").unwrap(), "2");
}

#[test]
fn two_transactions_at_different_starts_see_their_own_snapshots() {
    let h = start("snap-two");
    let (mut a, mut b, mut w) = (Raw::connect(h.path()), Raw::connect(h.path()), Raw::connect(h.path()));
    w.write("/m", "1").unwrap();
    let t1 = start_tx(&mut a);
    w.write("/m", "2").unwrap();
    let t2 = start_tx(&mut b);
    w.write("/m", "3").unwrap();
    w.write("/m", "4").unwrap();
    assert_eq!(a.req(MsgType::Read, t1, &z("/m")).unwrap(), b"1");
    assert_eq!(b.req(MsgType::Read, t2, &z("/m")).unwrap(), b"2");
    end(&mut a, t1, false).unwrap();
    assert_eq!(b.req(MsgType::Read, t2, &z("/m")).unwrap(), b"2", "closing t1 keeps t2's versions");
    end(&mut b, t2, false).unwrap();
    assert_eq!(h.with_state(|s| s.store.undo_len()), 0, "no old version kept once every transaction ended");
}

#[test]
fn old_versions_go_when_the_connection_holding_the_transaction_goes() {
    let h = start("snap-close");
    let mut w = Raw::connect(h.path());
    w.write("/c", "1").unwrap();
    {
        let mut a = Raw::connect(h.path());
        start_tx(&mut a);
        w.write("/c", "2").unwrap();
        assert!(h.with_state(|s| s.store.undo_len()) > 0);
    }
    // The close is handled by the connection's thread: wait for it through the state.
    for _ in 0..1000 {
        if h.with_state(|s| s.store.undo_len()) == 0 {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("old versions kept after the transaction's connection closed");
}
