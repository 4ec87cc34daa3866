//! `request_checks::check` on arbitrary raw request headers: never panics, and refuses what it
//! documents it refuses (oversized sections, bare LF).
#![no_main]

use faultline::FailureKind;
use faultline::internals::request_checks::{MAX_HEADER_BYTES, check};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let verdict = check(data);
    if data.len() > MAX_HEADER_BYTES {
        assert_eq!(verdict, Some(FailureKind::HttpRequestHeaderSectionSize));
    }
    let bare_lf = data
        .iter()
        .enumerate()
        .any(|(i, b)| *b == b'\n' && (i == 0 || data[i - 1] != b'\r'));
    if bare_lf {
        assert!(verdict.is_some(), "bare LF accepted: {data:?}");
    }
});
