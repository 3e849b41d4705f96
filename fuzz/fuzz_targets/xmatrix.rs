//! The X-Matrix `Authorization` header: parsing, round-tripping, and verifying a request with it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_protocol::ruma::CanonicalJsonValue;
use weft_protocol::xmatrix::{self, XMatrix};

fuzz_target!(|data: &[u8]| {
    let Ok(header) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(parsed) = XMatrix::parse(header) else {
        return;
    };
    let again = XMatrix::parse(&parsed.to_header()).expect("our own header parses");
    assert_eq!(again.origin, parsed.origin);
    assert_eq!(again.destination, parsed.destination);
    assert_eq!(again.key, parsed.key);
    assert_eq!(again.sig, parsed.sig);
    let key = weft_protocol::keys::ServerSigningKey::from_seed([5u8; 32], "1")
        .expect("a fixed seed makes a key");
    let body = CanonicalJsonValue::Object(Default::default());
    for content in [None, Some(&body)] {
        let _ = xmatrix::verify_request(
            &parsed,
            &key.verifying_key(),
            "PUT",
            "/_matrix/federation/v1/send/1",
            "weft.test",
            content,
        );
    }
});
