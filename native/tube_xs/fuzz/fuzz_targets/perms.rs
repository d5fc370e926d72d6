//! Permission parsing on arbitrary payloads: whatever parses re-encodes to the same list.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tube_xs::perms::PermList;
use tube_xs::wire::split_fields;

fuzz_target!(|data: &[u8]| {
    if let Ok(l) = PermList::parse(&split_fields(data)) {
        assert_eq!(PermList::parse(&split_fields(&l.to_wire())), Ok(l.clone()));
        for id in [0, 1, l.owner()] {
            let _ = (l.can_read(id), l.can_write(id));
        }
    }
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = PermList::parse_str(s);
    }
});
