//! The content repository over HTTP: uploads (direct, and create-then-upload), downloads
//! (authenticated, and legacy behind its switch), thumbnails (scale, crop, cached),
//! de-duplicated storage, metadata in the database, and bad input: oversized uploads,
//! quotas, content types that lie, unknown media. Federation with Synapse both ways is in
//! `media_with_synapse`.

use std::io::Cursor;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::both_backends;
use crate::client::{Client, enc};
use crate::harness::{Backend, Federation, Options, Server};
use crate::synapse::Synapse;

both_backends!(media_round_trip, media_bad_input, media_legacy_switch);

/// A PNG of `w`×`h` pixels.
pub fn png(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbaImage::from_fn(w, h, |x, y| image::Rgba([x as u8, y as u8, 128, 255]));
    let mut out = Cursor::new(Vec::new());
    image::DynamicImage::ImageRgba8(img)
        .write_to(&mut out, image::ImageFormat::Png)
        .expect("encode png");
    out.into_inner()
}

fn dims(bytes: &[u8]) -> (u32, u32) {
    let img = image::load_from_memory(bytes).expect("an image");
    (img.width(), img.height())
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// `mxc://server/id` → `server/id` escaped for a path.
fn mxc_path(uri: &str) -> String {
    let rest = uri.strip_prefix("mxc://").expect("an mxc URI");
    let (server, id) = rest.split_once('/').expect("server/id");
    format!("{}/{}", enc(server), enc(id))
}

fn upload_png(c: &Client, bytes: &[u8], name: &str) -> String {
    let r = c
        .upload(
            &format!("/_matrix/media/v3/upload?filename={name}"),
            bytes,
            Some("image/png"),
        )
        .ok();
    r["content_uri"].as_str().expect("content_uri").to_owned()
}

fn media_round_trip(backend: Backend) {
    let srv = Server::start(backend);
    let alice = srv.register("alice");
    let bob = srv.register("bob");
    let cfg = alice.get("/_matrix/client/v1/media/config").ok();
    assert_eq!(cfg["m.upload.size"], 50 * 1024 * 1024);

    let picture = png(400, 200);
    let uri = upload_png(&alice, &picture, "cat.png");
    assert!(uri.starts_with("mxc://weft.test/"), "{uri}");
    let p = mxc_path(&uri);

    // Bob downloads it through authenticated media.
    let (status, headers, body) = bob.get_bytes(&format!("/_matrix/client/v1/media/download/{p}"));
    assert_eq!(status, 200);
    assert_eq!(body, picture);
    assert_eq!(header(&headers, "content-type"), Some("image/png"));
    assert_eq!(
        header(&headers, "content-disposition"),
        Some("inline; filename=\"cat.png\"")
    );
    assert!(header(&headers, "content-security-policy").is_some_and(|v| v.contains("sandbox")));
    assert_eq!(header(&headers, "x-content-type-options"), Some("nosniff"));
    // With a file name in the path.
    let (status, headers, _) =
        bob.get_bytes(&format!("/_matrix/client/v1/media/download/{p}/other.png"));
    assert_eq!(status, 200);
    assert_eq!(
        header(&headers, "content-disposition"),
        Some("inline; filename=\"other.png\"")
    );
    // Not without a token; not through the legacy endpoint (off by default).
    srv.anonymous()
        .get(&format!("/_matrix/client/v1/media/download/{p}"))
        .expect_err(401, "M_MISSING_TOKEN");
    srv.anonymous()
        .get(&format!("/_matrix/media/v3/download/{p}"))
        .expect_err(404, "M_NOT_FOUND");

    // Thumbnails: crop fills the box exactly, scale fits inside it; both are cached.
    let (status, headers, thumb) = bob.get_bytes(&format!(
        "/_matrix/client/v1/media/thumbnail/{p}?width=32&height=32&method=crop"
    ));
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "content-type"), Some("image/png"));
    assert_eq!(dims(&thumb), (32, 32));
    let (_, _, scaled) = bob.get_bytes(&format!(
        "/_matrix/client/v1/media/thumbnail/{p}?width=100&height=100&method=scale"
    ));
    assert_eq!(dims(&scaled), (320, 160), "the 320x240 size, aspect kept");
    let (_, _, again) = bob.get_bytes(&format!(
        "/_matrix/client/v1/media/thumbnail/{p}?width=30&height=30&method=crop"
    ));
    assert_eq!(
        again, thumb,
        "the same cached thumbnail answers the same size"
    );
    assert_eq!(
        srv.query_text(
            "SELECT method AS v FROM media_thumbnails WHERE method <> ?",
            ""
        )
        .len(),
        2
    );

    // The same bytes uploaded again: a new media ID, one content hash.
    let uri2 = upload_png(&bob, &picture, "copy.png");
    assert_ne!(uri, uri2);
    let hashes = srv.query_text(
        "SELECT DISTINCT sha256 AS v FROM media WHERE server_name = ?",
        "weft.test",
    );
    assert_eq!(hashes.len(), 1, "identical content is stored once");
    let rows = srv.query_text(
        "SELECT content_type AS v FROM media WHERE uploader = ?",
        &alice.user_id,
    );
    assert_eq!(rows, ["image/png"]);

    // Create, then upload.
    let created = alice.post("/_matrix/media/v1/create", &json!({})).ok();
    let curi = created["content_uri"]
        .as_str()
        .expect("content_uri")
        .to_owned();
    assert!(created["unused_expires_at"].as_i64().is_some());
    let cp = mxc_path(&curi);
    alice
        .get(&format!("/_matrix/client/v1/media/download/{cp}"))
        .expect_err(504, "M_NOT_YET_UPLOADED");
    bob.upload(
        &format!("/_matrix/media/v3/upload/{cp}"),
        b"hello",
        Some("text/plain"),
    )
    .expect_err(403, "M_FORBIDDEN");
    alice
        .upload(
            &format!("/_matrix/media/v3/upload/{cp}?filename=hello.txt"),
            b"hello",
            Some("text/plain"),
        )
        .ok();
    alice
        .upload(
            &format!("/_matrix/media/v3/upload/{cp}"),
            b"again",
            Some("text/plain"),
        )
        .expect_err(409, "M_CANNOT_OVERWRITE_MEDIA");
    let (status, headers, body) = bob.get_bytes(&format!("/_matrix/client/v1/media/download/{cp}"));
    assert_eq!((status, body.as_slice()), (200, &b"hello"[..]));
    assert_eq!(header(&headers, "content-type"), Some("text/plain"));

    // Unsafe types are attachments; no content type means octet-stream.
    let html = alice
        .upload(
            "/_matrix/media/v3/upload",
            b"<script>x</script>",
            Some("text/html"),
        )
        .ok();
    let (_, headers, _) = bob.get_bytes(&format!(
        "/_matrix/client/v1/media/download/{}",
        mxc_path(html["content_uri"].as_str().expect("uri"))
    ));
    assert_eq!(header(&headers, "content-disposition"), Some("attachment"));
    let raw = alice
        .upload("/_matrix/media/v3/upload", b"\x00\x01", None)
        .ok();
    let (_, headers, _) = bob.get_bytes(&format!(
        "/_matrix/client/v1/media/download/{}",
        mxc_path(raw["content_uri"].as_str().expect("uri"))
    ));
    assert_eq!(
        header(&headers, "content-type"),
        Some("application/octet-stream")
    );
    srv.assert_no_panics();
}

fn media_bad_input(backend: Backend) {
    let srv = Server::start_with(
        backend,
        Options {
            extra_toml: "[media]\nmax_upload_bytes = 4000\nuser_quota_bytes = 6000\nmax_pending_creates = 2\n"
                .into(),
            ..Options::default()
        },
    );
    let alice = srv.register("alice");
    // Too large for one upload.
    alice
        .upload(
            "/_matrix/media/v3/upload",
            &vec![7u8; 4001],
            Some("application/octet-stream"),
        )
        .expect_err(413, "M_TOO_LARGE");
    // The quota: two uploads fit, the third does not.
    for _ in 0..2 {
        alice
            .upload(
                "/_matrix/media/v3/upload",
                &vec![7u8; 2900],
                Some("application/octet-stream"),
            )
            .ok();
    }
    alice
        .upload(
            "/_matrix/media/v3/upload",
            &vec![7u8; 2900],
            Some("application/octet-stream"),
        )
        .expect_err(413, "M_TOO_LARGE");
    let bob = srv.register("bob");
    // Content types: invalid, and an image type the bytes are not.
    bob.upload("/_matrix/media/v3/upload", b"hello", Some("not a type"))
        .expect_err(400, "M_INVALID_PARAM");
    bob.upload("/_matrix/media/v3/upload", b"hello", Some("image/png"))
        .expect_err(400, "M_INVALID_PARAM");
    bob.upload("/_matrix/media/v3/upload", &png(4, 4), Some("image/jpeg"))
        .expect_err(400, "M_INVALID_PARAM");
    bob.upload(
        "/_matrix/media/v3/upload?filename=a%2Fb",
        b"x",
        Some("text/plain"),
    )
    .expect_err(400, "M_INVALID_PARAM");
    // Unknown and malformed media.
    bob.get("/_matrix/client/v1/media/download/weft.test/nosuchmedia")
        .expect_err(404, "M_NOT_FOUND");
    bob.get("/_matrix/client/v1/media/download/weft.test/bad.id")
        .expect_err(404, "M_NOT_FOUND");
    bob.get("/_matrix/client/v1/media/download/not%20a%20server/x")
        .expect_err(404, "M_NOT_FOUND");
    bob.upload(
        "/_matrix/media/v3/upload/weft.test/nosuch",
        b"x",
        Some("text/plain"),
    )
    .expect_err(404, "M_NOT_FOUND");
    // Remote media with federation off.
    bob.get("/_matrix/client/v1/media/download/elsewhere.example/abc")
        .expect_err(404, "M_NOT_FOUND");
    // Thumbnails of what is not an image, and bad parameters.
    let text = bob
        .upload("/_matrix/media/v3/upload", b"just text", Some("text/plain"))
        .ok();
    let tp = mxc_path(text["content_uri"].as_str().expect("uri"));
    bob.get(&format!(
        "/_matrix/client/v1/media/thumbnail/{tp}?width=32&height=32"
    ))
    .expect_err(404, "M_NOT_FOUND");
    let img = bob
        .upload("/_matrix/media/v3/upload", &png(40, 40), Some("image/png"))
        .ok();
    let ip = mxc_path(img["content_uri"].as_str().expect("uri"));
    bob.get(&format!(
        "/_matrix/client/v1/media/thumbnail/{ip}?width=32&height=32&method=stretch"
    ))
    .expect_err(400, "M_INVALID_PARAM");
    bob.get(&format!(
        "/_matrix/client/v1/media/thumbnail/{ip}?width=0&height=32"
    ))
    .expect_err(400, "M_INVALID_PARAM");
    bob.get(&format!(
        "/_matrix/client/v1/media/thumbnail/{ip}?width=x&height=32"
    ))
    .expect_err(400, "M_INVALID_PARAM");
    // A PNG header claiming a gigapixel image: refused, no panic.
    let mut bomb = png(1, 1);
    bomb[16..20].copy_from_slice(&100_000u32.to_be_bytes());
    bomb[20..24].copy_from_slice(&100_000u32.to_be_bytes());
    let b = bob
        .upload("/_matrix/media/v3/upload", &bomb, Some("image/png"))
        .ok();
    let bp = mxc_path(b["content_uri"].as_str().expect("uri"));
    let r = bob.get(&format!(
        "/_matrix/client/v1/media/thumbnail/{bp}?width=32&height=32"
    ));
    assert!(
        matches!(r.status, 404 | 413),
        "a decompression bomb gets an error: {}",
        r.text
    );
    // Too many media IDs waiting for their upload.
    for _ in 0..2 {
        bob.post("/_matrix/media/v1/create", &json!({})).ok();
    }
    bob.post("/_matrix/media/v1/create", &json!({}))
        .expect_err(429, "M_LIMIT_EXCEEDED");
    // Uploads need a token.
    srv.anonymous()
        .upload("/_matrix/media/v3/upload", b"x", Some("text/plain"))
        .expect_err(401, "M_MISSING_TOKEN");
    srv.assert_no_panics();
}

fn media_legacy_switch(backend: Backend) {
    let srv = Server::start_with(
        backend,
        Options {
            extra_toml: "[media]\nlegacy_unauthenticated = true\n".into(),
            ..Options::default()
        },
    );
    let alice = srv.register("alice");
    let picture = png(64, 64);
    let uri = upload_png(&alice, &picture, "x.png");
    let p = mxc_path(&uri);
    let anon = srv.anonymous();
    let (status, _, body) = anon.get_bytes(&format!("/_matrix/media/v3/download/{p}"));
    assert_eq!((status, body == picture), (200, true));
    let (status, _, body) = anon.get_bytes(&format!("/_matrix/media/r0/download/{p}/y.png"));
    assert_eq!((status, body == picture), (200, true));
    let (status, _, thumb) = anon.get_bytes(&format!(
        "/_matrix/media/v3/thumbnail/{p}?width=32&height=32&method=crop"
    ));
    assert_eq!(status, 200);
    assert_eq!(dims(&thumb), (32, 32));
    srv.assert_no_panics();
}

/// Polls `f` (bounded) until it yields a value.
fn wait<T>(what: &str, within: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A weft user's image downloaded by a Synapse user, and the other way round (with a
/// thumbnail of the remote image made on weft, and the copy cached).
#[test]
fn media_with_synapse() {
    let syn = Synapse::start();
    let w = Server::start_with(
        Backend::Sqlite,
        Options {
            federation: Some(Federation::default()),
            ..Default::default()
        },
    );
    let bob = w.register("bob");
    let alice = syn.register("alice");

    // weft → Synapse.
    let picture = png(120, 80);
    let uri = upload_png(&bob, &picture, "weft.png");
    let p = mxc_path(&uri);
    let got = wait(
        "Synapse to fetch weft's media",
        Duration::from_secs(60),
        || {
            let (status, _, body) =
                alice.get_bytes(&format!("/_matrix/client/v1/media/download/{p}"));
            (status == 200).then_some(body)
        },
    );
    assert_eq!(got, picture, "Synapse serves weft's bytes");

    // Synapse → weft.
    let theirs = png(300, 300);
    let r = alice
        .upload(
            "/_matrix/media/v3/upload?filename=syn.png",
            &theirs,
            Some("image/png"),
        )
        .ok();
    let suri = r["content_uri"].as_str().expect("content_uri").to_owned();
    let sp = mxc_path(&suri);
    let (status, headers, body) = bob.get_bytes(&format!("/_matrix/client/v1/media/download/{sp}"));
    assert_eq!(
        status,
        200,
        "weft fetched Synapse's media: {}",
        String::from_utf8_lossy(&body)
    );
    assert_eq!(body, theirs);
    assert_eq!(header(&headers, "content-type"), Some("image/png"));
    assert_eq!(
        w.query_text(
            "SELECT server_name AS v FROM media WHERE uploader IS NULL AND server_name = ?",
            &syn.server_name()
        )
        .len(),
        1,
        "the remote copy is cached"
    );
    let (status, _, thumb) = bob.get_bytes(&format!(
        "/_matrix/client/v1/media/thumbnail/{sp}?width=96&height=96&method=crop"
    ));
    assert_eq!(status, 200);
    assert_eq!(dims(&thumb), (96, 96));
    w.assert_no_panics();
}
