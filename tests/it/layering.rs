//! The module map of docs/ARCHITECTURE.md, enforced: every `crate::<module>` path in
//! `src/` (outside comments) is an edge between two top-level modules, and an edge may only
//! point to the same or a lower layer; the two HTTP faces (`client_api`, `federation`) never
//! point at each other.
//!
//! Edges that break the rule today are listed in [`KNOWN`], each with why it exists; the
//! test fails on any *new* such edge, and also on a listed edge that no longer exists (so
//! the list only shrinks, and stays true).
//!
//! A second check keeps "only the room actor writes a room's events and state" true: the
//! storage functions that write a room's events, state, memberships or join staging
//! ([`ROOM_WRITES`]) are named only by `src/storage/` and the actor's write jobs
//! (`src/rooms/persist.rs`); a stored row is built from a PDU only by
//! `rooms::persist::event_row` (a `NewEvent { .. }` literal elsewhere must start from it), and
//! that conversion is called only inside `src/rooms/`. Test code (`tests.rs` files, and what
//! follows `#[cfg(test)]` in a file) is left out.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

/// Top-level modules by layer (lower numbers are lower layers).
const LAYERS: &[(&str, u8)] = &[
    ("config", 0),
    ("net", 0),
    ("random", 0),
    ("alloc", 0),
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

/// Storage functions that write a room's events, state, memberships or Linearized join
/// staging: only the room actor's write jobs (`rooms/persist.rs`) call them.
const ROOM_WRITES: &[&str] = &[
    "insert_event",
    "set_redacted_by",
    "set_state_before_if_unknown",
    "insert_txn",
    "insert_room",
    "set_state_group",
    "set_membership",
    "set_known_version",
    "insert_group",
    "store_group",
    "update_current_state",
    "set_extremities",
    "record_lpdu",
    "stage_join_pdus",
    "unstage_join_pdus",
    "purge_history",
    "set_event_groups",
];

/// The files (relative to `src/`) allowed to name [`ROOM_WRITES`]: the actor's write jobs.
const ROOM_WRITERS: &[&str] = &["rooms/persist.rs"];

/// Room writes made elsewhere today, each with why; like [`KNOWN`], the list only shrinks.
const KNOWN_WRITES: &[(&str, &str, &str)] = &[];

/// Source text without comments and without test code (what follows `#[cfg(test)]`).
fn code_of(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        if line.trim_start().starts_with("#[cfg(test)]") {
            break;
        }
        let code = match line.find("//") {
            Some(i) => &line[..i],
            None => line,
        };
        out.push_str(code);
        out.push('\n');
    }
    out
}

/// Whether `name` occurs in `code` as a whole identifier.
fn names(code: &str, name: &str) -> bool {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut from = 0;
    while let Some(i) = code[from..].find(name) {
        let at = from + i;
        let before = code[..at].chars().next_back();
        let after = code[at + name.len()..].chars().next();
        if !before.is_some_and(ident) && !after.is_some_and(ident) {
            return true;
        }
        from = at + name.len();
    }
    false
}

/// `NewEvent { ... }` literals in `code` that do not start from another row (`..`): rows
/// built by hand.
fn hand_built_rows(code: &str) -> usize {
    let mut n = 0;
    let mut rest = code;
    while let Some(i) = rest.find("NewEvent {") {
        let body = &rest[i + "NewEvent {".len()..];
        let end = body.find('}').unwrap_or(body.len());
        // `-> NewEvent {` opens a function body, not a literal.
        let literal = !rest[..i].trim_end().ends_with("->");
        if literal && !body[..end].contains("..") {
            n += 1;
        }
        rest = &body[end..];
    }
    n
}

/// Every non-test source file under `src/`, as (path relative to `src/`, code).
fn sources() -> Vec<(String, String)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    assert!(files.len() > 20, "no sources found under {}", src.display());
    let mut out = Vec::new();
    for f in files {
        let rel = f
            .strip_prefix(&src)
            .unwrap_or(&f)
            .to_string_lossy()
            .replace('\\', "/");
        if rel.ends_with("/tests.rs") || rel == "tests.rs" {
            continue;
        }
        let text = fs::read_to_string(&f).unwrap_or_default();
        out.push((rel, code_of(&text)));
    }
    out
}

/// What breaks "only the room actor writes a room": `(file, what)`.
fn room_write_breaks(files: &[(String, String)]) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (rel, code) in files {
        if rel.starts_with("storage/") {
            continue;
        }
        if !ROOM_WRITERS.contains(&rel.as_str()) {
            for w in ROOM_WRITES {
                if names(code, w) {
                    out.insert((rel.clone(), (*w).to_owned()));
                }
            }
            if hand_built_rows(code) > 0 {
                out.insert((rel.clone(), "NewEvent built by hand".to_owned()));
            }
        }
        if !rel.starts_with("rooms/") && names(code, "event_row") {
            out.insert((rel.clone(), "event_row".to_owned()));
        }
    }
    out
}

#[test]
fn only_the_room_actor_writes_a_room() {
    let breaks = room_write_breaks(&sources());
    let known: BTreeSet<(String, String)> = KNOWN_WRITES
        .iter()
        .map(|(f, w, _)| ((*f).to_owned(), (*w).to_owned()))
        .collect();
    let new: Vec<String> = breaks
        .difference(&known)
        .map(|(f, w)| format!("src/{f}: {w}"))
        .collect();
    assert!(
        new.is_empty(),
        "room events, state or memberships written outside the room actor's write jobs \
         (rooms/persist.rs), or a stored row built without rooms::persist::event_row; send a \
         message to the room's actor instead:\n{}",
        new.join("\n")
    );
    let stale: Vec<&(String, String)> = known.difference(&breaks).collect();
    assert!(
        stale.is_empty(),
        "writes listed in KNOWN_WRITES that no longer exist; remove them: {stale:?}"
    );
}

#[test]
fn the_room_write_scan_finds_what_it_looks_for() {
    let files = vec![
        (
            "federation/x.rs".to_owned(),
            code_of(
                "fn f(c: &mut C) { rooms::set_membership(c, a);\n\
                 // events::insert_event(c, &row) in a comment\n\
                 let r = crate::rooms::persist::event_row(&p, r, None); }\n\
                 #[cfg(test)]\nmod tests { fn t() { update_current_state(c) } }\n",
            ),
        ),
        (
            "rooms/outliers.rs".to_owned(),
            code_of(
                "let a = NewEvent { rejected, ..event_row(&p, r, None) };\n\
                 let b = NewEvent { event_id, room_id };\n\
                 fn set_membership_helper() {}\n\
                 fn row(&self) -> NewEvent {\n    event_row(p, r, None)\n}\n",
            ),
        ),
        (
            "rooms/persist.rs".to_owned(),
            code_of("events::insert_event(c, &row)?; NewEvent { event_id };"),
        ),
        (
            "storage/rooms.rs".to_owned(),
            code_of("pub fn set_membership(c: &mut C) {}"),
        ),
    ];
    let got: Vec<(String, String)> = room_write_breaks(&files).into_iter().collect();
    let want: Vec<(String, String)> = [
        ("federation/x.rs", "event_row"),
        ("federation/x.rs", "set_membership"),
        ("rooms/outliers.rs", "NewEvent built by hand"),
    ]
    .iter()
    .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
    .collect();
    assert_eq!(got, want);
}
