//! `Config::from_yaml` on arbitrary text: never panics, and every error it returns says what is
//! wrong (a non-empty message, with at least one field error when the file is invalid).
#![no_main]

use faultline::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Err(e) = Config::from_yaml(&text) {
        let shown = e.to_string();
        assert!(!shown.trim().is_empty(), "empty error for {text:?}: {e:?}");
        assert!(!e.field_errors().is_empty(), "no field error: {e:?}");
        for field in e.field_errors() {
            assert!(!field.message.is_empty(), "empty message: {field:?}");
        }
    }
});
