//! `Proxy-Status` values for every failure kind and any origin status, with an arbitrary
//! `next-hop`: the value becomes a header, so it must be printable ASCII (no CR, LF or NUL),
//! and the `next-hop` sf-string must read back as the (filtered) backend name.
#![no_main]

use faultline::FailureKind;
use faultline::internals::error_page::{proxy_status_error, proxy_status_received};
use libfuzzer_sys::fuzz_target;

/// Header-safe: visible ASCII and space only (RFC 9110 field value, RFC 8941 sf-string).
fn check_value(value: &str, hop: Option<&str>) {
    assert!(
        !value.contains(['\r', '\n', '\0']),
        "CR/LF/NUL in Proxy-Status {value:?} (next_hop {hop:?})"
    );
    assert!(
        value.bytes().all(|b| b == b' ' || b.is_ascii_graphic()),
        "non-printable byte in Proxy-Status {value:?} (next_hop {hop:?})"
    );
    let Some(hop) = hop else {
        assert!(!value.contains("next-hop"), "{value:?}");
        return;
    };
    // The sf-string after `next-hop="` must unescape to the printable part of the name and end
    // the value: nothing in the name may close the string early.
    let (_, quoted) = value
        .split_once("; next-hop=\"")
        .unwrap_or_else(|| panic!("no next-hop in {value:?}"));
    let mut unescaped = String::new();
    let mut chars = quoted.chars();
    let mut closed = false;
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                let next = chars
                    .next()
                    .unwrap_or_else(|| panic!("dangling \\ in {value:?}"));
                assert!(matches!(next, '"' | '\\'), "bad escape in {value:?}");
                unescaped.push(next);
            }
            '"' => {
                closed = true;
                break;
            }
            c => unescaped.push(c),
        }
    }
    assert!(closed, "unterminated next-hop in {value:?}");
    assert_eq!(chars.as_str(), "", "text after next-hop in {value:?}");
    let expected: String = hop
        .chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .collect();
    assert_eq!(unescaped, expected, "next-hop of {hop:?} reads back wrong");
}

fuzz_target!(|data: &[u8]| {
    let (head, rest) = data.split_at(data.len().min(3));
    let mut head = head.to_vec();
    head.resize(3, 0);
    let kind = FailureKind::ALL[usize::from(head[0]) % FailureKind::ALL.len()];
    let status = u16::from_be_bytes([head[1], head[2]]);
    let hop = String::from_utf8_lossy(rest);
    for next_hop in [None, Some(hop.as_ref())] {
        check_value(&proxy_status_error(kind, next_hop), next_hop);
        check_value(&proxy_status_received(status, next_hop), next_hop);
    }
});
