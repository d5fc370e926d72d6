//! Bounded fuzzing of everything that reads untrusted bytes: the decoder, permission parsing and path
//! canonicalisation must return values, never panic, on arbitrary input.

use proptest::prelude::*;
use tube_xs::path::{canonicalize_bytes, is_valid_char};
use tube_xs::perms::PermList;
use tube_xs::wire::{split_fields, Decoder, DirectoryPart, Header, HEADER_LEN, PAYLOAD_MAX};

/// Bytes biased towards plausible headers, so the fuzz reaches the payload paths too.
fn stream_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..2000),
        (
            any::<u32>(),
            any::<u32>(),
            0u32..5000,
            proptest::collection::vec(any::<u8>(), 0..5000)
        )
            .prop_map(|(ty, req, len, tail)| {
                let mut b = Header {
                    ty: ty % 30,
                    req_id: req,
                    tx_id: 0,
                    len,
                }
                .to_bytes()
                .to_vec();
                b.extend_from_slice(&tail);
                b
            }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn decoder_never_panics(bytes in stream_bytes(), chunk in 1usize..64) {
        let mut d = Decoder::new();
        let mut consumed = 0usize;
        for piece in bytes.chunks(chunk) {
            d.push(piece);
            loop {
                match d.next() {
                    Ok(Some(m)) => {
                        prop_assert!(m.payload.len() <= PAYLOAD_MAX);
                        consumed += HEADER_LEN + m.payload.len();
                        let _ = m.fields();
                        let _ = DirectoryPart::parse(&m.payload);
                    }
                    Ok(None) => break,
                    Err(_) => break,
                }
            }
        }
        prop_assert!(consumed <= bytes.len());
    }

    #[test]
    fn perms_parse_never_panics(payload in proptest::collection::vec(any::<u8>(), 0..64)) {
        let fields = split_fields(&payload);
        if let Ok(l) = PermList::parse(&fields) {
            // Whatever parses re-encodes to an equivalent list.
            let wire = l.to_wire();
            prop_assert_eq!(PermList::parse(&split_fields(&wire)), Ok(l));
        }
        let _ = PermList::parse_str(&String::from_utf8_lossy(&payload));
    }

    #[test]
    fn canonicalize_never_panics(path in proptest::collection::vec(any::<u8>(), 0..80),
                                 domid in any::<u32>(), special in any::<bool>()) {
        check_canonical(domid, &path, special)?;
    }

    #[test]
    fn canonicalize_on_valid_alphabet(path in "[a-zA-Z0-9/@_-]{0,40}", domid in 0u32..70000,
                                      special in any::<bool>()) {
        check_canonical(domid, path.as_bytes(), special)?;
    }
}

/// Whatever `canonicalize_bytes` accepts obeys every path rule and is a fixed point.
fn check_canonical(domid: u32, path: &[u8], special: bool) -> Result<(), TestCaseError> {
    if let Ok(abs) = canonicalize_bytes(domid, path, special) {
        prop_assert!(abs.bytes().all(is_valid_char));
        prop_assert!(abs.starts_with('/') || (special && abs.starts_with('@')));
        prop_assert!(!abs.contains("//"));
        prop_assert!(abs == "/" || !abs.ends_with('/'));
        prop_assert_eq!(
            canonicalize_bytes(domid, abs.as_bytes(), special),
            Ok(abs.clone())
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// A daemon that answers a request with arbitrary bytes and hangs up: the client returns a value.
    #[test]
    fn client_survives_arbitrary_replies(reply in stream_bytes()) {
        use std::io::{Read, Write};
        let (a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
        let daemon = std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            let _ = b.read(&mut buf);
            let _ = b.write_all(&reply);
        });
        let xs = tube_xs::client::Client::from_stream(a).unwrap();
        let _ = xs.read(0, "/a");
        let _ = xs.events().try_recv();
        daemon.join().unwrap();
    }
}
