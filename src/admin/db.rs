//! The database as a whole: a consistent online backup, and moving an SQLite installation
//! to PostgreSQL.
//!
//! **Backup** (SQLite): `VACUUM INTO` writes a consistent, compacted copy from one read
//! transaction, while the server keeps running (WAL mode: readers never block the writer).
//! PostgreSQL installations use `pg_dump`, which does the same there.
//!
//! **Migrate** (SQLite → PostgreSQL): the target gets weft's PostgreSQL schema (the
//! embedded migrations) and must hold no data yet. Every table is copied inside one read
//! transaction on the source (one consistent snapshot), in batches of rows. The copy is
//! generic over the schema, so a table added by a later migration is copied without
//! touching this code: SQLite renders each row as a JSON object (`json_object`), and
//! PostgreSQL turns a batch of them back into typed rows of the same table
//! (`json_populate_recordset(NULL::table, ...)`, which casts by column name: 0/1 into
//! booleans, numbers into BIGINT, text into TEXT). Both schemas have the same tables and
//! column names (migrations are kept in pairs), no foreign keys and no sequences, so order
//! does not matter and nothing needs resetting afterwards. At the end every table's row
//! count is compared between source and target.

use std::path::Path;

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};
use diesel_migrations::MigrationHarness;

use crate::config::{Config, DatabaseUrl};

/// Rows per copied batch.
const BATCH: i64 = 500;

#[derive(Debug, thiserror::Error)]
pub enum DbToolError {
    #[error("{0}")]
    Usage(String),
    #[error("database error: {0}")]
    Db(#[from] diesel::result::Error),
    #[error("cannot connect: {0}")]
    Connect(#[from] diesel::ConnectionError),
    #[error("migration error: {0}")]
    Migration(String),
    #[error("verification failed: {0}")]
    Mismatch(String),
}

/// One table's row counts after a migration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableCount {
    pub table: String,
    pub source: i64,
    pub target: i64,
}

fn sqlite_path(config: &Config) -> Result<std::path::PathBuf, DbToolError> {
    match config
        .database_url()
        .map_err(|e| DbToolError::Usage(e.to_string()))?
    {
        DatabaseUrl::Sqlite(p) => Ok(p),
        DatabaseUrl::Postgres(_) => Err(DbToolError::Usage(
            "the configured database is PostgreSQL; back it up with pg_dump".into(),
        )),
    }
}

/// Writes a consistent copy of the SQLite database to `to` (which must not exist).
pub fn backup(config: &Config, to: &Path) -> Result<u64, DbToolError> {
    let from = sqlite_path(config)?;
    if to.exists() {
        return Err(DbToolError::Usage(format!(
            "{} already exists",
            to.display()
        )));
    }
    let mut conn = SqliteConnection::establish(&from.to_string_lossy())?;
    conn.batch_execute("PRAGMA busy_timeout = 10000;")?;
    let target = to.to_string_lossy().replace('\'', "''");
    conn.batch_execute(&format!("VACUUM INTO '{target}'"))?;
    Ok(std::fs::metadata(to).map(|m| m.len()).unwrap_or(0))
}

#[derive(QueryableByName)]
struct Name {
    #[diesel(sql_type = Text)]
    name: String,
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

#[derive(QueryableByName)]
struct JsonRow {
    #[diesel(sql_type = BigInt)]
    rid: i64,
    #[diesel(sql_type = Text)]
    j: String,
}

fn quote_ident(name: &str) -> Result<String, DbToolError> {
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(DbToolError::Usage(format!(
            "unexpected table or column name {name:?}"
        )));
    }
    Ok(format!("\"{name}\""))
}

/// The data tables of the SQLite database, with their columns and row counts. Virtual tables
/// and their shadow tables (the FTS5 search index) are left out: PostgreSQL indexes the
/// copied `event_search` rows itself.
fn source_tables(
    src: &mut SqliteConnection,
) -> Result<Vec<(String, Vec<String>, i64)>, DbToolError> {
    let tables: Vec<Name> = diesel::sql_query(
        "SELECT name FROM sqlite_master m WHERE type = 'table' AND name NOT LIKE 'sqlite_%' \
         AND name <> '__diesel_schema_migrations' \
         AND sql NOT LIKE 'CREATE VIRTUAL TABLE%' \
         AND NOT EXISTS (SELECT 1 FROM sqlite_master v WHERE v.type = 'table' \
             AND v.sql LIKE 'CREATE VIRTUAL TABLE%' AND m.name LIKE v.name || '\\_%' ESCAPE '\\') \
         ORDER BY name",
    )
    .load(src)?;
    let mut out = Vec::new();
    for t in tables {
        let cols: Vec<Name> =
            diesel::sql_query("SELECT name FROM pragma_table_info(?) ORDER BY cid")
                .bind::<Text, _>(&t.name)
                .load(src)?;
        let n: Count = diesel::sql_query(format!(
            "SELECT COUNT(*) AS n FROM {}",
            quote_ident(&t.name)?
        ))
        .get_result(src)?;
        out.push((t.name, cols.into_iter().map(|c| c.name).collect(), n.n));
    }
    Ok(out)
}

/// Progress reports: `(table, rows copied so far in all tables, rows in all tables)`.
pub type Progress<'a> = &'a mut dyn FnMut(&str, u64, u64);

/// Copies the configured SQLite database into the (empty) PostgreSQL database at `target`.
pub fn migrate_to_postgres(
    config: &Config,
    target: &str,
    progress: Progress<'_>,
) -> Result<Vec<TableCount>, DbToolError> {
    if !(target.starts_with("postgres://") || target.starts_with("postgresql://")) {
        return Err(DbToolError::Usage("--to must be a postgres:// URL".into()));
    }
    let from = sqlite_path(config)?;
    if !from.exists() {
        return Err(DbToolError::Usage(format!(
            "{} does not exist",
            from.display()
        )));
    }
    let mut src = SqliteConnection::establish(&from.to_string_lossy())?;
    src.batch_execute("PRAGMA busy_timeout = 10000;")?;
    // Bring the source up to date first, so both sides have the same tables.
    src.run_pending_migrations(crate::storage::SQLITE_MIGRATIONS)
        .map_err(|e| DbToolError::Migration(e.to_string()))?;
    let mut dst = PgConnection::establish(target)?;
    dst.run_pending_migrations(crate::storage::POSTGRES_MIGRATIONS)
        .map_err(|e| DbToolError::Migration(e.to_string()))?;

    // One snapshot of the source for the whole copy.
    src.batch_execute("BEGIN")?;
    let result = copy_all(&mut src, &mut dst, progress);
    let _ = src.batch_execute("COMMIT");
    result
}

fn copy_all(
    src: &mut SqliteConnection,
    dst: &mut PgConnection,
    progress: Progress<'_>,
) -> Result<Vec<TableCount>, DbToolError> {
    let tables = source_tables(src)?;
    for (t, _, _) in &tables {
        let n: Count = diesel::sql_query(format!("SELECT COUNT(*) AS n FROM {}", quote_ident(t)?))
            .get_result(dst)?;
        if n.n > 0 {
            return Err(DbToolError::Usage(format!(
                "the target database already holds data (table {t} has {} rows); \
                 migrate into an empty database",
                n.n
            )));
        }
    }
    let total: u64 = tables.iter().map(|t| t.2.max(0) as u64).sum();
    let mut done = 0u64;
    progress("", 0, total);
    dst.transaction::<_, DbToolError, _>(|dst| {
        for (table, cols, _) in &tables {
            let qt = quote_ident(table)?;
            let mut pairs = Vec::with_capacity(cols.len());
            for c in cols {
                pairs.push(format!("'{c}', {}", quote_ident(c)?));
            }
            let select = format!(
                "SELECT rowid AS rid, json_object({}) AS j FROM {qt} WHERE rowid > ? ORDER BY rowid LIMIT {BATCH}",
                pairs.join(", ")
            );
            let insert = format!("INSERT INTO {qt} SELECT * FROM json_populate_recordset(NULL::{qt}, $1::json)");
            let mut last = i64::MIN;
            loop {
                let rows: Vec<JsonRow> = diesel::sql_query(&select).bind::<BigInt, _>(last).load(src)?;
                let Some(end) = rows.last().map(|r| r.rid) else { break };
                let batch = format!(
                    "[{}]",
                    rows.iter().map(|r| r.j.as_str()).collect::<Vec<_>>().join(",")
                );
                diesel::sql_query(&insert).bind::<Text, _>(batch).execute(dst)?;
                done += rows.len() as u64;
                last = end;
                progress(table, done, total);
            }
        }
        Ok(())
    })?;
    // Verification.
    let mut counts = Vec::new();
    let mut bad = Vec::new();
    for (table, _, n_src) in &tables {
        let n: Count =
            diesel::sql_query(format!("SELECT COUNT(*) AS n FROM {}", quote_ident(table)?))
                .get_result(dst)?;
        if n.n != *n_src {
            bad.push(format!("{table}: {n_src} in SQLite, {} in PostgreSQL", n.n));
        }
        counts.push(TableCount {
            table: table.clone(),
            source: *n_src,
            target: n.n,
        });
    }
    if !bad.is_empty() {
        return Err(DbToolError::Mismatch(bad.join("; ")));
    }
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_checked_before_they_reach_sql() {
        assert_eq!(quote_ident("events").unwrap(), "\"events\"");
        assert_eq!(
            quote_ident("e2e_one_time_keys").unwrap(),
            "\"e2e_one_time_keys\""
        );
        for bad in ["", "a b", "x\"; DROP TABLE users; --", "t-1", "é"] {
            assert!(quote_ident(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn backup_and_migrate_refuse_the_wrong_backend() {
        let mut c = Config::default();
        c.database.url = Some("postgres://u@h/db".into());
        assert!(matches!(
            backup(&c, Path::new("/tmp/x.db")),
            Err(DbToolError::Usage(m)) if m.contains("pg_dump")
        ));
        let mut noop = |_: &str, _: u64, _: u64| {};
        assert!(matches!(
            migrate_to_postgres(&Config::default(), "mysql://x", &mut noop),
            Err(DbToolError::Usage(_))
        ));
    }
}
