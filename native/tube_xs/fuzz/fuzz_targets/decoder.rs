//! The stream decoder on arbitrary bytes fed in arbitrary chunks: every message it returns is within the
//! limits and re-encodes to the bytes it came from.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tube_xs::wire::{Decoder, DirectoryPart, HEADER_LEN, PAYLOAD_MAX};

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, bytes)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk).max(1);
    let mut d = Decoder::new();
    let mut consumed = 0;
    for piece in bytes.chunks(chunk) {
        d.push(piece);
        while let Ok(Some(m)) = d.next() {
            assert!(m.payload.len() <= PAYLOAD_MAX);
            let enc = m.to_bytes();
            assert_eq!(&bytes[consumed..consumed + enc.len()], &enc[..]);
            consumed += HEADER_LEN + m.payload.len();
            let _ = m.fields();
            let _ = DirectoryPart::parse(&m.payload);
        }
    }
});
