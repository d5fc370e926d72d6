//! The Xenstore wire protocol of Xen's `xs_wire.h`: message types, the 16-byte header, messages and their
//! NUL-separated fields, error strings, limits, and an incremental stream decoder.

mod decoder;
mod dirpart;
mod msg_type;
mod xs_error;

pub use decoder::{Decoder, WireError};
pub use dirpart::{directory_part_reply, DirectoryPart};
pub use msg_type::MsgType;
pub use xs_error::XsError;

/// Size of [`Header`] on the wire: four `u32` in native byte order (`struct xsd_sockmsg`).
pub const HEADER_LEN: usize = 16;
/// Largest payload in either direction (`XENSTORE_PAYLOAD_MAX`); a peer that exceeds it is dropped.
pub const PAYLOAD_MAX: usize = 4096;
/// Longest absolute path (`XENSTORE_ABS_PATH_MAX`).
pub const ABS_PATH_MAX: usize = 3072;
/// Longest relative path (`XENSTORE_REL_PATH_MAX`).
pub const REL_PATH_MAX: usize = 2048;
/// Number of message type values, valid or not, below [`MsgType::Invalid`] (`XS_TYPE_COUNT`).
pub const TYPE_COUNT: u32 = 27;

/// The header preceding every message (`struct xsd_sockmsg`). `ty` stays a raw `u32` so that unknown types
/// survive decoding and can be answered with `ENOSYS`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Message type, see [`MsgType`].
    pub ty: u32,
    /// Request id chosen by the client, echoed in the reply; 0 in watch events.
    pub req_id: u32,
    /// Transaction id, 0 outside a transaction.
    pub tx_id: u32,
    /// Payload length in bytes.
    pub len: u32,
}

impl Header {
    /// Reads a header from its wire form (native byte order, as Xen's C structs).
    pub fn parse(b: &[u8; HEADER_LEN]) -> Header {
        let word =
            |i: usize| u32::from_ne_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]]);
        Header {
            ty: word(0),
            req_id: word(1),
            tx_id: word(2),
            len: word(3),
        }
    }

    /// The wire form of this header.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        for (i, w) in [self.ty, self.req_id, self.tx_id, self.len]
            .into_iter()
            .enumerate()
        {
            out[4 * i..4 * i + 4].copy_from_slice(&w.to_ne_bytes());
        }
        out
    }

    /// The message type, if `ty` is one Xen defines.
    pub fn msg_type(&self) -> Option<MsgType> {
        MsgType::from_u32(self.ty)
    }
}

/// One whole message: header fields plus payload (`len` is the payload's length).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// Raw message type, see [`MsgType`].
    pub ty: u32,
    /// Request id, echoed in the reply.
    pub req_id: u32,
    /// Transaction id, 0 outside a transaction.
    pub tx_id: u32,
    /// Payload bytes, usually NUL-terminated strings.
    pub payload: Vec<u8>,
}

impl Message {
    /// A message of a known type.
    pub fn new(ty: MsgType, req_id: u32, tx_id: u32, payload: Vec<u8>) -> Message {
        Message {
            ty: ty as u32,
            req_id,
            tx_id,
            payload,
        }
    }

    /// An `XS_ERROR` reply carrying the error's name, e.g. `"EINVAL\0"`.
    pub fn error(req_id: u32, tx_id: u32, e: XsError) -> Message {
        let mut payload = e.as_str().as_bytes().to_vec();
        payload.push(0);
        Message::new(MsgType::Error, req_id, tx_id, payload)
    }

    /// An `XS_WATCH_EVENT` for `path` and `token` (payload `path\0token\0`, ids 0).
    pub fn watch_event(path: &str, token: &str) -> Message {
        Message::new(
            MsgType::WatchEvent,
            0,
            0,
            join_fields(&[path.as_bytes(), token.as_bytes()]),
        )
    }

    /// The message type, if `ty` is one Xen defines.
    pub fn msg_type(&self) -> Option<MsgType> {
        MsgType::from_u32(self.ty)
    }

    /// The header for this message. A payload longer than `u32::MAX` cannot be built through [`Decoder`];
    /// its length saturates here and any peer rejects it as oversize.
    pub fn header(&self) -> Header {
        let len = u32::try_from(self.payload.len()).unwrap_or(u32::MAX);
        Header {
            ty: self.ty,
            req_id: self.req_id,
            tx_id: self.tx_id,
            len,
        }
    }

    /// Appends header and payload to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.reserve(HEADER_LEN + self.payload.len());
        out.extend_from_slice(&self.header().to_bytes());
        out.extend_from_slice(&self.payload);
    }

    /// Header and payload as a fresh buffer.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }

    /// NUL-separated fields of the payload. A trailing NUL ends the last field, it is not an extra empty one:
    /// `"a\0b\0"` and `"a\0b"` both give `["a", "b"]`, `""` gives `[]` and `"\0"` gives `[""]`.
    pub fn fields(&self) -> Vec<&[u8]> {
        split_fields(&self.payload)
    }
}

/// Splits a payload into NUL-separated fields, as [`Message::fields`].
pub fn split_fields(payload: &[u8]) -> Vec<&[u8]> {
    let body = payload.strip_suffix(&[0]).unwrap_or(payload);
    if payload.is_empty() {
        return Vec::new();
    }
    body.split(|&b| b == 0).collect()
}

/// Joins fields into a payload, each followed by a NUL (`"a\0b\0"`).
pub fn join_fields(fields: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(fields.iter().map(|f| f.len() + 1).sum());
    for f in fields {
        out.extend_from_slice(f);
        out.push(0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_is_native_endian() {
        let h = Header {
            ty: 2,
            req_id: 0x0102_0304,
            tx_id: 7,
            len: 4096,
        };
        let b = h.to_bytes();
        assert_eq!(&b[4..8], &0x0102_0304u32.to_ne_bytes());
        assert_eq!(Header::parse(&b), h);
    }

    #[test]
    fn fields_follow_trailing_nul_rule() {
        assert_eq!(split_fields(b""), Vec::<&[u8]>::new());
        assert_eq!(split_fields(b"\0"), vec![&b""[..]]);
        assert_eq!(split_fields(b"a\0b\0"), vec![&b"a"[..], b"b"]);
        assert_eq!(split_fields(b"a\0b"), vec![&b"a"[..], b"b"]);
        assert_eq!(split_fields(b"a\0\0"), vec![&b"a"[..], b""]);
        assert_eq!(split_fields(b"\0\0"), vec![&b""[..], b""]);
    }

    #[test]
    fn join_then_split_round_trips() {
        let f: Vec<&[u8]> = vec![b"/local/domain/1", b"", b"tok"];
        assert_eq!(split_fields(&join_fields(&f)), f);
    }

    #[test]
    fn error_message_carries_name() {
        let m = Message::error(9, 3, XsError::Eacces);
        assert_eq!(m.msg_type(), Some(MsgType::Error));
        assert_eq!((m.req_id, m.tx_id), (9, 3));
        assert_eq!(m.payload, b"EACCES\0");
    }

    #[test]
    fn encode_prefixes_header() {
        let m = Message::new(MsgType::Read, 5, 0, b"/a\0".to_vec());
        let b = m.to_bytes();
        assert_eq!(b.len(), HEADER_LEN + 3);
        let h = Header::parse(b[..HEADER_LEN].try_into().unwrap());
        assert_eq!(
            h,
            Header {
                ty: 2,
                req_id: 5,
                tx_id: 0,
                len: 3
            }
        );
        assert_eq!(&b[HEADER_LEN..], b"/a\0");
    }

    #[test]
    fn watch_event_payload_is_path_then_token() {
        let m = Message::watch_event("/a/b", "tok");
        assert_eq!(m.payload, b"/a/b\0tok\0");
        assert_eq!((m.ty, m.req_id, m.tx_id), (15, 0, 0));
    }
}
