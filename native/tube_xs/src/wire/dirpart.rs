//! `XS_DIRECTORY_PART`: a child list longer than one payload, read in pieces.
//!
//! Request `<path>|<offset>|`; reply `<gencnt>|<child>|*`, where `<offset>` is a byte offset into the node's
//! whole child list (every name followed by a NUL) and `<gencnt>` the node's generation count, which lets the
//! client restart when the node changed between pieces. The piece that reaches the end of the list carries one
//! extra NUL; an offset at or past the end gives `<gencnt>|` plus that NUL.

use super::PAYLOAD_MAX;

/// Builds the reply payload for `XS_DIRECTORY_PART` as Xen's xenstored does: as many whole names from
/// `offset` as fit in one payload. `children` is the full child list, each name followed by a NUL.
pub fn directory_part_reply(generation: u64, children: &[u8], offset: usize) -> Vec<u8> {
    let gen = generation.to_string();
    let gen_len = gen.len() + 1;
    let mut out = Vec::with_capacity(PAYLOAD_MAX);
    out.extend_from_slice(gen.as_bytes());
    out.push(0);
    if offset >= children.len() {
        out.push(0);
        return out;
    }
    let max = PAYLOAD_MAX - gen_len - 1;
    let rest = &children[offset..];
    let mut len = 0;
    while len < rest.len() {
        let name_len = rest[len..]
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(rest.len() - len);
        if len + name_len >= max {
            break;
        }
        len = (len + name_len + 1).min(rest.len());
    }
    out.extend_from_slice(&rest[..len]);
    if len == rest.len() {
        out.push(0);
    }
    out
}

/// One decoded `XS_DIRECTORY_PART` reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirectoryPart<'a> {
    /// The node's generation count, as sent (decimal text).
    pub generation: &'a [u8],
    /// The names in this piece, each followed by a NUL, without the end marker.
    pub names: &'a [u8],
    /// True if this piece reaches the end of the child list.
    pub complete: bool,
}

impl<'a> DirectoryPart<'a> {
    /// Splits a reply payload; `None` if it has no generation field.
    pub fn parse(payload: &'a [u8]) -> Option<DirectoryPart<'a>> {
        let nul = payload.iter().position(|&b| b == 0)?;
        let generation = &payload[..nul];
        let rest = &payload[nul + 1..];
        // The end marker is an empty name: either the piece is just "\0", or it ends in "\0\0".
        let complete = rest.is_empty() || rest == [0] || rest.ends_with(&[0, 0]);
        let names = if complete && !rest.is_empty() {
            &rest[..rest.len() - 1]
        } else {
            rest
        };
        Some(DirectoryPart {
            generation,
            names,
            complete,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(names: &[String]) -> Vec<u8> {
        names.iter().flat_map(|n| n.bytes().chain([0])).collect()
    }

    #[test]
    fn small_list_fits_in_one_piece() {
        let children = b"a\0bc\0".to_vec();
        let r = directory_part_reply(7, &children, 0);
        assert_eq!(r, b"7\0a\0bc\0\0");
        let p = DirectoryPart::parse(&r).unwrap();
        assert_eq!(
            p,
            DirectoryPart {
                generation: b"7",
                names: b"a\0bc\0",
                complete: true
            }
        );
    }

    #[test]
    fn offset_past_end_gives_empty_complete_piece() {
        let r = directory_part_reply(3, b"a\0", 2);
        assert_eq!(r, b"3\0\0");
        let p = DirectoryPart::parse(&r).unwrap();
        assert_eq!((p.names, p.complete), (&b""[..], true));
        let empty = directory_part_reply(0, b"", 0);
        assert!(DirectoryPart::parse(&empty).unwrap().complete);
    }

    #[test]
    fn long_list_reassembles_from_pieces() {
        let names: Vec<String> = (0..2000).map(|i| format!("child-{i}")).collect();
        let children = list(&names);
        let mut got = Vec::new();
        let mut pieces = 0;
        loop {
            let r = directory_part_reply(42, &children, got.len());
            assert!(r.len() <= PAYLOAD_MAX);
            let p = DirectoryPart::parse(&r).unwrap();
            assert_eq!(p.generation, b"42");
            got.extend_from_slice(p.names);
            pieces += 1;
            if p.complete {
                break;
            }
        }
        assert!(pieces > 1);
        assert_eq!(got, children);
    }

    #[test]
    fn parse_rejects_missing_generation() {
        assert_eq!(DirectoryPart::parse(b""), None);
        assert_eq!(DirectoryPart::parse(b"12"), None);
    }
}
