//! The module map of docs/ARCHITECTURE.md, enforced: every `crate::<module>` path in
//! `src/` (outside comments) is an edge between two top-level modules, and an edge may only
//! point to the same or a lower layer; the two HTTP faces (`client_api`, `federation`) never
//! point at each other.
//!
//! Edges that break the rule today are listed in [`KNOWN`], each with why it exists; the
//! test fails on any *new* such edge, and also on a listed edge that no longer exists (so
//! the list only shrinks, and stays true).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

/// Top-level modules by layer (lower numbers are lower layers).
const LAYERS: &[(&str, u8)] = &[
    ("config", 0),
    ("net", 0),
    ("random", 0),
    ("storage", 1),
    ("error", 2),
    ("notifier", 2),
    ("observe", 1),
    ("core", 3),
    ("cluster", 3),
    ("delivery", 3),
    ("passwords", 3),
    ("ratelimit", 3),
    ("accounts", 4),
    ("rooms", 4),
    ("sync", 5),
    ("devices", 5),
    ("e2ee", 5),
    ("services", 6),
    ("account_data", 6),
    ("push", 6),
    ("key_backup", 6),
    ("media", 6),
    ("deactivation", 6),
    ("search", 6),
    ("http", 6),
    ("admin", 6),
    ("client_api", 7),
    ("federation", 7),
    ("admin_api", 7),
    ("cli", 8),
    ("server", 8),
    ("main", 8),
    ("lib", 8),
];

/// The two HTTP faces: neither may import the other.
const FACES: (&str, &str) = ("client_api", "federation");

/// Edges that break the layering today (issue 8, "one-directional layout"). Remove an entry
/// when its cause is gone; the test says so. Empty since the last ones were cut (see
/// docs/ARCHITECTURE.md, "Layers"): keep it so.
const KNOWN: &[(&str, &str, &str)] = &[];

fn layer(module: &str) -> Option<u8> {
    LAYERS.iter().find(|(m, _)| *m == module).map(|(_, l)| *l)
}

fn top_module(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap_or(file);
    let first = rel
        .components()
        .next()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .unwrap_or_default();
    first.trim_end_matches(".rs").to_owned()
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// `crate::<module>` targets of a source text, comments left out.
fn targets(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in text.lines() {
        let code = match line.find("//") {
            Some(i) => &line[..i],
            None => line,
        };
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            let after = &rest[i + "crate::".len()..];
            let name: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.insert(name);
            }
            rest = after;
        }
    }
    out
}

/// Every edge between top-level modules, with the files that make it.
fn edges() -> BTreeMap<(String, String), Vec<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    assert!(files.len() > 20, "no sources found under {}", src.display());
    let mut out: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for f in files {
        let from = top_module(&src, &f);
        let text = fs::read_to_string(&f).unwrap_or_default();
        for to in targets(&text) {
            if to != from {
                out.entry((from.clone(), to))
                    .or_default()
                    .push(f.display().to_string());
            }
        }
    }
    out
}

fn breaks_rule(from: &str, to: &str) -> bool {
    let faces = (from, to) == FACES || (to, from) == FACES;
    match (layer(from), layer(to)) {
        (Some(a), Some(b)) => faces || b > a,
        // A module missing from the table is a failure of its own (below).
        _ => false,
    }
}

#[test]
fn lower_layers_never_import_higher_ones() {
    let edges = edges();
    let mut unknown_modules = BTreeSet::new();
    for (from, to) in edges.keys() {
        for m in [from, to] {
            if layer(m).is_none() {
                unknown_modules.insert(m.clone());
            }
        }
    }
    assert!(
        unknown_modules.is_empty(),
        "modules missing from the layer table (add them to LAYERS and to \
         docs/ARCHITECTURE.md): {unknown_modules:?}"
    );
    let known: BTreeSet<(&str, &str)> = KNOWN.iter().map(|(a, b, _)| (*a, *b)).collect();
    let mut new_breaks = Vec::new();
    for ((from, to), files) in &edges {
        if breaks_rule(from, to) && !known.contains(&(from.as_str(), to.as_str())) {
            new_breaks.push(format!("{from} -> {to}: {files:?}"));
        }
    }
    assert!(
        new_breaks.is_empty(),
        "imports against the layering (a lower layer importing a higher one, or one HTTP \
         face importing the other):\n{}",
        new_breaks.join("\n")
    );
    let stale: Vec<&(&str, &str, &str)> = KNOWN
        .iter()
        .filter(|(a, b, _)| !edges.contains_key(&((*a).to_owned(), (*b).to_owned())))
        .collect();
    assert!(
        stale.is_empty(),
        "edges listed in KNOWN that no longer exist; remove them: {stale:?}"
    );
}

#[test]
fn the_scan_sees_paths_and_skips_comments() {
    let text = "use crate::rooms::x;\n// crate::federation in a comment\nlet a = crate::storage::y(); // crate::core\n";
    let t = targets(text);
    assert_eq!(
        t,
        ["rooms", "storage"]
            .into_iter()
            .map(String::from)
            .collect::<BTreeSet<_>>()
    );
    assert!(breaks_rule("rooms", "federation"));
    assert!(breaks_rule("client_api", "federation"));
    assert!(breaks_rule("federation", "client_api"));
    assert!(!breaks_rule("federation", "rooms"));
    assert!(!breaks_rule("rooms", "storage"));
    assert!(!breaks_rule("rooms", "delivery"));
    assert!(breaks_rule("delivery", "rooms"));
    assert!(breaks_rule("delivery", "federation"));
}
