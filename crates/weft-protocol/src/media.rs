//! Content repository rules (the spec's "Content repository" module), as pure functions:
//! which media IDs and server names make a valid `mxc://` URI, which content types may be
//! shown inline (the spec's list; everything else is served as an attachment), which
//! thumbnail size answers a request, and the `multipart/mixed` answer of the federation
//! media endpoints (a JSON metadata part, then the content).

/// A media ID: the spec allows `[A-Za-z0-9_-]`.
pub fn valid_media_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 255
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Parses `mxc://server/id` into its parts (both checked).
pub fn parse_mxc(uri: &str) -> Option<(&str, &str)> {
    let rest = uri.strip_prefix("mxc://")?;
    let (server, id) = rest.split_once('/')?;
    (ruma::ServerName::parse(server).is_ok() && valid_media_id(id)).then_some((server, id))
}

/// Content types the spec says a server may serve `inline`.
const INLINE_TYPES: &[&str] = &[
    "text/css",
    "text/plain",
    "text/csv",
    "application/json",
    "application/ld+json",
    "image/jpeg",
    "image/gif",
    "image/png",
    "image/apng",
    "image/webp",
    "image/avif",
    "video/mp4",
    "video/webm",
    "video/ogg",
    "video/quicktime",
    "audio/mp4",
    "audio/webm",
    "audio/aac",
    "audio/mpeg",
    "audio/ogg",
    "audio/wave",
    "audio/wav",
    "audio/x-wav",
    "audio/x-pn-wav",
    "audio/flac",
    "audio/x-flac",
];

/// Whether content of this type may be shown inline (parameters such as `charset` are
/// ignored; the comparison is case-insensitive).
pub fn inline_allowed(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    INLINE_TYPES.contains(&essence.as_str())
}

/// The `Content-Disposition` header for served content.
pub fn content_disposition(content_type: &str, filename: Option<&str>) -> String {
    let kind = if inline_allowed(content_type) {
        "inline"
    } else {
        "attachment"
    };
    match filename.filter(|f| !f.is_empty()) {
        // RFC 6266 / 8187: an ASCII name is quoted; anything else goes percent-encoded.
        Some(f)
            if f.bytes()
                .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\') =>
        {
            format!("{kind}; filename=\"{f}\"")
        }
        Some(f) => {
            let enc: String = f
                .bytes()
                .map(|b| {
                    if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
                        (b as char).to_string()
                    } else {
                        format!("%{b:02X}")
                    }
                })
                .collect();
            format!("{kind}; filename*=utf-8''{enc}")
        }
        None => kind.to_owned(),
    }
}

/// The file name in a `Content-Disposition` header (`filename*=utf-8''...` preferred over
/// `filename="..."`), if any.
pub fn disposition_filename(header: &str) -> Option<String> {
    let mut plain = None;
    for part in header.split(';').map(str::trim) {
        if let Some(v) = part.strip_prefix("filename*=") {
            let v = v
                .strip_prefix("utf-8''")
                .or_else(|| v.strip_prefix("UTF-8''"))?;
            let bytes = percent_decode(v)?;
            return String::from_utf8(bytes).ok().filter(|f| !f.is_empty());
        }
        if let Some(v) = part.strip_prefix("filename=") {
            let v = v.trim_matches('"');
            if !v.is_empty() {
                plain = Some(v.to_owned());
            }
        }
    }
    plain
}

fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(out)
}

/// How a thumbnail fits the requested box.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    /// Fit inside the box, keeping the aspect ratio.
    Scale,
    /// Fill the box exactly, cropping what sticks out.
    Crop,
}

impl Method {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "scale" => Some(Self::Scale),
            "crop" => Some(Self::Crop),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Scale => "scale",
            Self::Crop => "crop",
        }
    }
}

/// The thumbnail sizes a server generates (the ones clients commonly ask for).
pub const THUMBNAIL_SIZES: &[(u32, u32, Method)] = &[
    (32, 32, Method::Crop),
    (96, 96, Method::Crop),
    (320, 240, Method::Scale),
    (640, 480, Method::Scale),
    (800, 600, Method::Scale),
];

/// The generated size that answers a request: the smallest of `sizes` with the requested
/// method that is at least as large as asked in both dimensions; failing that, the largest
/// with that method; failing that (a method no size has), the best size of any method.
/// The spec lets the server answer a larger thumbnail than asked, never a smaller one when
/// it has a larger.
pub fn choose_size(
    sizes: &[(u32, u32, Method)],
    width: u32,
    height: u32,
    method: Method,
) -> Option<(u32, u32, Method)> {
    let pick = |same: bool| {
        let cands: Vec<_> = sizes
            .iter()
            .copied()
            .filter(|s| !same || s.2 == method)
            .collect();
        cands
            .iter()
            .copied()
            .filter(|(w, h, _)| *w >= width && *h >= height)
            .min_by_key(|(w, h, _)| u64::from(*w) * u64::from(*h))
            .or_else(|| {
                cands
                    .iter()
                    .copied()
                    .max_by_key(|(w, h, _)| u64::from(*w) * u64::from(*h))
            })
    };
    pick(true).or_else(|| pick(false))
}

/// The body of a federation media answer (`multipart/mixed`): metadata `{}` then the
/// content with its type and disposition. Returns the body; the boundary goes into the
/// answer's `Content-Type: multipart/mixed; boundary=...`.
pub fn multipart_body(
    boundary: &str,
    content_type: &str,
    disposition: &str,
    content: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 256);
    out.extend_from_slice(
        format!("--{boundary}\r\nContent-Type: application/json\r\n\r\n{{}}\r\n").as_bytes(),
    );
    out.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Type: {content_type}\r\nContent-Disposition: {disposition}\r\n\r\n"
        )
        .as_bytes(),
    );
    out.extend_from_slice(content);
    out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_ids_and_mxc() {
        for ok in ["abc", "A-b_9", &"x".repeat(255)] {
            assert!(valid_media_id(ok), "{ok}");
        }
        for bad in ["", "a/b", "a.b", "..", "a b", "é", &"x".repeat(256)] {
            assert!(!valid_media_id(bad), "{bad}");
        }
        assert_eq!(
            parse_mxc("mxc://example.org:8448/abc"),
            Some(("example.org:8448", "abc"))
        );
        for bad in [
            "mxc://example.org",
            "http://example.org/abc",
            "mxc://ex ample/abc",
            "mxc://example.org/../x",
        ] {
            assert_eq!(parse_mxc(bad), None, "{bad}");
        }
    }

    #[test]
    fn inline_or_attachment() {
        let cases = [
            ("image/png", None, "inline"),
            ("IMAGE/PNG", None, "inline"),
            ("text/plain; charset=utf-8", None, "inline"),
            ("text/html", None, "attachment"),
            ("image/svg+xml", None, "attachment"),
            ("application/octet-stream", None, "attachment"),
            ("image/png", Some("cat.png"), "inline; filename=\"cat.png\""),
            (
                "text/html",
                Some("a\"b.html"),
                "attachment; filename*=utf-8''a%22b.html",
            ),
            (
                "image/png",
                Some("chat é.png"),
                "inline; filename*=utf-8''chat%20%C3%A9.png",
            ),
        ];
        for (ct, name, want) in cases {
            let got = content_disposition(ct, name);
            if want.contains(';') {
                assert_eq!(got, want, "{ct} {name:?}");
            } else {
                assert_eq!(got, want, "{ct}");
            }
        }
    }

    #[test]
    fn filenames_from_disposition() {
        let cases = [
            ("inline; filename=\"cat.png\"", Some("cat.png")),
            ("attachment; filename=plain.txt", Some("plain.txt")),
            (
                "inline; filename*=utf-8''chat%20%C3%A9.png",
                Some("chat é.png"),
            ),
            ("inline; filename=\"a\"; filename*=utf-8''b", Some("b")),
            ("inline", None),
            ("inline; filename*=utf-8''%ZZ", None),
            ("inline; filename*=utf-8''%FF", None),
        ];
        for (h, want) in cases {
            assert_eq!(disposition_filename(h).as_deref(), want, "{h}");
        }
        // What we write, we read back.
        for name in ["x.png", "a\"b.html", "chat é.png"] {
            let h = content_disposition("image/png", Some(name));
            assert_eq!(disposition_filename(&h).as_deref(), Some(name), "{h}");
        }
    }

    #[test]
    fn thumbnail_size_choice() {
        use Method::*;
        let s = THUMBNAIL_SIZES;
        let cases = [
            (32, 32, Crop, (32, 32, Crop)),
            (33, 20, Crop, (96, 96, Crop)),
            (500, 500, Crop, (96, 96, Crop)), // larger than any crop: the largest crop
            (100, 100, Scale, (320, 240, Scale)),
            (640, 480, Scale, (640, 480, Scale)),
            (2000, 2000, Scale, (800, 600, Scale)),
            (1, 1, Scale, (320, 240, Scale)),
        ];
        for (w, h, m, want) in cases {
            assert_eq!(choose_size(s, w, h, m), Some(want), "{w}x{h} {m:?}");
        }
        // A method no size has falls back to the other.
        assert_eq!(
            choose_size(&[(320, 240, Scale)], 32, 32, Crop),
            Some((320, 240, Scale))
        );
        assert_eq!(choose_size(&[], 32, 32, Crop), None);
    }

    #[test]
    fn multipart_shape() {
        let body = multipart_body("BND", "image/png", "inline", b"\x89PNG");
        let text = String::from_utf8_lossy(&body);
        assert!(text.starts_with("--BND\r\nContent-Type: application/json\r\n\r\n{}\r\n--BND\r\n"));
        assert!(text.contains("Content-Type: image/png\r\nContent-Disposition: inline\r\n\r\n"));
        assert!(text.ends_with("\r\n--BND--\r\n"));
    }
}
