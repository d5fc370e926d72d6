//! Incremental decoder: bytes in, whole messages out.

use super::{Header, Message, HEADER_LEN, PAYLOAD_MAX};

/// A framing error. The stream cannot be resynchronised after one, so the connection must be dropped; the
/// decoder keeps returning the same error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WireError {
    /// A header announced a payload longer than [`PAYLOAD_MAX`]; the value is the announced length.
    Oversize(u32),
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WireError::Oversize(n) => write!(f, "payload length {n} exceeds {PAYLOAD_MAX}"),
        }
    }
}

impl std::error::Error for WireError {}

/// Decodes a byte stream into messages: [`push`](Decoder::push) what arrived, then call
/// [`next`](Decoder::next) until it returns `Ok(None)`.
///
/// The announced length is checked before anything is allocated for the payload, so a hostile header costs
/// nothing; a message never needs more than `HEADER_LEN + PAYLOAD_MAX` bytes. Unknown message types are
/// not a framing error: they decode and the receiver answers them (the daemon with `ENOSYS`).
#[derive(Debug, Default)]
pub struct Decoder {
    /// Bytes received and not yet consumed are `buf[start..]`.
    buf: Vec<u8>,
    /// Read offset into `buf`, in `0..=buf.len()`.
    start: usize,
    /// Set on the first framing error; sticky.
    failed: Option<WireError>,
}

impl Decoder {
    /// An empty decoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends received bytes. After an error they are discarded.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.failed.is_some() {
            return;
        }
        self.compact();
        self.buf.extend_from_slice(bytes);
    }

    /// Number of received bytes not yet returned as part of a message.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// The next whole message, `Ok(None)` if more bytes are needed, or the (sticky) framing error.
    // Not an Iterator: the result is a Result over an Option and the decoder is refilled between calls.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Result<Option<Message>, WireError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        debug_assert!(self.start <= self.buf.len());
        let avail = &self.buf[self.start..];
        let Some(head) = avail.first_chunk::<HEADER_LEN>() else {
            return Ok(None);
        };
        let h = Header::parse(head);
        if h.len as usize > PAYLOAD_MAX {
            self.fail(WireError::Oversize(h.len));
            return Err(WireError::Oversize(h.len));
        }
        let total = HEADER_LEN + h.len as usize;
        if avail.len() < total {
            return Ok(None);
        }
        let payload = avail[HEADER_LEN..total].to_vec();
        self.start += total;
        Ok(Some(Message {
            ty: h.ty,
            req_id: h.req_id,
            tx_id: h.tx_id,
            payload,
        }))
    }

    fn fail(&mut self, e: WireError) {
        self.failed = Some(e);
        self.buf = Vec::new();
        self.start = 0;
    }

    /// Drops consumed bytes so the buffer does not grow with the stream's total length.
    fn compact(&mut self) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::MsgType;

    #[test]
    fn partial_header_and_payload_wait_for_more() {
        let m = Message::new(MsgType::Write, 1, 2, b"/a\0xyz".to_vec());
        let bytes = m.to_bytes();
        let mut d = Decoder::new();
        d.push(&bytes[..10]);
        assert_eq!(d.next(), Ok(None));
        d.push(&bytes[10..HEADER_LEN + 2]);
        assert_eq!(d.next(), Ok(None));
        d.push(&bytes[HEADER_LEN + 2..]);
        assert_eq!(d.next(), Ok(Some(m)));
        assert_eq!(d.next(), Ok(None));
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn oversize_is_sticky_and_allocates_nothing() {
        let h = Header {
            ty: 2,
            req_id: 1,
            tx_id: 0,
            len: u32::MAX,
        };
        let mut d = Decoder::new();
        d.push(&h.to_bytes());
        assert_eq!(d.next(), Err(WireError::Oversize(u32::MAX)));
        assert_eq!(d.buf.capacity(), 0);
        d.push(&Message::new(MsgType::Read, 1, 0, vec![]).to_bytes());
        assert_eq!(d.next(), Err(WireError::Oversize(u32::MAX)));
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn limit_is_inclusive() {
        let ok = Message::new(MsgType::Write, 1, 0, vec![b'x'; PAYLOAD_MAX]);
        let mut d = Decoder::new();
        d.push(&ok.to_bytes());
        assert_eq!(d.next(), Ok(Some(ok)));
        let bad = Header {
            ty: 11,
            req_id: 1,
            tx_id: 0,
            len: PAYLOAD_MAX as u32 + 1,
        };
        d.push(&bad.to_bytes());
        assert_eq!(d.next(), Err(WireError::Oversize(PAYLOAD_MAX as u32 + 1)));
    }

    #[test]
    fn unknown_types_decode() {
        let m = Message {
            ty: 20,
            req_id: 4,
            tx_id: 0,
            payload: b"x\0".to_vec(),
        };
        let mut d = Decoder::new();
        d.push(&m.to_bytes());
        assert_eq!(d.next(), Ok(Some(m)));
    }
}
