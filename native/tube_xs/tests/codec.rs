//! Codec: round trips, streams cut at every byte and in random chunks, hostile headers.

use proptest::prelude::*;
use tube_xs::wire::{Decoder, Header, Message, MsgType, WireError, HEADER_LEN, PAYLOAD_MAX};

fn sample_messages() -> Vec<Message> {
    vec![
        Message::new(MsgType::Read, 1, 0, b"/local/domain/0/name\0".to_vec()),
        Message::new(MsgType::Write, 2, 7, b"/a/b\0value with \0 nul".to_vec()),
        Message::new(MsgType::TransactionStart, 3, 0, b"\0".to_vec()),
        Message::new(MsgType::Directory, 4, 0, Vec::new()),
        Message::watch_event("/local/domain/3/data", "tok"),
        Message::error(5, 0, tube_xs::XsError::Enoent),
        Message::new(MsgType::Write, 6, 0, vec![0xff; PAYLOAD_MAX]),
        Message {
            ty: 99,
            req_id: u32::MAX,
            tx_id: u32::MAX,
            payload: b"x".to_vec(),
        },
    ]
}

fn stream(msgs: &[Message]) -> Vec<u8> {
    let mut out = Vec::new();
    for m in msgs {
        m.encode(&mut out);
    }
    out
}

fn drain(d: &mut Decoder, into: &mut Vec<Message>) {
    while let Some(m) = d.next().expect("valid stream") {
        into.push(m);
    }
}

#[test]
fn whole_stream_at_once() {
    let msgs = sample_messages();
    let mut d = Decoder::new();
    d.push(&stream(&msgs));
    let mut got = Vec::new();
    drain(&mut d, &mut got);
    assert_eq!(got, msgs);
    assert_eq!(d.buffered(), 0);
}

#[test]
fn byte_by_byte() {
    let msgs = sample_messages();
    let mut d = Decoder::new();
    let mut got = Vec::new();
    for b in stream(&msgs) {
        d.push(&[b]);
        drain(&mut d, &mut got);
    }
    assert_eq!(got, msgs);
}

#[test]
fn encode_writes_header_then_payload() {
    let m = Message::new(MsgType::Mkdir, 0x11, 0x22, b"/x\0".to_vec());
    let bytes = m.to_bytes();
    let h = Header::parse(bytes[..HEADER_LEN].try_into().unwrap());
    assert_eq!(
        h,
        Header {
            ty: 12,
            req_id: 0x11,
            tx_id: 0x22,
            len: 3
        }
    );
    assert_eq!(h.to_bytes(), bytes[..HEADER_LEN]);
}

#[test]
fn oversize_after_valid_messages_returns_them_first() {
    let msgs = sample_messages();
    let mut bytes = stream(&msgs[..2]);
    bytes.extend_from_slice(
        &Header {
            ty: 2,
            req_id: 9,
            tx_id: 0,
            len: PAYLOAD_MAX as u32 + 1,
        }
        .to_bytes(),
    );
    let mut d = Decoder::new();
    d.push(&bytes);
    assert_eq!(d.next().unwrap().as_ref(), Some(&msgs[0]));
    assert_eq!(d.next().unwrap().as_ref(), Some(&msgs[1]));
    assert!(matches!(d.next(), Err(WireError::Oversize(4097))));
    assert!(d.next().is_err(), "error is sticky");
}

#[test]
fn oversize_is_reported_before_payload_arrives() {
    // Only the header: the decoder must refuse without waiting for (or reserving) 4 GiB.
    let mut d = Decoder::new();
    d.push(
        &Header {
            ty: 11,
            req_id: 1,
            tx_id: 0,
            len: u32::MAX,
        }
        .to_bytes(),
    );
    assert_eq!(d.next(), Err(WireError::Oversize(u32::MAX)));
    assert_eq!(d.buffered(), 0);
    assert!(!WireError::Oversize(1).to_string().is_empty());
}

fn arb_message() -> impl Strategy<Value = Message> {
    (
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
        proptest::collection::vec(any::<u8>(), 0..=PAYLOAD_MAX),
    )
        .prop_map(|(ty, req_id, tx_id, payload)| Message {
            ty,
            req_id,
            tx_id,
            payload,
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn random_chunks_round_trip(
        msgs in proptest::collection::vec(arb_message(), 0..6),
        cuts in proptest::collection::vec(1usize..600, 1..40),
    ) {
        let bytes = stream(&msgs);
        let mut d = Decoder::new();
        let mut got = Vec::new();
        let mut pos = 0;
        let mut i = 0;
        while pos < bytes.len() {
            let n = cuts[i % cuts.len()].min(bytes.len() - pos);
            d.push(&bytes[pos..pos + n]);
            drain(&mut d, &mut got);
            pos += n;
            i += 1;
        }
        prop_assert_eq!(got, msgs);
        prop_assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn fields_join_round_trip(fields in proptest::collection::vec(
        proptest::collection::vec(1u8..=255, 0..20), 1..8)) {
        let refs: Vec<&[u8]> = fields.iter().map(Vec::as_slice).collect();
        let m = Message::new(MsgType::Write, 1, 0, tube_xs::wire::join_fields(&refs));
        prop_assert_eq!(m.fields(), refs);
    }
}
