//! Request ids: taken from a well-formed incoming `X-Request-Id`, generated otherwise.
//!
//! A client-supplied id is echoed into headers, logs and HTML pages, so it is accepted only when
//! it is short and made of characters that are inert in all three.

/// The header carrying the id, both ways.
pub(crate) const HEADER: &str = "x-request-id";

/// Longest id accepted from a client.
pub const MAX_LEN: usize = 128;

/// Returns the incoming id when it is well-formed: 1 to 128 of `A-Z a-z 0-9 - _ . : + / =`.
pub fn accept_incoming(value: &[u8]) -> Option<&str> {
    let ok = !value.is_empty()
        && value.len() <= MAX_LEN
        && value
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:+/=".contains(b));
    if ok {
        std::str::from_utf8(value).ok()
    } else {
        None
    }
}

/// A new random id: 32 lowercase hex digits. (Every request without an id of its own needs one:
/// the digits are written directly rather than through the formatting machinery.)
pub(crate) fn generate() -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let n: u128 = rand::random();
    let mut s = String::with_capacity(32);
    for byte in n.to_be_bytes() {
        s.push(char::from(HEX[usize::from(byte >> 4)]));
        s.push(char::from(HEX[usize::from(byte & 0xf)]));
    }
    s
}

/// The id for a request: the incoming one when well-formed, a new one otherwise.
pub fn for_request(incoming: Option<&[u8]>) -> String {
    incoming
        .and_then(accept_incoming)
        .map_or_else(generate, str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_only_inert_ids() {
        assert_eq!(accept_incoming(b"abc-123_x.y:z"), Some("abc-123_x.y:z"));
        assert_eq!(accept_incoming(b""), None);
        assert_eq!(accept_incoming(b"a b"), None);
        assert_eq!(accept_incoming(b"<script>"), None);
        assert_eq!(accept_incoming(b"a\r\nb"), None);
        assert_eq!(accept_incoming(b"\"q\""), None);
        assert_eq!(accept_incoming(&[b'a'; 128]).map(str::len), Some(128));
        assert_eq!(accept_incoming(&[b'a'; 129]), None);
        assert_eq!(accept_incoming("é".as_bytes()), None);
    }

    #[test]
    fn generated_ids_are_hex_and_distinct() {
        let a = generate();
        let b = generate();
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
        assert_eq!(for_request(Some(b"bad id")).len(), 32);
        assert_eq!(for_request(Some(b"good")), "good");
    }
}
