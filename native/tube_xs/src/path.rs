//! Xenstore path rules, as Xen's `docs/misc/xenstore.txt` and xenstored's `canonicalize()` state them.
//!
//! * Characters: ASCII letters and digits and `-/_@` only (so no `.`, space, or non-ASCII).
//! * Not empty; no `//`; no trailing `/` except the root `/` itself.
//! * A path not starting with `/` or `@` is relative to `/local/domain/<domid>`.
//! * Lengths: a relative path as sent is at most [`REL_PATH_MAX`] bytes, and the absolute result at most
//!   [`ABS_PATH_MAX`] bytes.
//! * Paths starting with `@` are special watch paths (`@introduceDomain`, `@releaseDomain`,
//!   `@releaseDomain/<domid>`); Xen accepts them only in `XS_WATCH`, `XS_UNWATCH` and the permission calls,
//!   so [`canonicalize`] refuses them and [`canonicalize_special`] accepts them.
//!
//! Xen's daemons also cap, per domain quota "path-max" (default 2048), the length of the part after
//! `/local/domain/<n>/` (or of the whole path elsewhere); [`quota_len`] computes that figure for a daemon that
//! wants the same quota.

use crate::wire::{XsError, ABS_PATH_MAX, REL_PATH_MAX};

/// Watch path fired when a domain is introduced.
pub const INTRODUCE_DOMAIN: &str = "@introduceDomain";
/// Watch path fired when a domain is released.
pub const RELEASE_DOMAIN: &str = "@releaseDomain";

/// True for the characters Xen allows in a path.
pub fn is_valid_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'/' | b'_' | b'@')
}

/// `/local/domain/<domid>`, the base of a domain's relative paths.
pub fn domain_path(domid: u32) -> String {
    format!("/local/domain/{domid}")
}

/// Validates `path` for a node operation (read, write, mkdir, ...) by domain `domid` and returns it absolute.
/// Special `@...` paths are refused with `EINVAL`.
pub fn canonicalize(domid: u32, path: &str) -> Result<String, XsError> {
    canonicalize_bytes(domid, path.as_bytes(), false)
}

/// As [`canonicalize`], but also accepts special `@...` paths (returned unchanged): for `XS_WATCH`,
/// `XS_UNWATCH`, `XS_GET_PERMS` and `XS_SET_PERMS`.
pub fn canonicalize_special(domid: u32, path: &str) -> Result<String, XsError> {
    canonicalize_bytes(domid, path.as_bytes(), true)
}

/// Validates a path field straight from a payload (any bytes; the NUL terminator already removed).
pub fn canonicalize_bytes(domid: u32, path: &[u8], allow_special: bool) -> Result<String, XsError> {
    if path.is_empty() || !path.iter().all(|&c| is_valid_char(c)) {
        return Err(XsError::Einval);
    }
    // All characters are ASCII, so this conversion cannot fail.
    let path = std::str::from_utf8(path).map_err(|_| XsError::Einval)?;
    let abs = match path.as_bytes()[0] {
        b'@' if !allow_special => return Err(XsError::Einval),
        b'/' | b'@' => path.to_owned(),
        _ if path.len() > REL_PATH_MAX => return Err(XsError::Einval),
        _ => format!("{}/{path}", domain_path(domid)),
    };
    let trailing_slash = abs.len() > 1 && abs.ends_with('/');
    if trailing_slash || abs.contains("//") || abs.len() > ABS_PATH_MAX {
        return Err(XsError::Einval);
    }
    Ok(abs)
}

/// True if `path` is a special watch path (starts with `@`).
pub fn is_special(path: &str) -> bool {
    path.starts_with('@')
}

/// The parent of a canonical path: `"/a/b"` -> `"/a"`, `"/a"` -> `"/"`, `"/"` -> `None`. For special paths
/// `"@releaseDomain/3"` -> `"@releaseDomain"` and `"@releaseDomain"` -> `None`. Relative paths have no parent.
pub fn parent(path: &str) -> Option<&str> {
    let cut = path.rfind('/')?;
    match (cut, path.as_bytes()[0]) {
        (0, b'/') if path.len() > 1 => Some("/"),
        (0, _) => None,
        (_, b'/' | b'@') => Some(&path[..cut]),
        _ => None,
    }
}

/// The last component of a canonical path (`"/a/b"` -> `"b"`, `"/"` -> `""`).
pub fn basename(path: &str) -> &str {
    path.rfind('/').map_or(path, |i| &path[i + 1..])
}

/// True if `anc` is `path` or one of its ancestors, component-wise: `"/a"` covers `"/a/b"` but not `"/ab"`,
/// and `"/"` covers every absolute path (but no special path).
pub fn is_ancestor_or_self(anc: &str, path: &str) -> bool {
    depth_below(anc, path).is_some()
}

/// How many components `path` lies below `anc` (0 if equal), or `None` if `anc` is not an ancestor or self.
/// This is the figure an `XS_WATCH` `<depth>` is compared with.
pub fn depth_below(anc: &str, path: &str) -> Option<usize> {
    if anc == path {
        return Some(0);
    }
    let rest = if anc == "/" {
        path.strip_prefix('/')?
    } else {
        path.strip_prefix(anc)?.strip_prefix('/')?
    };
    Some(rest.split('/').count())
}

/// The length Xen's "path-max" quota is checked against: the part after `/local/domain/<n>/` (up to five
/// digits, as xenstored parses it) for paths below a domain's home, the whole length otherwise.
pub fn quota_len(abs: &str) -> usize {
    let Some(rest) = abs.strip_prefix("/local/domain/") else {
        return abs.len();
    };
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    match rest.as_bytes().get(digits) {
        Some(b'/') if (1..=5).contains(&digits) => rest.len() - digits - 1,
        _ => abs.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_resolves_against_domain_home() {
        assert_eq!(
            canonicalize(5, "data/tube").unwrap(),
            "/local/domain/5/data/tube"
        );
        assert_eq!(canonicalize(0, "x").unwrap(), "/local/domain/0/x");
    }

    #[test]
    fn parent_of_special_and_relative() {
        assert_eq!(parent("@releaseDomain/3"), Some("@releaseDomain"));
        assert_eq!(parent("@releaseDomain"), None);
        assert_eq!(parent("a/b"), None);
        assert_eq!(parent(""), None);
    }

    #[test]
    fn quota_len_counts_after_domain_home() {
        assert_eq!(quota_len("/local/domain/12/abc"), 3);
        assert_eq!(quota_len("/local/domain/12"), 16);
        assert_eq!(quota_len("/local/domain/123456/a"), 22);
        assert_eq!(quota_len("/vm/abc"), 7);
    }
}
