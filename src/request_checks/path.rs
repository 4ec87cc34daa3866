//! The request path a route is chosen on, and the one the backend gets: normalised, so that a
//! path prefix is a boundary whatever the origin does with the path afterwards.
//!
//! An origin that decodes `%2e%2e` or resolves `..` would otherwise serve `/public/%2e%2e/secret`
//! as `/secret` after faultline matched it against `/public`. So the path is normalised as RFC
//! 3986 says (percent-decoding of unreserved characters only, §6.2.2.2, then dot-segment
//! removal, §5.2.4) before routing, and the normalised path is what is forwarded; the query is
//! left as it came.
//!
//! What has no single reading is refused instead: an encoded `/` (`%2F`) or `\` (`%5C`), a raw
//! `\`, a control character (raw or encoded), a broken escape, and dot-segments that climb above
//! the root. Refusing `%2F` everywhere is a choice: an origin may or may not decode it, so
//! forwarding it unchanged leaves the prefix check open to whichever reading the origin takes.
//!
//! Most paths have none of this: the check is one pass over the bytes, and it allocates only
//! when there is something to rewrite.

/// Why a path is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// `%2F`: an origin may read it as a segment separator, or not.
    EncodedSlash,
    /// A `\`, raw or `%5C`: some servers take it for `/`.
    Backslash,
    /// A control character, raw or percent-encoded (`%00` …).
    Control,
    /// A `%` not followed by two hex digits.
    BadEscape,
    /// More `..` segments than there are segments to remove.
    AboveRoot,
}

impl std::fmt::Display for PathError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PathError::EncodedSlash => "an encoded slash in the path",
            PathError::Backslash => "a backslash in the path",
            PathError::Control => "a control character in the path",
            PathError::BadEscape => "a broken percent-escape in the path",
            PathError::AboveRoot => "a path that climbs above the root",
        })
    }
}

impl std::error::Error for PathError {}

/// The normalised form of `path` (the path alone, without the query), or `None` when it is
/// already normal. Paths not starting with `/` (`*`, authority-form) are only checked for
/// control characters.
pub fn normalize(path: &[u8]) -> Result<Option<Vec<u8>>, PathError> {
    if !needs_work(path)? || path.first() != Some(&b'/') {
        return Ok(None);
    }
    let decoded = decode_unreserved(path)?;
    let normal = remove_dot_segments(&decoded)?;
    Ok((normal != path).then_some(normal))
}

/// The one pass every request pays for: refuses raw backslashes and control characters, and
/// says whether there is an escape or a dot-segment to deal with.
fn needs_work(path: &[u8]) -> Result<bool, PathError> {
    let mut work = false;
    for (i, &b) in path.iter().enumerate() {
        match b {
            0..=0x1f | 0x7f => return Err(PathError::Control),
            b'\\' => return Err(PathError::Backslash),
            b'%' => work = true,
            b'.' if i > 0 && path[i - 1] == b'/' => {
                // A segment of "." or "..".
                let rest = &path[i + 1..];
                let dot_segment = match rest.first() {
                    None | Some(b'/') => true,
                    Some(b'.') => matches!(rest.get(1), None | Some(b'/')),
                    _ => false,
                };
                work |= dot_segment;
            }
            _ => {}
        }
    }
    Ok(work)
}

/// Decodes the percent-escapes of unreserved characters (RFC 3986 §2.3) and keeps every other
/// escape as it came, after refusing those that would change how the path splits.
fn decode_unreserved(path: &[u8]) -> Result<Vec<u8>, PathError> {
    let mut out = Vec::with_capacity(path.len());
    let mut i = 0;
    while i < path.len() {
        let b = path[i];
        if b != b'%' {
            out.push(b);
            i += 1;
            continue;
        }
        let (Some(hi), Some(lo)) = (
            path.get(i + 1).and_then(|h| hex(*h)),
            path.get(i + 2).and_then(|l| hex(*l)),
        ) else {
            return Err(PathError::BadEscape);
        };
        let decoded = hi << 4 | lo;
        match decoded {
            b'/' => return Err(PathError::EncodedSlash),
            b'\\' => return Err(PathError::Backslash),
            0..=0x1f | 0x7f => return Err(PathError::Control),
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(decoded)
            }
            _ => out.extend_from_slice(&path[i..i + 3]),
        }
        i += 3;
    }
    Ok(out)
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// RFC 3986 §5.2.4 on an absolute path, except that a `..` with nothing left to remove is
/// refused rather than dropped: a client that climbs above the root is probing.
fn remove_dot_segments(path: &[u8]) -> Result<Vec<u8>, PathError> {
    let mut out = Vec::with_capacity(path.len());
    let segments = path.get(1..).unwrap_or_default();
    let mut rest = segments.split(|b| *b == b'/').peekable();
    while let Some(segment) = rest.next() {
        let last = rest.peek().is_none();
        match segment {
            b"." => {}
            b".." => {
                let cut = memchr::memrchr(b'/', &out).ok_or(PathError::AboveRoot)?;
                out.truncate(cut);
            }
            _ => {
                out.push(b'/');
                out.extend_from_slice(segment);
                continue;
            }
        }
        // A path ending in a dot-segment names a directory: keep its slash.
        if last {
            out.push(b'/');
        }
    }
    if out.is_empty() {
        out.push(b'/');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let cases: &[(&str, Result<Option<&str>, PathError>)] = &[
            ("/", Ok(None)),
            ("/index.html", Ok(None)),
            ("/a/b.c/.d/..e/e..", Ok(None)),
            ("/a//b/", Ok(None)),
            ("/a%20b/%C3%A9", Ok(None)),
            ("*", Ok(None)),
            ("/public/../secret", Ok(Some("/secret"))),
            ("/public/%2e%2e/secret", Ok(Some("/secret"))),
            ("/public/%2E%2E/secret", Ok(Some("/secret"))),
            ("/public/.%2e/secret", Ok(Some("/secret"))),
            ("/public/./a", Ok(Some("/public/a"))),
            ("/public/a/..", Ok(Some("/public/"))),
            ("/public/a/.", Ok(Some("/public/a/"))),
            ("/a/..", Ok(Some("/"))),
            ("/.", Ok(Some("/"))),
            ("/a//..", Ok(Some("/a/"))),
            ("/%7Euser/%41", Ok(Some("/~user/A"))),
            ("/a%2fb", Err(PathError::EncodedSlash)),
            ("/public/..%2fsecret", Err(PathError::EncodedSlash)),
            ("/public/..%2Fsecret", Err(PathError::EncodedSlash)),
            ("/public\\..\\secret", Err(PathError::Backslash)),
            ("/public/%5c", Err(PathError::Backslash)),
            ("/..", Err(PathError::AboveRoot)),
            ("/a/../../b", Err(PathError::AboveRoot)),
            ("/%2e%2e/etc/passwd", Err(PathError::AboveRoot)),
            ("/a\0b", Err(PathError::Control)),
            ("/a%00b", Err(PathError::Control)),
            ("/a%0a", Err(PathError::Control)),
            ("/a\x7f", Err(PathError::Control)),
            ("/a%zz", Err(PathError::BadEscape)),
            ("/a%4", Err(PathError::BadEscape)),
        ];
        for (path, want) in cases {
            let got = normalize(path.as_bytes());
            let got = got.map(|o| o.map(|v| String::from_utf8(v).expect("utf-8")));
            let want = want.map(|o| o.map(str::to_string));
            assert_eq!(got, want, "{path}");
        }
    }

    #[test]
    fn a_normal_path_is_not_rewritten() {
        // The fast path answers `None`: nothing allocated, nothing to set on the request.
        for path in [
            "/",
            "/a/b/c",
            "/static/app.min.js",
            "/.well-known/x",
            "/a/...",
            "/a.",
        ] {
            assert_eq!(normalize(path.as_bytes()), Ok(None), "{path}");
        }
    }
}
