//! X-Matrix request authentication: the `Authorization` header servers sign their requests
//! with, and the JSON object the signature covers.
//!
//! Header grammar as Synapse parses it: the `X-Matrix ` prefix, then comma-separated
//! `key=value` pairs (spaces or tabs around commas allowed), keys case-insensitive, values
//! optionally quoted with backslash escapes. Both `sig` and the draft's `signature` are
//! accepted for the signature parameter.

use ruma::{CanonicalJsonObject, CanonicalJsonValue};

use crate::canonical;
use crate::keys::{ServerSigningKey, verify_b64};

/// A parsed X-Matrix header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XMatrix {
    pub origin: String,
    pub destination: Option<String>,
    pub key: String,
    pub sig: String,
}

/// Why a header is not a usable X-Matrix header.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum XMatrixError {
    #[error("not an X-Matrix authorization header")]
    NotXMatrix,
    #[error("malformed X-Matrix header: {0}")]
    Malformed(String),
    #[error("missing `{0}` in X-Matrix header")]
    Missing(&'static str),
}

fn split_params(s: &str) -> Result<Vec<(String, String)>, XMatrixError> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while matches!(chars.peek(), Some(' ' | '\t' | ',')) {
            chars.next();
        }
        if chars.peek().is_none() {
            break;
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' {
                break;
            }
            key.push(c);
            chars.next();
        }
        if chars.next() != Some('=') {
            return Err(XMatrixError::Malformed(format!(
                "parameter {key:?} has no value"
            )));
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            let mut closed = false;
            while let Some(c) = chars.next() {
                match c {
                    '\\' => match chars.next() {
                        Some(e) => value.push(e),
                        None => break,
                    },
                    '"' => {
                        closed = true;
                        break;
                    }
                    c => value.push(c),
                }
            }
            if !closed {
                return Err(XMatrixError::Malformed("unterminated quoted value".into()));
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                value.push(c);
                chars.next();
            }
            value = value.trim_end().to_owned();
        }
        out.push((key.trim().to_ascii_lowercase(), value));
    }
    Ok(out)
}

impl XMatrix {
    /// Parses an `Authorization` header value.
    pub fn parse(header: &str) -> Result<Self, XMatrixError> {
        let rest = header
            .strip_prefix("X-Matrix ")
            .or_else(|| {
                header
                    .get(..9)
                    .filter(|p| p.eq_ignore_ascii_case("x-matrix "))
                    .map(|_| &header[9..])
            })
            .ok_or(XMatrixError::NotXMatrix)?;
        let mut origin = None;
        let mut destination = None;
        let mut key = None;
        let mut sig = None;
        for (k, v) in split_params(rest)? {
            match k.as_str() {
                "origin" => origin = Some(v),
                "destination" => destination = Some(v),
                "key" => key = Some(v),
                "sig" | "signature" => sig = Some(v),
                _ => {}
            }
        }
        let origin = origin.ok_or(XMatrixError::Missing("origin"))?;
        if ruma::ServerName::parse(&origin).is_err() {
            return Err(XMatrixError::Malformed(format!("bad origin {origin:?}")));
        }
        Ok(Self {
            origin,
            destination,
            key: key.ok_or(XMatrixError::Missing("key"))?,
            sig: sig.ok_or(XMatrixError::Missing("sig"))?,
        })
    }

    /// Formats the header value (values quoted, as Synapse sends them).
    pub fn to_header(&self) -> String {
        let q = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
        let mut out = format!("X-Matrix origin=\"{}\"", q(&self.origin));
        if let Some(d) = &self.destination {
            out.push_str(&format!(",destination=\"{}\"", q(d)));
        }
        out.push_str(&format!(
            ",key=\"{}\",sig=\"{}\"",
            q(&self.key),
            q(&self.sig)
        ));
        out
    }
}

/// The JSON object a request signature covers. `uri` is the raw path and query as sent.
pub fn request_json(
    method: &str,
    uri: &str,
    origin: &str,
    destination: &str,
    content: Option<&CanonicalJsonValue>,
) -> CanonicalJsonObject {
    let mut obj = CanonicalJsonObject::new();
    obj.insert(
        "method".into(),
        CanonicalJsonValue::String(method.to_owned()),
    );
    obj.insert("uri".into(), CanonicalJsonValue::String(uri.to_owned()));
    obj.insert(
        "origin".into(),
        CanonicalJsonValue::String(origin.to_owned()),
    );
    obj.insert(
        "destination".into(),
        CanonicalJsonValue::String(destination.to_owned()),
    );
    if let Some(c) = content {
        obj.insert("content".into(), c.clone());
    }
    obj
}

/// Signs a request, returning the `Authorization` header value.
pub fn sign_request(
    key: &ServerSigningKey,
    method: &str,
    uri: &str,
    origin: &str,
    destination: &str,
    content: Option<&CanonicalJsonValue>,
) -> String {
    let obj = request_json(method, uri, origin, destination, content);
    let sig = key.sign_b64(canonical::write_object(&obj).as_bytes());
    XMatrix {
        origin: origin.to_owned(),
        destination: Some(destination.to_owned()),
        key: key.key_id().to_owned(),
        sig,
    }
    .to_header()
}

/// Verifies a parsed header against the request. `our_name` is this server's name: a header
/// naming another destination is refused. For bodiless requests both "no content" and `{}`
/// are tried (peers differ on this).
pub fn verify_request(
    header: &XMatrix,
    public_key: &ed25519_dalek::VerifyingKey,
    method: &str,
    uri: &str,
    our_name: &str,
    content: Option<&CanonicalJsonValue>,
) -> bool {
    if let Some(dest) = &header.destination
        && dest != our_name
    {
        return false;
    }
    let check = |c: Option<&CanonicalJsonValue>| {
        let obj = request_json(method, uri, &header.origin, our_name, c);
        verify_b64(
            public_key,
            canonical::write_object(&obj).as_bytes(),
            &header.sig,
        )
    };
    match content {
        Some(c) => check(Some(c)),
        None => {
            check(None)
                || check(Some(
                    &CanonicalJsonValue::Object(CanonicalJsonObject::new()),
                ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{b64_decode, parse_verify_key};

    #[test]
    fn parses_header_variants() {
        let cases = [
            (
                r#"X-Matrix origin="localhost:18448",key="ed25519:a_aSrB",sig="abc",destination="localhost:18460""#,
                Some((
                    "localhost:18448",
                    Some("localhost:18460"),
                    "ed25519:a_aSrB",
                    "abc",
                )),
            ),
            (
                "X-Matrix origin=a.example, key=ed25519:1 ,\tsig=xyz",
                Some(("a.example", None, "ed25519:1", "xyz")),
            ),
            (
                r#"X-Matrix ORIGIN="a.example",Key="ed25519:1",signature="s\"q""#,
                Some(("a.example", None, "ed25519:1", "s\"q")),
            ),
            ("Bearer abc", None),
            (r#"X-Matrix key="ed25519:1",sig="x""#, None),
            (r#"X-Matrix origin="bad name!",key="k",sig="x""#, None),
            (r#"X-Matrix origin="a",key="k",sig="unterminated"#, None),
            ("X-Matrix origin", None),
        ];
        for (header, want) in cases {
            let got = XMatrix::parse(header);
            match want {
                Some((o, d, k, s)) => {
                    let got = got.unwrap_or_else(|e| panic!("{header}: {e}"));
                    assert_eq!(got.origin, o);
                    assert_eq!(got.destination.as_deref(), d);
                    assert_eq!(got.key, k);
                    assert_eq!(got.sig, s);
                }
                None => assert!(got.is_err(), "{header} should fail"),
            }
        }
    }

    #[test]
    fn reference_implementation_headers_verify() {
        let v: serde_json::Value =
            serde_json::from_str(include_str!("../testdata/linearized-matrix-vectors.json"))
                .unwrap();
        let public = parse_verify_key(
            v["servers"]["localhost:3001"]["public_key_unpadded_b64"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
        let seed = b64_decode(
            v["servers"]["localhost:3001"]["seed_unpadded_b64"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
        let key = ServerSigningKey::from_seed(seed.try_into().unwrap(), "1").unwrap();
        for name in ["x_matrix_get_example", "x_matrix_put_example"] {
            let case = &v[name];
            let header = XMatrix::parse(case["header"].as_str().unwrap()).unwrap();
            let signed = &case["signed_json"];
            let content = signed
                .get("content")
                .map(|c| crate::canonical::value_to_canonical(c.clone()).unwrap());
            let method = signed["method"].as_str().unwrap();
            let uri = signed["uri"].as_str().unwrap();
            let obj = request_json(
                method,
                uri,
                "localhost:3001",
                "localhost:3000",
                content.as_ref(),
            );
            assert_eq!(
                crate::canonical::write_object(&obj),
                case["canonical_signed_bytes_utf8"].as_str().unwrap()
            );
            assert!(verify_request(
                &header,
                &public,
                method,
                uri,
                "localhost:3000",
                content.as_ref()
            ));
            assert!(!verify_request(
                &header,
                &public,
                method,
                uri,
                "localhost:3002",
                content.as_ref()
            ));
            assert!(!verify_request(
                &header,
                &public,
                "POST",
                uri,
                "localhost:3000",
                content.as_ref()
            ));
            // Our signer reproduces the reference header exactly.
            let ours = sign_request(
                &key,
                method,
                uri,
                "localhost:3001",
                "localhost:3000",
                content.as_ref(),
            );
            assert_eq!(XMatrix::parse(&ours).unwrap().sig, header.sig);
        }
    }
}
