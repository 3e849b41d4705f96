//! Server-side search, the parts that are rules rather than storage: which field of which
//! event is searchable (`content.body` of `m.room.message`, `content.name` of `m.room.name`,
//! `content.topic` of `m.room.topic`, as the spec's `keys` name them), how a client's
//! `search_term` becomes words, and how the words become a query for each full-text engine
//! (SQLite FTS5 `MATCH`, PostgreSQL `to_tsquery`). Words are letters and digits only, so no
//! client text ever reaches either query language's operators; every word must match, as a
//! prefix (`fox` finds `foxes`), like Synapse.
//!
//! The user directory's matching (`directory_words`, `directory_matches`) lives here too: a
//! user matches when every word of the term starts a word of their user ID or display name.

use serde_json::Value;

/// The searchable keys, in the spec's spelling.
pub const KEYS: [&str; 3] = ["content.body", "content.name", "content.topic"];

/// Longest `search_term` accepted, in bytes.
pub const MAX_TERM_BYTES: usize = 1024;
/// Most words in one term.
pub const MAX_WORDS: usize = 16;
/// Longest word kept (longer ones are cut: no stored word is that long anyway).
pub const MAX_WORD_CHARS: usize = 64;
/// Longest text indexed per event, in bytes (cut at a character boundary).
pub const MAX_INDEXED_BYTES: usize = 64 * 1024;

/// The key and text an event contributes to the index, if any.
pub fn searchable(event_type: &str, content: &Value) -> Option<(&'static str, String)> {
    let (key, field) = match event_type {
        "m.room.message" => ("content.body", "body"),
        "m.room.name" => ("content.name", "name"),
        "m.room.topic" => ("content.topic", "topic"),
        _ => return None,
    };
    let text = content.get(field)?.as_str()?;
    if text.trim().is_empty() {
        return None;
    }
    let mut end = text.len().min(MAX_INDEXED_BYTES);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Some((key, text[..end].to_owned()))
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TermError {
    #[error("search_term is longer than {MAX_TERM_BYTES} bytes")]
    TooLong,
    #[error("search_term has more than {MAX_WORDS} words")]
    TooManyWords,
}

/// The words of a search term: runs of letters and digits, lower-cased, de-duplicated in
/// order. An empty list means nothing can match.
pub fn words(term: &str) -> Result<Vec<String>, TermError> {
    if term.len() > MAX_TERM_BYTES {
        return Err(TermError::TooLong);
    }
    let mut out: Vec<String> = Vec::new();
    for w in term.split(|c: char| !c.is_alphanumeric()) {
        if w.is_empty() {
            continue;
        }
        let w: String = w
            .chars()
            .take(MAX_WORD_CHARS)
            .collect::<String>()
            .to_lowercase();
        if !out.contains(&w) {
            out.push(w);
        }
    }
    if out.len() > MAX_WORDS {
        return Err(TermError::TooManyWords);
    }
    Ok(out)
}

/// An FTS5 `MATCH` expression: every word as a quoted prefix, all required.
pub fn fts5_query(words: &[String]) -> String {
    words
        .iter()
        .map(|w| format!("\"{w}\"*"))
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// A PostgreSQL `to_tsquery` expression: every word as a prefix, all required.
pub fn tsquery(words: &[String]) -> String {
    words
        .iter()
        .map(|w| format!("{w}:*"))
        .collect::<Vec<_>>()
        .join(" & ")
}

/// Words of a user-directory term (same rules as search terms).
pub fn directory_words(term: &str) -> Result<Vec<String>, TermError> {
    words(term)
}

/// Whether a user matches: each word starts some word of the user ID or display name.
pub fn directory_matches(words: &[String], user_id: &str, display_name: Option<&str>) -> bool {
    let hay: Vec<String> = user_id
        .split(|c: char| !c.is_alphanumeric())
        .chain(
            display_name
                .unwrap_or("")
                .split(|c: char| !c.is_alphanumeric()),
        )
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect();
    !words.is_empty() && words.iter().all(|w| hay.iter().any(|h| h.starts_with(w)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn searchable_fields() {
        let cases = [
            (
                "m.room.message",
                json!({"body": "hello"}),
                Some(("content.body", "hello")),
            ),
            (
                "m.room.name",
                json!({"name": "Lobby"}),
                Some(("content.name", "Lobby")),
            ),
            (
                "m.room.topic",
                json!({"topic": "cats"}),
                Some(("content.topic", "cats")),
            ),
            ("m.room.message", json!({"body": 5}), None),
            ("m.room.message", json!({"body": "   "}), None),
            ("m.room.encrypted", json!({"ciphertext": "x"}), None),
            ("m.reaction", json!({"body": "x"}), None),
        ];
        for (kind, content, want) in cases {
            let got = searchable(kind, &content);
            assert_eq!(
                got.as_ref().map(|(k, t)| (*k, t.as_str())),
                want,
                "{kind} {content}"
            );
        }
        let long = "é".repeat(MAX_INDEXED_BYTES);
        let (_, t) = searchable("m.room.message", &json!({ "body": long })).unwrap();
        assert!(t.len() <= MAX_INDEXED_BYTES && t.len() >= MAX_INDEXED_BYTES - 1);
    }

    #[test]
    fn words_of_terms() {
        let cases: [(&str, Result<Vec<&str>, TermError>); 7] = [
            ("Quick brown", Ok(vec!["quick", "brown"])),
            ("  fox, FOX; fox!", Ok(vec!["fox"])),
            ("\"a\" OR b* NEAR(c)", Ok(vec!["a", "or", "b", "near", "c"])),
            ("' & | ! :* () <->", Ok(vec![])),
            ("", Ok(vec![])),
            ("grüße 東京", Ok(vec!["grüße", "東京"])),
            (
                "a b c d e f g h i j k l m n o p q",
                Err(TermError::TooManyWords),
            ),
        ];
        for (term, want) in cases {
            let got = words(term);
            let want = want.map(|v| v.into_iter().map(str::to_owned).collect::<Vec<_>>());
            assert_eq!(got, want, "{term:?}");
        }
        assert_eq!(
            words(&"x".repeat(MAX_TERM_BYTES + 1)),
            Err(TermError::TooLong)
        );
        assert_eq!(words(&"y".repeat(200)).unwrap()[0].len(), MAX_WORD_CHARS);
    }

    #[test]
    fn queries_for_both_engines() {
        let w = words("Brown fox").unwrap();
        assert_eq!(fts5_query(&w), "\"brown\"* AND \"fox\"*");
        assert_eq!(tsquery(&w), "brown:* & fox:*");
    }

    #[test]
    fn directory_matching() {
        let cases = [
            ("bob", "@bob:x", None, true),
            ("BO", "@bob:x", None, true),
            ("tables", "@b1:x", Some("Bobby Tables"), true),
            ("bobby tab", "@b1:x", Some("Bobby Tables"), true),
            ("bobby zed", "@b1:x", Some("Bobby Tables"), false),
            ("obby", "@b1:x", Some("Bobby Tables"), false),
            ("example", "@a:example.org", None, true),
            ("", "@a:x", Some("A"), false),
        ];
        for (term, id, name, want) in cases {
            let w = directory_words(term).unwrap();
            assert_eq!(
                directory_matches(&w, id, name),
                want,
                "{term:?} {id} {name:?}"
            );
        }
    }
}
