//! Where spooled events are shipped. A sink receives batches in spool order and
//! acknowledges a batch by returning `Ok`; only then does the spool move that
//! sink's cursor. A batch may be delivered again (after an error, or a crash
//! before the cursor was saved), so every sink must be idempotent by `event_id`.
//! Sinks run on their own threads: a slow or dead sink delays only its own
//! cursor, never a request.

pub mod sqlite;
pub mod webhook;

use super::event::LedgerEvent;

pub trait Sink: Send {
    /// A stable name: the spool keeps one cursor per name.
    fn name(&self) -> &str;
    /// Stores the batch; `Ok` means every event of it is durably stored (or was
    /// already).
    fn deliver(&mut self, events: &[LedgerEvent]) -> Result<(), String>;
}
