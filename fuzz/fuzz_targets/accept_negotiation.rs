//! `error_page::negotiate` on arbitrary `Accept` bytes: never panics; no header, or a header
//! that is not UTF-8, gives plain text.
#![no_main]

use faultline::internals::error_page::{Format, negotiate};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let format = negotiate(Some(data));
    if std::str::from_utf8(data).is_err() {
        assert_eq!(format, Format::Text, "non-UTF-8 Accept {data:?}");
    }
    // Deterministic: the same header always picks the same format.
    assert_eq!(negotiate(Some(data)), format);
    assert_eq!(negotiate(None), Format::Text);
});
