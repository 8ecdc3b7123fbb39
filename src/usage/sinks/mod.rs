//! Where spooled events are shipped. A sink receives batches in spool order and
//! acknowledges a batch by returning `Ok`; only then does the shipper move that
//! sink's cursor. A batch may be delivered again (after an error, or a crash
//! before the cursor was saved), so every sink must be idempotent by `event_id`.
//! Sinks run on their own threads: a slow or dead sink delays only its own
//! cursor, never a request.
//!
//! Cursors: a sink that can store the spool cursor in the same transaction as
//! the batch (SQLite) says so in its [`Ack`] and hands it back in
//! [`Sink::resume`]; for the others the shipper keeps a `cursor-<name>` file in
//! the spool, rewritten at most once a second (a stale cursor only replays
//! events, which the sink deduplicates).
//!
//! Durability: an [`Ack`] that is not `durable` (SQLite commits with
//! `synchronous = NORMAL`) keeps the batch's segments in the spool until a later
//! durable ack or [`Sink::sync`], so a power cut never loses an event that the
//! spool already let go of.

pub mod redis;
pub mod sqlite;
pub mod webhook;

use super::event::LedgerEvent;
use super::spool::Position;

/// What a sink says of a batch it stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    /// Everything acknowledged so far survives a power cut.
    pub durable: bool,
    /// The sink stored `through` as its cursor atomically with the batch.
    pub cursor_stored: bool,
}

pub trait Sink: Send {
    /// A stable name: the spool keeps one cursor per name.
    fn name(&self) -> &str;
    /// Called once, on the sink's thread, before the first delivery, with the
    /// spool's identity (its canonical directory); returns the cursor the sink
    /// stored for that spool, if it stores cursors.
    fn resume(&mut self, spool: &str) -> Result<Option<Position>, String> {
        let _ = spool;
        Ok(None)
    }
    /// Stores the batch, whose last line ends at `through`; `Ok` means every
    /// event of it is stored (or was already).
    fn deliver(&mut self, events: &[LedgerEvent], through: Position) -> Result<Ack, String>;
    /// Makes everything acknowledged through `through` durable (called when
    /// the last ack was not and the shipper is idle or a second has passed).
    fn sync(&mut self, through: Position) -> Result<(), String> {
        let _ = through;
        Ok(())
    }
}
