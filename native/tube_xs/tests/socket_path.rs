//! `default_socket_path` reads the environment, so it has a test binary of its own (no other thread
//! touches the environment meanwhile).

use std::path::PathBuf;
use tube_xs::client::default_socket_path;

#[test]
fn environment_decides_the_socket() {
    std::env::set_var("XENSTORED_PATH", "/x/y/socket");
    std::env::set_var("XDG_RUNTIME_DIR", "/run/user/1000");
    assert_eq!(default_socket_path(), PathBuf::from("/x/y/socket"));

    std::env::set_var("XENSTORED_PATH", "");
    assert_eq!(
        default_socket_path(),
        PathBuf::from("/run/user/1000/tubestored/socket")
    );

    std::env::remove_var("XENSTORED_PATH");
    std::env::remove_var("XDG_RUNTIME_DIR");
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    assert_eq!(
        default_socket_path(),
        PathBuf::from(format!("/tmp/tubestored-{uid}/socket"))
    );
}
