//! The embedded ledger: SQLite in WAL mode.
//!
//! * `event_lines`: one row per event, its id (the primary key) and its JSON
//!   line; a replayed event is ignored (`INSERT OR IGNORE`).
//!   `events` is a view of it with one column per field of the event.
//! * `rollup_daily` / `rollup_monthly`: per `(period, reseller, tenant)` sums;
//!   the reseller's total is the row with `tenant = ''`. They are updated in the
//!   same transaction as the insert and only when the insert added a row, so a
//!   replay never counts twice. `unpriced_events` counts events with tokens
//!   and no price (`cost_micros` null), which `cost_micros` leaves out;
//!   `cache_write_tokens` / `cache_write_1h_tokens` the prompt tokens written
//!   to the provider's cache (and of them for an hour). A batch's rollup rows are summed in memory
//!   first: one upsert per (period, reseller, tenant) per batch.
//! * `spool_cursor`: per spool directory, the position through which its
//!   events are stored, written in the same transaction as the batch (so the
//!   shipper writes no cursor file).
//!
//! Durability: commits run with `synchronous = NORMAL` (no fsync per batch; a
//! crash of the process loses nothing, a power cut may lose the last commits).
//! At most every [`DURABLE_EVERY`] one commit runs with `synchronous = FULL`,
//! which fsyncs the WAL and with it every earlier commit; only then is the
//! acknowledgement `durable` and may the spool drop those events.

use super::{Ack, Sink};
use crate::usage::event::LedgerEvent;
use crate::usage::spool::Position;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

/// Longest time between two fsynced (`synchronous = FULL`) commits.
pub const DURABLE_EVERY: Duration = Duration::from_secs(1);

/// The page size of a new ledger, in bytes.
const PAGE_SIZE: u32 = 16 << 10;

/// The table of events: each stored as its id and its JSON line.
const EVENT_LINES: &str =
    "CREATE TABLE IF NOT EXISTS event_lines (event_id TEXT PRIMARY KEY, raw TEXT NOT NULL)";

const SCHEMA: &str = r#"
-- `events`: one column per field of the event, read out of its line when
-- queried. Binding and storing 26 more values per event cost about 10k
-- instructions (callgrind), a third of the ledger's insert, for columns only
-- ad-hoc queries read. (Not generated columns: SQLite computes even virtual
-- ones on every insert.) Absent or `null` values read as the stored columns
-- of earlier ledgers held them (0, '', or NULL for the optional ones).
CREATE VIEW IF NOT EXISTS events AS SELECT
    event_id,
    coalesce(json_extract(raw, '$.v'), 0) AS v,
    json_extract(raw, '$.ts') AS ts,
    substr(json_extract(raw, '$.ts'), 1, 10) AS day,
    substr(json_extract(raw, '$.ts'), 1, 7) AS month,
    json_extract(raw, '$.request_id') AS request_id,
    json_extract(raw, '$.reseller') AS reseller,
    json_extract(raw, '$.tenant') AS tenant,
    json_extract(raw, '$.key_id') AS key_id,
    json_extract(raw, '$.key_owner') AS key_owner,
    coalesce(json_extract(raw, '$.endpoint'), '') AS endpoint,
    json_extract(raw, '$.requested_model') AS requested_model,
    json_extract(raw, '$.served_model') AS served_model,
    json_extract(raw, '$.provider') AS provider,
    coalesce(json_array_length(raw, '$.attempts'), 0) AS attempts,
    coalesce(json_extract(raw, '$.status'), 0) AS status,
    json_extract(raw, '$.outcome') AS outcome,
    json_extract(raw, '$.error_code') AS error_code,
    coalesce(json_extract(raw, '$.prompt_tokens'), 0) AS prompt_tokens,
    coalesce(json_extract(raw, '$.completion_tokens'), 0) AS completion_tokens,
    coalesce(json_extract(raw, '$.cached_tokens'), 0) AS cached_tokens,
    coalesce(json_extract(raw, '$.cache_write_tokens'), 0) AS cache_write_tokens,
    coalesce(json_extract(raw, '$.cache_write_1h_tokens'), 0) AS cache_write_1h_tokens,
    coalesce(json_extract(raw, '$.total_tokens'), coalesce(json_extract(raw, '$.prompt_tokens'), 0) + coalesce(json_extract(raw, '$.completion_tokens'), 0)) AS total_tokens,
    coalesce(json_extract(raw, '$.estimated'), 0) AS estimated,
    coalesce(json_extract(raw, '$.stream'), 0) AS stream,
    coalesce(json_extract(raw, '$.client_disconnected'), 0) AS client_disconnected,
    CAST(coalesce(json_extract(raw, '$.latency_ms'), 0.0) AS REAL) AS latency_ms,
    CAST(json_extract(raw, '$.ttfb_ms') AS REAL) AS ttfb_ms,
    json_extract(raw, '$.cost_micros') AS cost_micros,
    raw
FROM event_lines;
-- Reports and quotas read the rollups, never `events` by month: an index on
-- (reseller, month, tenant) cost a third b-tree insert per event (about 8k
-- instructions, callgrind) for no reader. Earlier databases lose it here.
DROP INDEX IF EXISTS events_by_month;
CREATE TABLE IF NOT EXISTS rollup_daily (
    period TEXT NOT NULL, reseller TEXT NOT NULL, tenant TEXT NOT NULL,
    requests INTEGER NOT NULL, billable_requests INTEGER NOT NULL,
    prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL,
    cached_tokens INTEGER NOT NULL, total_tokens INTEGER NOT NULL,
    estimated_events INTEGER NOT NULL, cost_micros INTEGER NOT NULL,
    unpriced_events INTEGER NOT NULL DEFAULT 0,
    cache_write_tokens INTEGER NOT NULL DEFAULT 0,
    cache_write_1h_tokens INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (period, reseller, tenant)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS rollup_monthly (
    period TEXT NOT NULL, reseller TEXT NOT NULL, tenant TEXT NOT NULL,
    requests INTEGER NOT NULL, billable_requests INTEGER NOT NULL,
    prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL,
    cached_tokens INTEGER NOT NULL, total_tokens INTEGER NOT NULL,
    estimated_events INTEGER NOT NULL, cost_micros INTEGER NOT NULL,
    unpriced_events INTEGER NOT NULL DEFAULT 0,
    cache_write_tokens INTEGER NOT NULL DEFAULT 0,
    cache_write_1h_tokens INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (period, reseller, tenant)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS spool_cursor (
    spool TEXT PRIMARY KEY, segment INTEGER NOT NULL, offset INTEGER NOT NULL
) WITHOUT ROWID;
"#;

const SAVE_CURSOR: &str = "INSERT INTO spool_cursor (spool, segment, offset) VALUES (?1, ?2, ?3) \
    ON CONFLICT (spool) DO UPDATE SET segment = excluded.segment, offset = excluded.offset";

fn rollup_sql(table: &str) -> String {
    format!(
        "INSERT INTO {table} (period, reseller, tenant, requests, billable_requests, prompt_tokens, \
         completion_tokens, cached_tokens, total_tokens, estimated_events, cost_micros, \
         unpriced_events, cache_write_tokens, cache_write_1h_tokens) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14) \
         ON CONFLICT (period, reseller, tenant) DO UPDATE SET \
         requests = requests + excluded.requests, billable_requests = billable_requests + excluded.billable_requests, \
         prompt_tokens = prompt_tokens + excluded.prompt_tokens, \
         completion_tokens = completion_tokens + excluded.completion_tokens, \
         cached_tokens = cached_tokens + excluded.cached_tokens, \
         total_tokens = total_tokens + excluded.total_tokens, \
         estimated_events = estimated_events + excluded.estimated_events, \
         cost_micros = cost_micros + excluded.cost_micros, \
         unpriced_events = unpriced_events + excluded.unpriced_events, \
         cache_write_tokens = cache_write_tokens + excluded.cache_write_tokens, \
         cache_write_1h_tokens = cache_write_1h_tokens + excluded.cache_write_1h_tokens"
    )
}

/// The most events one insert statement takes (two parameters each).
const ROWS_PER_INSERT: usize = 32;

/// The insert of `rows` events, each `(event_id, raw)`; an event already
/// stored is skipped. Batches end in a shorter chunk of any length, so the
/// connection caches more statements than rusqlite's default 16 (see [`open`]).
///
/// `OR IGNORE`, not `ON CONFLICT (event_id) DO NOTHING`: with the latter the
/// `NOT NULL` on `raw` may still abort a statement of several rows halfway,
/// so SQLite kept a statement journal for each, the pages it touched copied
/// into a temporary file in `/var/tmp` (16 KiB pages spill past its 64 KiB
/// in memory): 58% of the shipper's bytes written (4.6 -> 1.9 KB per event,
/// `/proc/<tid>/io`). `raw` is never bound to NULL, so nothing else changes.
fn insert_rows_sql(rows: usize) -> String {
    let mut sql = String::from("INSERT OR IGNORE INTO event_lines (event_id, raw) VALUES (?, ?)");
    for _ in 1..rows {
        sql.push_str(", (?, ?)");
    }
    sql
}

/// The text of the ledger's batch statements, built once.
struct Statements {
    /// `insert[n - 1]`: the insert of `n` events ([`insert_rows_sql`]).
    insert: Vec<String>,
    daily: String,
    monthly: String,
}

static SQL: LazyLock<Statements> = LazyLock::new(|| Statements {
    insert: (1..=ROWS_PER_INSERT).map(insert_rows_sql).collect(),
    daily: rollup_sql("rollup_daily"),
    monthly: rollup_sql("rollup_monthly"),
});

/// Opens (creating) the ledger database with its schema.
pub fn open(path: &Path) -> rusqlite::Result<Connection> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        let _ = std::fs::create_dir_all(parent);
    }
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    // Every insert length (1..=ROWS_PER_INSERT) and the other statements.
    conn.set_prepared_statement_cache_capacity(ROWS_PER_INSERT + 16);
    // Before the first write: a ledger's page size is fixed when it is created
    // (an existing one keeps its own). WAL writes each page as two `pwrite(2)`s
    // and the checkpoint reads it back once, so 16 KiB pages take a batch of
    // ~700-byte events in a quarter of the calls: the shipper's CPU per event
    // fell by about 30% (0.69 -> 0.19 `pwrite` per event; benches/README).
    conn.pragma_update(None, "page_size", PAGE_SIZE)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.execute(EVENT_LINES, [])?;
    migrate_stored_events(&conn)?;
    drop_outdated_events_view(&conn)?;
    conn.execute_batch(SCHEMA)?;
    add_rollup_columns(&conn)?;
    Ok(conn)
}

/// The `events` view of a ledger written before the event's newest fields
/// is created again (`CREATE VIEW IF NOT EXISTS` keeps an existing one):
/// its lines hold them, or read as 0 where they do not.
fn drop_outdated_events_view(conn: &Connection) -> rusqlite::Result<()> {
    let outdated: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'view' AND name = 'events') \
         AND NOT EXISTS (SELECT 1 FROM pragma_table_info('events') \
             WHERE name = 'key_id')",
        [],
        |r| r.get(0),
    )?;
    if outdated {
        conn.execute_batch("DROP VIEW events")?;
    }
    Ok(())
}

/// The rollup columns added after ledgers were first written, each with
/// what one event adds to it (SQL over the `events` view).
const ADDED_ROLLUP_COLUMNS: [(&str, &str); 3] = [
    // Tokens without a price: the cost is short of them.
    (
        "unpriced_events",
        "cost_micros IS NULL AND total_tokens > 0",
    ),
    ("cache_write_tokens", "cache_write_tokens"),
    ("cache_write_1h_tokens", "cache_write_1h_tokens"),
];

/// Whether the ledger's `rollup_monthly` has `column` yet.
fn has_rollup_column(conn: &Connection, column: &str) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM pragma_table_info('rollup_monthly') WHERE name = ?1)",
        [column],
        |r| r.get(0),
    )
}

/// Rollups written before some of [`ADDED_ROLLUP_COLUMNS`] existed get those
/// columns, and their rows the sums of their stored events (one pass over
/// the events for all of them, in one transaction).
fn add_rollup_columns(conn: &Connection) -> rusqlite::Result<()> {
    let mut missing = Vec::new();
    for (column, per_event) in ADDED_ROLLUP_COLUMNS {
        let has = has_rollup_column(conn, column)?;
        if !has {
            missing.push((column, per_event));
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    let mut sql = String::from("BEGIN IMMEDIATE;");
    for (column, _) in &missing {
        for table in ["rollup_daily", "rollup_monthly"] {
            sql.push_str(&format!(
                "ALTER TABLE {table} ADD COLUMN {column} INTEGER NOT NULL DEFAULT 0;"
            ));
        }
    }
    let sums = |f: &dyn Fn(usize, &str, &str) -> String| {
        missing
            .iter()
            .enumerate()
            .map(|(i, (column, per_event))| f(i, column, per_event))
            .collect::<Vec<_>>()
            .join(", ")
    };
    sql.push_str(&format!(
        "CREATE TEMP TABLE added AS SELECT day, month, reseller, tenant, {}
             FROM events GROUP BY day, month, reseller, tenant;",
        sums(&|i, _, per_event| format!("SUM({per_event}) AS n{i}"))
    ));
    // Each rollup row gets its tenant's sums; a reseller's total row
    // (tenant '') the sums of its tenants'.
    let of_added = sums(&|i, _, _| format!("SUM(n{i}) AS n{i}"));
    let set = sums(&|i, column, _| format!("{column} = u.n{i}"));
    for (table, period) in [("rollup_daily", "day"), ("rollup_monthly", "month")] {
        sql.push_str(&format!(
            "UPDATE {table} SET {set} FROM
                 (SELECT {period} AS period, reseller, tenant, {of_added} FROM temp.added
                      WHERE tenant != '' GROUP BY 1, 2, 3
                  UNION ALL
                  SELECT {period}, reseller, '', {of_added} FROM temp.added GROUP BY 1, 2) AS u
                 WHERE {table}.period = u.period AND {table}.reseller = u.reseller
                 AND {table}.tenant = u.tenant;"
        ));
    }
    sql.push_str("DROP TABLE temp.added; COMMIT;");
    conn.execute_batch(&sql)
}

/// A ledger written when `events` was a table of stored columns: its events
/// move, by id and line, into `event_lines` (the view then reads the same
/// values out of the lines), in one transaction.
fn migrate_stored_events(conn: &Connection) -> rusqlite::Result<()> {
    let stored: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'events')",
        [],
        |r| r.get(0),
    )?;
    if !stored {
        return Ok(());
    }
    let started = Instant::now();
    conn.execute_batch(
        "BEGIN IMMEDIATE;
         INSERT INTO event_lines (event_id, raw) SELECT event_id, raw FROM events ORDER BY rowid
             ON CONFLICT (event_id) DO NOTHING;
         DROP TABLE events;
         COMMIT;",
    )?;
    let moved: i64 = conn.query_row("SELECT COUNT(*) FROM event_lines", [], |r| r.get(0))?;
    tracing::info!(
        events = moved,
        ms = started.elapsed().as_millis() as u64,
        "ledger: events moved to event_lines (events is now a view of them)"
    );
    Ok(())
}

/// A read-only connection for reports and quotas (WAL: never blocks the writer).
pub fn open_read(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(5))?;
    Ok(conn)
}

/// Sums of one rollup row within a batch.
#[derive(Default)]
struct Sums {
    requests: i64,
    billable: i64,
    prompt: i64,
    completion: i64,
    cached: i64,
    total: i64,
    estimated: i64,
    cost: i64,
    unpriced: i64,
    cache_write: i64,
    cache_write_1h: i64,
}

impl Sums {
    /// Counts one event.
    fn add(&mut self, e: &LedgerEvent) {
        let total = e.total() as i64;
        self.requests += 1;
        self.billable += i64::from(e.billable());
        self.prompt += e.prompt_tokens.unwrap_or(0) as i64;
        self.completion += e.completion_tokens.unwrap_or(0) as i64;
        self.cached += e.cached_tokens.unwrap_or(0) as i64;
        self.total += total;
        self.estimated += i64::from(e.estimated);
        self.cost += e.cost_micros.unwrap_or(0) as i64;
        // Tokens without a price: the cost above is short of them.
        self.unpriced += i64::from(e.cost_micros.is_none() && total > 0);
        self.cache_write += e.cache_write_tokens.unwrap_or(0) as i64;
        self.cache_write_1h += e.cache_write_1h_tokens.unwrap_or(0) as i64;
    }

    fn rollup(&self, tenant: String) -> Rollup {
        let n = |v: i64| v.max(0) as u64;
        Rollup {
            tenant,
            requests: n(self.requests),
            billable_requests: n(self.billable),
            prompt_tokens: n(self.prompt),
            completion_tokens: n(self.completion),
            cached_tokens: n(self.cached),
            total_tokens: n(self.total),
            estimated_events: n(self.estimated),
            cost_micros: n(self.cost),
            unpriced_events: n(self.unpriced),
            cache_write_tokens: n(self.cache_write),
            cache_write_1h_tokens: n(self.cache_write_1h),
        }
    }
}

pub struct SqliteSink {
    conn: Connection,
    /// The spool whose cursor this sink keeps (set by `resume`).
    spool: Option<String>,
    last_full: Instant,
}

impl SqliteSink {
    pub fn open(path: &Path) -> rusqlite::Result<Self> {
        Ok(Self {
            conn: open(path)?,
            spool: None,
            last_full: Instant::now(),
        })
    }

    /// Inserts the batch in one transaction; returns how many events were new.
    pub fn insert(&mut self, events: &[LedgerEvent]) -> rusqlite::Result<usize> {
        self.commit(events, None, false)
    }

    /// The batch, the rollups and (with a spool) the cursor in one
    /// transaction; `full` fsyncs the commit.
    fn commit(
        &mut self,
        events: &[LedgerEvent],
        through: Option<Position>,
        full: bool,
    ) -> rusqlite::Result<usize> {
        if full {
            self.conn.pragma_update(None, "synchronous", "FULL")?;
        }
        let result = self.transaction(events, through);
        if full {
            self.conn.pragma_update(None, "synchronous", "NORMAL")?;
            if result.is_ok() {
                self.last_full = Instant::now();
            }
        }
        result
    }

    /// The batch in one transaction. Its events go in [`ROWS_PER_INSERT`] to a
    /// statement: a statement's own cost (binding, cursors, halting: about 4k
    /// instructions, callgrind) was a third of an event's insert. A statement
    /// of many rows cannot say which of them were new, so a batch in which
    /// any event was already stored (a replay) is rolled back and inserted
    /// again one event at a time, skipping those.
    fn transaction(
        &mut self,
        events: &[LedgerEvent],
        through: Option<Position>,
    ) -> rusqlite::Result<usize> {
        let tx = self.conn.transaction()?;
        let mut added = 0;
        for chunk in events.chunks(ROWS_PER_INSERT) {
            let mut insert = tx.prepare_cached(&SQL.insert[chunk.len() - 1])?;
            for (i, e) in chunk.iter().enumerate() {
                insert.raw_bind_parameter(2 * i + 1, &*e.event_id)?;
                insert.raw_bind_parameter(2 * i + 2, e.raw)?;
            }
            added += insert.raw_execute()?;
        }
        if added < events.len() {
            tx.rollback()?;
            return self.transaction_row_by_row(events, through);
        }
        finish(tx, self.spool.as_deref(), events.iter(), through)?;
        Ok(added)
    }

    /// The batch with a statement per event, those already stored skipped.
    fn transaction_row_by_row(
        &mut self,
        events: &[LedgerEvent],
        through: Option<Position>,
    ) -> rusqlite::Result<usize> {
        let tx = self.conn.transaction()?;
        let mut new = Vec::with_capacity(events.len());
        {
            let mut insert = tx.prepare_cached(&SQL.insert[0])?;
            for e in events {
                if insert.execute(params![e.event_id, e.raw])? > 0 {
                    new.push(e);
                }
            }
        }
        let added = new.len();
        finish(tx, self.spool.as_deref(), new.into_iter(), through)?;
        Ok(added)
    }
}

/// The rollups of the batch's new events and the spool's cursor, then
/// the commit.
fn finish<'e, 'a: 'e>(
    tx: rusqlite::Transaction<'_>,
    spool: Option<&str>,
    new: impl Iterator<Item = &'e LedgerEvent<'a>>,
    through: Option<Position>,
) -> rusqlite::Result<()> {
    let mut rollups: BTreeMap<(bool, &str, &str, &str), Sums> = BTreeMap::new();
    for e in new {
        for (daily, period) in [(true, e.day()), (false, e.month())] {
            for tenant in [&*e.tenant, ""] {
                rollups
                    .entry((daily, period, &*e.reseller, tenant))
                    .or_default()
                    .add(e);
            }
        }
    }
    {
        let mut daily = tx.prepare_cached(&SQL.daily)?;
        let mut monthly = tx.prepare_cached(&SQL.monthly)?;
        for ((is_daily, period, reseller, tenant), r) in &rollups {
            let stmt = if *is_daily { &mut daily } else { &mut monthly };
            stmt.execute(params![
                period,
                reseller,
                tenant,
                r.requests,
                r.billable,
                r.prompt,
                r.completion,
                r.cached,
                r.total,
                r.estimated,
                r.cost,
                r.unpriced,
                r.cache_write,
                r.cache_write_1h,
            ])?;
        }
        if let (Some(spool), Some(pos)) = (spool, through) {
            tx.prepare_cached(SAVE_CURSOR)?.execute(params![
                spool,
                pos.segment as i64,
                pos.offset as i64
            ])?;
        }
    }
    tx.commit()
}

impl Sink for SqliteSink {
    fn name(&self) -> &str {
        "sqlite"
    }

    fn resume(&mut self, spool: &str) -> Result<Option<Position>, String> {
        self.spool = Some(spool.to_owned());
        self.conn
            .query_row(
                "SELECT segment, offset FROM spool_cursor WHERE spool = ?1",
                [spool],
                |r| {
                    Ok(Position {
                        segment: r.get::<_, i64>(0)?.max(0) as u64,
                        offset: r.get::<_, i64>(1)?.max(0) as u64,
                    })
                },
            )
            .optional()
            .map_err(|e| e.to_string())
    }

    fn deliver(&mut self, events: &[LedgerEvent], through: Position) -> Result<Ack, String> {
        let full = self.last_full.elapsed() >= DURABLE_EVERY;
        self.commit(events, Some(through), full)
            .map_err(|e| e.to_string())?;
        Ok(Ack {
            durable: full,
            cursor_stored: self.spool.is_some(),
        })
    }

    fn sync(&mut self, through: Position) -> Result<(), String> {
        self.commit(&[], Some(through), true)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

/// One row of a rollup.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Rollup {
    pub tenant: String,
    pub requests: u64,
    pub billable_requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cached_tokens: u64,
    pub total_tokens: u64,
    pub estimated_events: u64,
    pub cost_micros: u64,
    /// Events with tokens but no price (`cost_micros` null): `cost_micros`
    /// does not include them.
    pub unpriced_events: u64,
    /// Prompt tokens written to the provider's cache (part of
    /// `prompt_tokens`), priced above the input price...
    pub cache_write_tokens: u64,
    /// ...and of them those written for an hour, priced higher still.
    pub cache_write_1h_tokens: u64,
}

/// The monthly rollups of `reseller`'s tenants (`tenant = ''`, the reseller's
/// total, excluded), optionally of one tenant, sorted by tenant.
pub fn monthly_rollups(
    conn: &Connection,
    reseller: &str,
    month: &str,
    tenant: Option<&str>,
) -> rusqlite::Result<Vec<Rollup>> {
    // A ledger that no gateway of this version has opened yet (a report
    // run by the new binary before the gateway's restart, or on an archived
    // ledger) lacks the columns added since: they read as 0, as the lines
    // of the gateways that did not write them count (the read-only
    // connection cannot add them).
    let mut added = Vec::with_capacity(ADDED_ROLLUP_COLUMNS.len());
    for (column, _) in ADDED_ROLLUP_COLUMNS {
        let has = has_rollup_column(conn, column)?;
        added.push(if has {
            column.to_owned()
        } else {
            format!("0 AS {column}")
        });
    }
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT tenant, requests, billable_requests, prompt_tokens, completion_tokens, cached_tokens, \
         total_tokens, estimated_events, cost_micros, {} FROM rollup_monthly \
         WHERE period = ?1 AND reseller = ?2 AND tenant != '' AND (?3 IS NULL OR tenant = ?3) \
         ORDER BY tenant",
        added.join(", ")
    ))?;
    let rows = stmt.query_map(params![month, reseller, tenant], |r| {
        let n = |i: usize| r.get::<_, i64>(i).map(|v| v.max(0) as u64);
        Ok(Rollup {
            tenant: r.get(0)?,
            requests: n(1)?,
            billable_requests: n(2)?,
            prompt_tokens: n(3)?,
            completion_tokens: n(4)?,
            cached_tokens: n(5)?,
            total_tokens: n(6)?,
            estimated_events: n(7)?,
            cost_micros: n(8)?,
            unpriced_events: n(9)?,
            cache_write_tokens: n(10)?,
            cache_write_1h_tokens: n(11)?,
        })
    })?;
    rows.collect()
}

/// One gateway key's month: its tenant's rollup, restricted to the key.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct KeyRollup {
    /// `key_…`, as the admin API lists keys (`None`: events recorded before
    /// records named their key).
    pub key_id: Option<String>,
    #[serde(flatten)]
    pub rollup: Rollup,
}

/// `reseller`'s `month` (`YYYY-MM`) per tenant and gateway key, optionally of
/// one tenant, sorted by tenant and key. Keys have no rollups (a third b-tree
/// insert per event for a query an admin makes now and then), so this reads
/// the month's events, found by their ids: UUIDv7s of each request's end, so
/// the month's run of the primary key, plus two days for requests that
/// ended after it.
pub fn monthly_key_rollups(
    conn: &Connection,
    reseller: &str,
    month: &str,
    tenant: Option<&str>,
) -> rusqlite::Result<Vec<KeyRollup>> {
    let Some((from, to)) = month_bounds(month) else {
        return Ok(Vec::new());
    };
    let id_at = |ms: u64| format!("{:08x}-{:04x}", ms >> 16, ms & 0xffff);
    // The lines are read here with the shipper's own reader, not through
    // the `events` view: its dozen `json_extract`s cost about 20 µs an
    // event (6 s for a month of 280,000).
    let mut stmt =
        conn.prepare_cached("SELECT raw FROM event_lines WHERE event_id >= ?1 AND event_id < ?2")?;
    let mut rows = stmt.query(params![id_at(from), id_at(to + 2 * 86_400_000)])?;
    // By tenant, then key id ("" for events that name none, which no key id
    // is): looked up by the line's borrowed strings, copied once per row.
    let mut sums: BTreeMap<String, BTreeMap<String, Sums>> = BTreeMap::new();
    while let Some(row) = rows.next()? {
        let raw = row.get_ref(0)?.as_bytes()?;
        // A line no reader takes is left out here as the sinks leave it out.
        let Ok(e) = LedgerEvent::from_line(raw) else {
            continue;
        };
        if e.month() != month || e.reseller != reseller || tenant.is_some_and(|t| e.tenant != t) {
            continue;
        }
        let keys = match sums.get_mut(&*e.tenant) {
            Some(keys) => keys,
            None => sums.entry(e.tenant.to_string()).or_default(),
        };
        let key = e.key_id.as_deref().unwrap_or("");
        match keys.get_mut(key) {
            Some(s) => s.add(&e),
            None => keys.entry(key.to_owned()).or_default().add(&e),
        }
    }
    Ok(sums
        .into_iter()
        .flat_map(|(tenant, keys)| {
            keys.into_iter().map(move |(key, s)| KeyRollup {
                key_id: (!key.is_empty()).then_some(key),
                rollup: s.rollup(tenant.clone()),
            })
        })
        .collect())
}

/// The first millisecond of `month` (`YYYY-MM`, UTC) and of the month after,
/// as Unix milliseconds.
fn month_bounds(month: &str) -> Option<(u64, u64)> {
    let (y, m) = month.split_once('-')?;
    let (y, m): (i32, u8) = (y.parse().ok()?, m.parse().ok()?);
    let start = |y: i32, m: u8| -> Option<u64> {
        let date = time::Date::from_calendar_date(y, time::Month::try_from(m).ok()?, 1).ok()?;
        let secs = date.midnight().assume_utc().unix_timestamp();
        u64::try_from(secs).ok().map(|s| s * 1000)
    };
    let next = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
    Some((start(y, m)?, start(next.0, next.1)?))
}

/// Total tokens of one tenant in `month` (`YYYY-MM`); the reseller's total with
/// `tenant = None`.
pub fn monthly_tokens(
    conn: &Connection,
    reseller: &str,
    tenant: Option<&str>,
    month: &str,
) -> rusqlite::Result<u64> {
    let v: Option<i64> = conn
        .prepare_cached(
            "SELECT total_tokens FROM rollup_monthly WHERE period = ?1 AND reseller = ?2 AND tenant = ?3",
        )?
        .query_row(params![month, reseller, tenant.unwrap_or("")], |r| r.get(0))
        .optional()?;
    Ok(v.unwrap_or(0).max(0) as u64)
}

/// Number of event rows with `event_id` (0 or 1), for tests and audits.
pub fn count_events(conn: &Connection) -> rusqlite::Result<u64> {
    conn.query_row("SELECT COUNT(*) FROM event_lines", [], |r| {
        r.get::<_, i64>(0)
    })
    .map(|n| n.max(0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::types::Value as SqlValue;
    use serde_json::json;

    /// The `events` table as it was when every column was stored.
    const STORED_EVENTS: &str = "CREATE TABLE events (
        event_id TEXT PRIMARY KEY, v INTEGER NOT NULL, ts TEXT NOT NULL, day TEXT NOT NULL,
        month TEXT NOT NULL, request_id TEXT NOT NULL, reseller TEXT NOT NULL, tenant TEXT NOT NULL,
        key_owner TEXT, endpoint TEXT NOT NULL, requested_model TEXT, served_model TEXT,
        provider TEXT, attempts INTEGER NOT NULL, status INTEGER NOT NULL, outcome TEXT,
        error_code TEXT, prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL,
        cached_tokens INTEGER NOT NULL, total_tokens INTEGER NOT NULL, estimated INTEGER NOT NULL,
        stream INTEGER NOT NULL, client_disconnected INTEGER NOT NULL, latency_ms REAL NOT NULL,
        ttfb_ms REAL, cost_micros INTEGER, raw TEXT NOT NULL)";

    /// The insert of that table, with the values computed as it computed them.
    fn insert_stored(conn: &Connection, e: &LedgerEvent) {
        conn.execute(
            "INSERT INTO events VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, \
             ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?26, ?27, ?28)",
            params![
                e.event_id,
                e.v,
                e.ts,
                e.day(),
                e.month(),
                e.request_id,
                e.reseller,
                e.tenant,
                e.key_owner,
                e.endpoint,
                e.requested_model,
                e.served_model,
                e.provider,
                e.attempts.len() as i64,
                e.status,
                e.outcome,
                e.error_code,
                e.prompt_tokens.unwrap_or(0) as i64,
                e.completion_tokens.unwrap_or(0) as i64,
                e.cached_tokens.unwrap_or(0) as i64,
                e.total() as i64,
                e.estimated,
                e.stream,
                e.client_disconnected,
                e.latency_ms,
                e.ttfb_ms,
                e.cost_micros.map(|c| c as i64),
                e.raw,
            ],
        )
        .unwrap();
    }

    /// Events with every field, with none of the optional ones, with `null`s,
    /// escapes, non-ASCII text, integers written as floats and attempts.
    fn lines() -> Vec<String> {
        let full = json!({
            "v": 1, "event_id": "0193a-1", "ts": "2026-12-02T10:11:12.345Z",
            "request_id": "req-1", "reseller": "acme", "tenant": "dental",
            "endpoint": "chat.completions", "requested_model": "gpt-4o-mini",
            "served_model": "gpt-4o-mini-2024-07-18", "provider": "openai",
            "key_owner": "tenant", "status": 200, "outcome": "ok", "error_code": null,
            "prompt_tokens": 11, "completion_tokens": 7, "cached_tokens": 3, "total_tokens": 18,
            "estimated": false, "stream": true, "client_disconnected": false,
            "latency_ms": 12.5, "ttfb_ms": 3.25, "cost_micros": 1234,
            "attempts": [{"provider": "a", "outcome": "upstream_5xx"}, {"provider": "openai", "outcome": "ok"}],
        });
        let minimal = json!({
            "event_id": "0193a-2", "ts": "2026-11-30T23:59:59Z", "request_id": "req-2",
            "reseller": "acme", "tenant": "",
        });
        let nulls = json!({
            "v": 1, "event_id": "0193a-3", "ts": "2026-12-01T00:00:00Z", "request_id": "req-3",
            "reseller": "globex", "tenant": "realty", "endpoint": "embeddings",
            "requested_model": null, "served_model": null, "provider": null, "key_owner": null,
            "status": 499, "outcome": "client_disconnected", "error_code": "client_disconnected",
            "prompt_tokens": 5, "completion_tokens": null, "cached_tokens": null,
            "total_tokens": null, "estimated": true, "stream": false,
            "client_disconnected": true, "latency_ms": null, "ttfb_ms": null,
            "cost_micros": null, "attempts": [],
        });
        let escaped = json!({
            "v": 1, "event_id": "0193a-4", "ts": "2026-12-02T10:11:12Z",
            "request_id": "r\"q\\4\u{1}", "reseller": "acmé", "tenant": "dental \u{1F9B7}",
            "endpoint": "messages", "requested_model": "m\nodel", "status": 200,
            "outcome": "ok", "prompt_tokens": 1, "completion_tokens": 2,
            "latency_ms": 7.0, "ttfb_ms": 1.0, "cost_micros": 0,
        });
        [full, minimal, nulls, escaped]
            .iter()
            .map(|v| v.to_string())
            .collect()
    }

    fn rows(conn: &Connection) -> Vec<Vec<SqlValue>> {
        let mut stmt = conn
            .prepare(
                "SELECT event_id, v, ts, day, month, request_id, reseller, tenant, key_owner, \
                 endpoint, requested_model, served_model, provider, attempts, status, outcome, \
                 error_code, prompt_tokens, completion_tokens, cached_tokens, total_tokens, \
                 estimated, stream, client_disconnected, latency_ms, ttfb_ms, cost_micros, raw \
                 FROM events ORDER BY event_id",
            )
            .unwrap();
        stmt.query_map([], |r| (0..28).map(|i| r.get::<_, SqlValue>(i)).collect())
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    /// A month's events are found by their ids' run: its first millisecond
    /// to the next month's, across a year's end too.
    #[test]
    fn a_months_bounds_are_its_first_millisecond_and_the_next_months() {
        assert_eq!(
            month_bounds("2026-12"),
            Some((1_796_083_200_000, 1_798_761_600_000))
        );
        assert_eq!(
            month_bounds("2026-02").map(|(a, b)| b - a),
            Some(28 * 86_400_000)
        );
        assert_eq!(month_bounds("2026-13"), None);
    }

    #[test]
    fn the_view_reads_what_the_stored_columns_held_and_old_ledgers_move_over() {
        let dir = tempfile::tempdir().unwrap();
        let lines = lines();
        let events = parsed(&lines);

        // A ledger of the stored layout, written as that code wrote it.
        let old_path = dir.path().join("old.db");
        let old = Connection::open(&old_path).unwrap();
        old.execute_batch(STORED_EVENTS).unwrap();
        for e in &events {
            insert_stored(&old, e);
        }
        let stored = rows(&old);
        drop(old);
        assert_eq!(stored.len(), 4);

        // A new ledger: only the id and the line are written.
        let new_path = dir.path().join("new.db");
        let mut sink = SqliteSink::open(&new_path).unwrap();
        assert_eq!(sink.insert(&events).unwrap(), 4);
        assert_eq!(
            rows(&sink.conn),
            stored,
            "the view's columns = the stored columns"
        );
        assert_eq!(
            sink.insert(&events).unwrap(),
            0,
            "a replay is still ignored"
        );

        // The old ledger, opened: migrated, same rows, and it keeps working.
        let mut migrated = SqliteSink::open(&old_path).unwrap();
        let sql: String = migrated
            .conn
            .query_row(
                "SELECT sql FROM sqlite_master WHERE name = 'events'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert!(sql.starts_with("CREATE VIEW"), "{sql}");
        assert_eq!(rows(&migrated.conn), stored);
        assert_eq!(
            migrated.insert(&events).unwrap(),
            0,
            "moved ids still dedupe"
        );
        let extra = json!({"event_id": "0193b", "ts": "2026-12-03T00:00:00Z",
            "request_id": "r", "reseller": "acme", "tenant": "dental"})
        .to_string();
        let extra = LedgerEvent::from_line(extra.as_bytes()).unwrap();
        assert_eq!(migrated.insert(&[extra]).unwrap(), 1);
        drop(migrated);
        // Opening again does not migrate twice.
        let reopened = SqliteSink::open(&old_path).unwrap();
        assert_eq!(rows(&reopened.conn).len(), 5);
    }

    /// `n` events of tenant `t` of reseller `r`, ids `{prefix}-{i}`, each of
    /// 10 prompt and `i` completion tokens.
    fn numbered(prefix: &str, n: usize) -> Vec<String> {
        (0..n)
            .map(|i| {
                json!({
                    "v": 1, "event_id": format!("{prefix}-{i:04}"), "ts": "2026-12-05T10:00:00Z",
                    "request_id": format!("req-{i}"), "reseller": "r", "tenant": "t",
                    "status": 200, "outcome": "ok", "prompt_tokens": 10, "completion_tokens": i,
                })
                .to_string()
            })
            .collect()
    }

    /// Batches longer than one statement's rows (and of every remainder) store
    /// every event; a batch with events already stored (a replay, in part or
    /// in whole) adds and counts only the new ones, whichever chunk they are in.
    #[test]
    fn batches_of_many_rows_store_each_event_once_and_count_only_new_ones() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = SqliteSink::open(&dir.path().join("l.db")).unwrap();
        let month = |sink: &SqliteSink| {
            let r = monthly_rollups(&sink.conn, "r", "2026-12", Some("t")).unwrap();
            (r[0].requests, r[0].completion_tokens)
        };
        let total = |n: u64| n * (n - 1) / 2;

        let first = numbered("a", 2 * ROWS_PER_INSERT + 5);
        assert_eq!(sink.insert(&parsed(&first)).unwrap(), first.len());
        assert_eq!(count_events(&sink.conn).unwrap(), first.len() as u64);
        let n = first.len() as u64;
        assert_eq!(month(&sink), (n, total(n)));

        // The same batch again: nothing new.
        assert_eq!(sink.insert(&parsed(&first)).unwrap(), 0);
        assert_eq!(month(&sink), (n, total(n)));

        // Old events mixed with new ones, the old in the middle chunk: only
        // the new are stored and counted.
        let more = numbered("a", 3 * ROWS_PER_INSERT);
        let added = more.len() - first.len();
        assert_eq!(sink.insert(&parsed(&more)).unwrap(), added);
        let m = more.len() as u64;
        assert_eq!(count_events(&sink.conn).unwrap(), m);
        assert_eq!(month(&sink), (m, total(m)));

        // Every length up to a statement's rows, and one more.
        for len in 1..=ROWS_PER_INSERT + 1 {
            let batch = numbered(&format!("b{len}"), len);
            assert_eq!(sink.insert(&parsed(&batch)).unwrap(), len, "{len}");
        }
        let b = (ROWS_PER_INSERT + 1) * (ROWS_PER_INSERT + 2) / 2;
        assert_eq!(count_events(&sink.conn).unwrap(), m + b as u64);
    }

    /// A statement of many rows that may abort halfway makes SQLite copy
    /// every page it touches into a statement journal (a temporary file);
    /// the ledger's inserts have no instruction that aborts the statement
    /// (`Halt`/`HaltIfNull` with `OE_Abort`, 2, as `NOT NULL` on `raw`
    /// compiled to under `ON CONFLICT DO NOTHING`).
    #[test]
    fn inserts_of_many_rows_cannot_abort_halfway() {
        const OE_ABORT: i64 = 2;
        let dir = tempfile::tempdir().unwrap();
        let conn = open(&dir.path().join("l.db")).unwrap();
        for rows in [1, 2, ROWS_PER_INSERT] {
            let sql = format!("EXPLAIN {}", insert_rows_sql(rows));
            let mut stmt = conn.prepare(&sql).unwrap();
            let mut rows_out = stmt.raw_query();
            let mut program: Vec<(String, i64)> = Vec::new();
            while let Some(r) = rows_out.next().unwrap() {
                program.push((r.get(1).unwrap(), r.get(3).unwrap()));
            }
            assert!(program.iter().any(|(op, _)| op == "Insert"), "{program:?}");
            let aborts: Vec<_> = program
                .iter()
                .filter(|(op, p2)| op.starts_with("Halt") && *p2 == OE_ABORT)
                .collect();
            assert!(aborts.is_empty(), "{rows} rows: {aborts:?}");
        }
    }

    fn parsed(lines: &[String]) -> Vec<LedgerEvent<'_>> {
        lines
            .iter()
            .map(|l| LedgerEvent::from_line(l.as_bytes()).unwrap())
            .collect()
    }

    fn page_size(conn: &Connection) -> u32 {
        conn.query_row("PRAGMA page_size", [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn a_new_ledger_has_large_pages_and_an_existing_one_keeps_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let lines = lines();
        let events = parsed(&lines);

        let mut sink = SqliteSink::open(&dir.path().join("new.db")).unwrap();
        assert_eq!(page_size(&sink.conn), PAGE_SIZE);
        assert_eq!(sink.insert(&events).unwrap(), 4);

        // A ledger created with SQLite's default pages (as before): opening it
        // must not fail or half-convert it, and it keeps taking events.
        let old_path = dir.path().join("old.db");
        let old = Connection::open(&old_path).unwrap();
        old.pragma_update(None, "journal_mode", "WAL").unwrap();
        old.execute(EVENT_LINES, []).unwrap();
        assert_eq!(page_size(&old), 4096);
        drop(old);
        let mut reopened = SqliteSink::open(&old_path).unwrap();
        assert_eq!(page_size(&reopened.conn), 4096);
        assert_eq!(reopened.insert(&events).unwrap(), 4);
        assert_eq!(
            reopened.insert(&events).unwrap(),
            0,
            "a replay is still ignored"
        );
    }
    /// A ledger whose rollups predate `unpriced_events` gets the column on
    /// open, filled from its stored events (tenant rows and the reseller's).
    #[test]
    fn older_rollups_get_their_unpriced_events_counted_from_the_events() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.db");
        let line = |id: &str, tenant: &str, day: &str, tokens: u64, cost: Option<u64>| {
            json!({"event_id": id, "ts": format!("2026-12-{day}T10:00:00Z"), "request_id": id,
                "reseller": "r", "tenant": tenant, "outcome": "ok", "prompt_tokens": tokens,
                "completion_tokens": 0, "cost_micros": cost})
            .to_string()
        };
        let lines = [
            line("e1", "a", "01", 10, None),
            line("e2", "a", "02", 10, None),
            line("e3", "a", "02", 10, Some(4)),
            line("e4", "b", "02", 10, None),
            line("e5", "b", "02", 0, None),
        ];
        let mut sink = SqliteSink::open(&path).unwrap();
        sink.insert(&parsed(&lines)).unwrap();
        let unpriced = |conn: &Connection| {
            let tenants: Vec<_> = monthly_rollups(conn, "r", "2026-12", None)
                .unwrap()
                .into_iter()
                .map(|r| (r.tenant, r.unpriced_events))
                .collect();
            let q = |sql: &str| conn.query_row(sql, [], |r| r.get::<_, i64>(0)).unwrap();
            let total = q("SELECT unpriced_events FROM rollup_monthly WHERE tenant = ''");
            let day = q("SELECT unpriced_events FROM rollup_daily WHERE tenant = '' AND period = '2026-12-02'");
            (tenants, total, day)
        };
        let want = (vec![("a".to_owned(), 2), ("b".to_owned(), 1)], 3, 2);
        assert_eq!(unpriced(&sink.conn), want);
        sink.conn
            .execute_batch(
                "ALTER TABLE rollup_daily DROP COLUMN unpriced_events;
                 ALTER TABLE rollup_monthly DROP COLUMN unpriced_events;",
            )
            .unwrap();
        drop(sink);
        let reopened = SqliteSink::open(&path).unwrap();
        assert_eq!(unpriced(&reopened.conn), want);
    }

    /// A ledger written before cache writes were recorded: its `events` view
    /// is created again with the new columns, and its rollups get them,
    /// summed from the events (tenant rows and the reseller's), lines without
    /// the fields counting 0.
    #[test]
    fn older_ledgers_get_cache_writes_in_their_view_and_rollups() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.db");
        let line = |id: &str, tenant: &str, day: &str, writes: Option<(u64, u64)>| {
            let mut v = json!({"event_id": id, "ts": format!("2026-12-{day}T10:00:00Z"),
                "request_id": id, "reseller": "r", "tenant": tenant, "outcome": "ok",
                "prompt_tokens": 1000, "completion_tokens": 1, "cost_micros": 1});
            if let Some((all, hour)) = writes {
                v["cache_write_tokens"] = json!(all);
                v["cache_write_1h_tokens"] = json!(hour);
            }
            v.to_string()
        };
        let lines = [
            line("e1", "a", "01", Some((400, 100))),
            line("e2", "a", "02", Some((18, 0))),
            line("e3", "a", "02", None),
            line("e4", "b", "02", Some((7, 7))),
        ];
        let mut sink = SqliteSink::open(&path).unwrap();
        sink.insert(&parsed(&lines)).unwrap();
        let sums = |conn: &Connection| {
            let tenants: Vec<_> = monthly_rollups(conn, "r", "2026-12", None)
                .unwrap()
                .into_iter()
                .map(|r| (r.tenant, r.cache_write_tokens, r.cache_write_1h_tokens))
                .collect();
            let q = |sql: &str| {
                conn.query_row(sql, [], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))
                    .unwrap()
            };
            let total = q(
                "SELECT cache_write_tokens, cache_write_1h_tokens FROM rollup_monthly \
                 WHERE tenant = ''",
            );
            let day = q(
                "SELECT cache_write_tokens, cache_write_1h_tokens FROM rollup_daily \
                 WHERE tenant = '' AND period = '2026-12-02'",
            );
            let view = q("SELECT SUM(cache_write_tokens), SUM(cache_write_1h_tokens) FROM events");
            (tenants, total, day, view)
        };
        let want = (
            vec![("a".to_owned(), 418, 100), ("b".to_owned(), 7, 7)],
            (425, 107),
            (25, 7),
            (425, 107),
        );
        assert_eq!(sums(&sink.conn), want);
        // The layout before: a view without the columns, rollups without them.
        sink.conn
            .execute_batch(
                "DROP VIEW events;
                 CREATE VIEW events AS SELECT event_id, json_extract(raw, '$.ts') AS ts, raw
                     FROM event_lines;
                 ALTER TABLE rollup_daily DROP COLUMN cache_write_tokens;
                 ALTER TABLE rollup_daily DROP COLUMN cache_write_1h_tokens;
                 ALTER TABLE rollup_monthly DROP COLUMN cache_write_tokens;
                 ALTER TABLE rollup_monthly DROP COLUMN cache_write_1h_tokens;",
            )
            .unwrap();
        drop(sink);
        // Read as it is (a report before the gateway's restart): the
        // missing columns read as 0, the rest as stored.
        let read = open_read(&path).unwrap();
        let before: Vec<_> = monthly_rollups(&read, "r", "2026-12", None)
            .unwrap()
            .into_iter()
            .map(|r| {
                (
                    r.tenant,
                    r.prompt_tokens,
                    r.cache_write_tokens,
                    r.cache_write_1h_tokens,
                )
            })
            .collect();
        assert_eq!(
            before,
            [("a".to_owned(), 3000, 0, 0), ("b".to_owned(), 1000, 0, 0)]
        );
        drop(read);
        let mut reopened = SqliteSink::open(&path).unwrap();
        assert_eq!(sums(&reopened.conn), want);
        // And it counts on.
        let more = [line("e5", "b", "02", Some((3, 1)))];
        reopened.insert(&parsed(&more)).unwrap();
        let (tenants, total, ..) = sums(&reopened.conn);
        assert_eq!(tenants[1], ("b".to_owned(), 10, 8));
        assert_eq!(total, (428, 108));
    }

    /// A ledger whose view predates `key_id` (one of 2026-12-06, with the
    /// cache writes) gets it when opened, read from the lines that hold it.
    #[test]
    fn a_view_without_key_ids_is_made_again_with_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.db");
        let line = |id: &str, key: Option<&str>| {
            let mut v = json!({"event_id": id, "ts": "2026-12-02T10:00:00Z",
                "request_id": id, "reseller": "r", "tenant": "t", "outcome": "ok"});
            if let Some(k) = key {
                v["key_id"] = json!(k);
            }
            v.to_string()
        };
        let lines = [line("e1", Some("key_0123456789ab")), line("e2", None)];
        let mut sink = SqliteSink::open(&path).unwrap();
        sink.insert(&parsed(&lines)).unwrap();
        let view = SCHEMA
            [SCHEMA.find("CREATE VIEW").unwrap()..SCHEMA.find("FROM event_lines;").unwrap()]
            .replace("    json_extract(raw, '$.key_id') AS key_id,\n", "");
        assert!(!view.contains("key_id") && view.contains("cache_write_1h_tokens"));
        sink.conn
            .execute_batch(&format!("DROP VIEW events; {view} FROM event_lines;"))
            .unwrap();
        assert!(sink.conn.prepare("SELECT key_id FROM events").is_err());
        drop(sink);
        let reopened = SqliteSink::open(&path).unwrap();
        let keys: Vec<Option<String>> = reopened
            .conn
            .prepare("SELECT key_id FROM events ORDER BY event_id")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(keys, [Some("key_0123456789ab".to_owned()), None]);
    }
}
