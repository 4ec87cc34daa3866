//! Request ids from arbitrary `X-Request-Id` bytes: an accepted id is the input, byte for byte;
//! every id (accepted or generated) is non-empty visible ASCII, so it is safe in a header, a log
//! line and an HTML page.
#![no_main]

use faultline::internals::request_id::{MAX_LEN, accept_incoming, for_request};
use libfuzzer_sys::fuzz_target;

fn check_id(id: &str, input: &[u8]) {
    assert!(!id.is_empty(), "empty id for {input:?}");
    assert!(
        id.bytes().all(|b| b.is_ascii_graphic()),
        "id {id:?} (input {input:?}) has a byte outside visible ASCII"
    );
    assert!(!id.contains(['\r', '\n']), "CR/LF in id {id:?}");
}

fuzz_target!(|data: &[u8]| {
    let accepted = accept_incoming(data);
    if let Some(id) = accepted {
        assert_eq!(id.as_bytes(), data, "accepted id differs from the input");
        assert!(id.len() <= MAX_LEN, "accepted an id of {} bytes", id.len());
        check_id(id, data);
    }
    let id = for_request(Some(data));
    check_id(&id, data);
    match accepted {
        Some(incoming) => assert_eq!(id, incoming, "for_request dropped a valid id"),
        None => assert!(
            id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
            "generated id {id:?} is not 32 lowercase hex digits"
        ),
    }
    check_id(&for_request(None), b"");
});
