//! Path canonicalisation on arbitrary bytes: an accepted path obeys every rule, and canonicalising it
//! again changes nothing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tube_xs::path::{canonicalize_bytes, is_valid_char, parent};

fuzz_target!(|data: &[u8]| {
    let Some((&flags, path)) = data.split_first() else {
        return;
    };
    let special = flags & 1 == 1;
    let domid = u32::from(flags >> 1);
    if let Ok(abs) = canonicalize_bytes(domid, path, special) {
        assert!(abs.bytes().all(is_valid_char));
        assert!(!abs.contains("//"));
        assert!(abs == "/" || !abs.ends_with('/'));
        assert_eq!(
            canonicalize_bytes(domid, abs.as_bytes(), special).as_deref(),
            Ok(abs.as_str())
        );
        let _ = parent(&abs);
    }
});
