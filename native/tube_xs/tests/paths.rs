//! Path rules at every edge: characters, limits, slashes, relative and special paths.

use tube_xs::path::{
    basename, canonicalize, canonicalize_bytes, canonicalize_special, depth_below,
    is_ancestor_or_self, is_special, parent,
};
use tube_xs::wire::{ABS_PATH_MAX, REL_PATH_MAX};
use tube_xs::XsError;

const E: Result<String, XsError> = Err(XsError::Einval);

#[test]
fn accepts_xen_alphabet() {
    let p = "/local/domain/0/ABCxyz-019_@";
    assert_eq!(canonicalize(0, p).as_deref(), Ok(p));
    assert_eq!(canonicalize(0, "/").as_deref(), Ok("/"));
}

#[test]
fn rejects_every_other_byte() {
    for c in 0u8..=255 {
        let ok = c.is_ascii_alphanumeric() || b"-/_@".contains(&c);
        let p = [b'/', b'a', c, b'b'];
        let r = canonicalize_bytes(0, &p, false);
        if c == b'/' {
            assert_eq!(r.as_deref(), Ok("/a/b"));
        } else {
            assert_eq!(r.is_ok(), ok, "byte {c:#x}");
        }
    }
    assert_eq!(canonicalize(0, "/a.b"), E, "dot is not in Xen's set");
    assert_eq!(canonicalize(0, "/a b"), E);
    assert_eq!(canonicalize(0, "/é"), E);
}

#[test]
fn rejects_empty_double_and_trailing_slash() {
    assert_eq!(canonicalize(0, ""), E);
    assert_eq!(canonicalize(0, "//"), E);
    assert_eq!(canonicalize(0, "/a//b"), E);
    assert_eq!(canonicalize(0, "/a/"), E);
    assert_eq!(canonicalize(0, "a/"), E);
    assert_eq!(canonicalize(0, "a//b"), E);
}

#[test]
fn relative_paths_join_domain_home() {
    assert_eq!(
        canonicalize(7, "data/tube").as_deref(),
        Ok("/local/domain/7/data/tube")
    );
    assert_eq!(canonicalize(7, "-").as_deref(), Ok("/local/domain/7/-"));
    assert_eq!(
        canonicalize(65535, "x").as_deref(),
        Ok("/local/domain/65535/x")
    );
}

#[test]
fn absolute_length_limit_is_inclusive() {
    let at = format!("/{}", "a".repeat(ABS_PATH_MAX - 1));
    assert_eq!(at.len(), ABS_PATH_MAX);
    assert_eq!(canonicalize(0, &at).as_deref(), Ok(at.as_str()));
    let over = format!("/{}", "a".repeat(ABS_PATH_MAX));
    assert_eq!(canonicalize(0, &over), E);
}

#[test]
fn relative_length_limit_is_inclusive() {
    let at = "a".repeat(REL_PATH_MAX);
    assert_eq!(
        canonicalize(3, &at).unwrap().len(),
        "/local/domain/3/".len() + REL_PATH_MAX
    );
    assert_eq!(canonicalize(3, &"a".repeat(REL_PATH_MAX + 1)), E);
}

#[test]
fn special_paths_only_where_allowed() {
    assert_eq!(canonicalize(0, "@introduceDomain"), E);
    assert_eq!(
        canonicalize_special(0, "@introduceDomain").as_deref(),
        Ok("@introduceDomain")
    );
    assert_eq!(
        canonicalize_special(4, "@releaseDomain/4").as_deref(),
        Ok("@releaseDomain/4")
    );
    assert_eq!(canonicalize_special(0, "@releaseDomain/"), E);
    assert_eq!(canonicalize_special(0, "@a//b"), E);
    assert_eq!(canonicalize_special(0, "@a.b"), E);
    assert_eq!(
        canonicalize_special(0, &format!("@{}", "a".repeat(ABS_PATH_MAX))),
        E
    );
    assert!(is_special("@x") && !is_special("/x") && !is_special("x@"));
    // '@' inside a path is a legal character, though Xen advises against it.
    assert_eq!(canonicalize(0, "/a@b").as_deref(), Ok("/a@b"));
    assert_eq!(canonicalize(0, "a@b").as_deref(), Ok("/local/domain/0/a@b"));
}

#[test]
fn parents() {
    assert_eq!(parent("/a/b/c"), Some("/a/b"));
    assert_eq!(parent("/a"), Some("/"));
    assert_eq!(parent("/"), None);
    assert_eq!(basename("/a/bc"), "bc");
    assert_eq!(basename("/"), "");
}

#[test]
fn ancestry_is_component_wise() {
    assert!(is_ancestor_or_self("/a", "/a"));
    assert!(is_ancestor_or_self("/a", "/a/b"));
    assert!(!is_ancestor_or_self("/a", "/ab"));
    assert!(!is_ancestor_or_self("/a/b", "/a"));
    assert!(is_ancestor_or_self("/", "/x/y"));
    assert!(!is_ancestor_or_self("/", "@introduceDomain"));
    assert!(is_ancestor_or_self("@releaseDomain", "@releaseDomain/3"));
    assert_eq!(depth_below("/a", "/a"), Some(0));
    assert_eq!(depth_below("/a", "/a/b/c"), Some(2));
    assert_eq!(depth_below("/", "/a"), Some(1));
    assert_eq!(depth_below("/", "/"), Some(0));
    assert_eq!(depth_below("/a/b", "/a"), None);
}
