//! A throw-away database for unit tests that run on both backends (`#[cfg(test)]` only).
//!
//! [`TempDb::new`] names a fresh data directory and, for PostgreSQL, creates a database of
//! its own on the test server (`WEFT_TEST_PG`, default `postgres://postgres@127.0.0.1:5432`,
//! trust auth, the `test` database for administration), and fills a [`Config`] pointing at
//! them. Dropping the guard removes both. Callers open what they test (a [`super::Db`], a
//! `Core`) from `config`, and keep the guard beside it, declared after it, so that it is
//! dropped last.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::config::Config;

#[derive(Debug, Clone, Copy)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub struct TempDb {
    pub config: Config,
    dir: PathBuf,
    /// The PostgreSQL server and the database made for this test.
    pg: Option<(String, String)>,
}

impl TempDb {
    /// `tag` names the directory and the database (`weft-<tag>-test-…`, `weft_<tag>_…`).
    pub fn new(backend: Backend, tag: &str, server_name: &str) -> TempDb {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "weft-{tag}-test-{}-{n}-{}",
            std::process::id(),
            crate::random::random_string(6)
        ));
        let mut config = Config {
            server_name: server_name.into(),
            data_dir: dir.clone(),
            ..Config::default()
        };
        let pg = match backend {
            Backend::Sqlite => None,
            Backend::Postgres => {
                use diesel::connection::SimpleConnection;
                let base = std::env::var("WEFT_TEST_PG")
                    .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
                let name = format!("weft_{tag}_{}_{n}", std::process::id());
                let mut admin = <diesel::PgConnection as diesel::Connection>::establish(&format!(
                    "{base}/test"
                ))
                .unwrap_or_else(|e| panic!("cannot connect to PostgreSQL at {base}: {e}"));
                for sql in [
                    format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
                    format!("CREATE DATABASE {name}"),
                ] {
                    admin.batch_execute(&sql).expect("create the test database");
                }
                config.database.url = Some(format!("{base}/{name}"));
                Some((base, name))
            }
        };
        TempDb { config, dir, pg }
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        if let Some((base, name)) = &self.pg {
            use diesel::connection::SimpleConnection;
            if let Ok(mut c) =
                <diesel::PgConnection as diesel::Connection>::establish(&format!("{base}/test"))
            {
                // FORCE: what the test opened may still hold connections.
                let _ = c.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
            }
        }
    }
}
