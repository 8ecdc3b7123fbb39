//! Redis sink, for several gateway instances sharing one ledger: every event
//! is appended to a stream and counted into daily rollup hashes, deduplicated
//! by `event_id`, in one Lua script per batch (atomic: a batch is applied whole
//! or, on a connection error, retried whole).
//!
//! Keys (`P` is `key_prefix`, default `{livery}:usage`; the braces are a
//! cluster hash tag so that every key of the script lives in one slot):
//!
//! * `P:events`: the stream; one entry per event, fields `event_id` and
//!   `event` (the event's JSON line exactly as spooled). Capped with
//!   `MAXLEN ~ stream_maxlen` when that is set (0: uncapped).
//! * `P:daily:<YYYY-MM-DD>:<reseller>:<tenant>` and
//!   `P:daily:<YYYY-MM-DD>:<reseller>` (the reseller's total): hashes with
//!   `requests`, `billable_requests`, `prompt_tokens`, `completion_tokens`,
//!   `cached_tokens`, `total_tokens`, `estimated_events`, `cost_micros`,
//!   `cache_write_tokens`, `cache_write_1h_tokens` (a count of 0 is not
//!   added, so a missing field reads as 0).
//! * `P:seen:<event_id>`: the dedup marker, `SET NX` with a TTL of
//!   `dedup_ttl_secs` (default 7 days). An event replayed after its marker
//!   expired would count twice: keep the TTL above the longest outage the
//!   spool is sized for (`spool_max_bytes`).
//!
//! The sink talks to Redis over a blocking connection on its own shipping
//! thread, with connect/read/write timeouts; after an error the connection is
//! dropped and reopened on the next try (the shipper backs off).

use super::{Ack, Sink};
use crate::usage::event::LedgerEvent;
use crate::usage::spool::Position;
use std::time::Duration;

/// Per event: the dedup marker, the stream entry, then both rollups.
const SCRIPT: &str = r#"
local prefix = ARGV[1]
local ttl = tonumber(ARGV[2])
local maxlen = tonumber(ARGV[3])
local added = 0
local fields = {'requests', 'billable_requests', 'prompt_tokens', 'completion_tokens',
                'cached_tokens', 'total_tokens', 'estimated_events', 'cost_micros',
                'cache_write_tokens', 'cache_write_1h_tokens'}
local i = 4
while i <= #ARGV do
  local id, day, reseller, tenant, raw = ARGV[i], ARGV[i+1], ARGV[i+2], ARGV[i+3], ARGV[i+4]
  if redis.call('SET', prefix .. ':seen:' .. id, '1', 'NX', 'EX', ttl) then
    if maxlen > 0 then
      redis.call('XADD', prefix .. ':events', 'MAXLEN', '~', maxlen, '*', 'event_id', id, 'event', raw)
    else
      redis.call('XADD', prefix .. ':events', '*', 'event_id', id, 'event', raw)
    end
    local base = prefix .. ':daily:' .. day .. ':' .. reseller
    for _, key in ipairs({base .. ':' .. tenant, base}) do
      for f = 1, 10 do
        local n = tonumber(ARGV[i + 4 + f])
        if n ~= 0 then redis.call('HINCRBY', key, fields[f], n) end
      end
    end
    added = added + 1
  end
  i = i + 15
end
return added
"#;

/// How the Redis sink is set up (from `[usage.redis]`).
#[derive(Debug, Clone)]
pub struct RedisSinkOptions {
    pub url: String,
    pub key_prefix: String,
    pub dedup_ttl: Duration,
    /// Approximate cap of the stream (0: uncapped).
    pub stream_maxlen: u64,
    pub timeout: Duration,
    pub batch_max: usize,
}

pub struct RedisSink {
    opts: RedisSinkOptions,
    client: redis::Client,
    conn: Option<redis::Connection>,
    script: redis::Script,
}

impl RedisSink {
    /// Checks the URL; connects lazily (on the first delivery).
    pub fn new(opts: RedisSinkOptions) -> Result<Self, String> {
        let client =
            redis::Client::open(opts.url.as_str()).map_err(|e| format!("redis sink url: {e}"))?;
        Ok(Self {
            opts: RedisSinkOptions {
                batch_max: opts.batch_max.max(1),
                ..opts
            },
            client,
            conn: None,
            script: redis::Script::new(SCRIPT),
        })
    }

    /// Applies one chunk; returns how many events were new.
    fn apply(&mut self, events: &[LedgerEvent]) -> redis::RedisResult<u64> {
        let mut inv = self.script.prepare_invoke();
        inv.arg(&self.opts.key_prefix)
            .arg(self.opts.dedup_ttl.as_secs().max(1))
            .arg(self.opts.stream_maxlen);
        for e in events {
            let billable = e.billable();
            inv.arg(&*e.event_id)
                .arg(e.day())
                .arg(&*e.reseller)
                .arg(&*e.tenant)
                .arg(e.raw)
                .arg(1u64)
                .arg(u64::from(billable))
                .arg(e.prompt_tokens.unwrap_or(0))
                .arg(e.completion_tokens.unwrap_or(0))
                .arg(e.cached_tokens.unwrap_or(0))
                .arg(e.total())
                .arg(u64::from(e.estimated))
                .arg(e.cost_micros.unwrap_or(0))
                .arg(e.cache_write_tokens.unwrap_or(0))
                .arg(e.cache_write_1h_tokens.unwrap_or(0));
        }
        let conn = connection(&self.client, &mut self.conn, self.opts.timeout)?;
        inv.invoke(conn)
    }
}

/// The open connection, opened (with timeouts) when there is none.
fn connection<'c>(
    client: &redis::Client,
    slot: &'c mut Option<redis::Connection>,
    timeout: Duration,
) -> redis::RedisResult<&'c mut redis::Connection> {
    if slot.is_none() {
        let c = client.get_connection_with_timeout(timeout)?;
        c.set_read_timeout(Some(timeout))?;
        c.set_write_timeout(Some(timeout))?;
        *slot = Some(c);
    }
    match slot.as_mut() {
        Some(c) => Ok(c),
        None => Err(redis::RedisError::from((
            redis::ErrorKind::ClientError,
            "no connection",
        ))),
    }
}

impl Sink for RedisSink {
    fn name(&self) -> &str {
        "redis"
    }

    fn deliver(&mut self, events: &[LedgerEvent], _through: Position) -> Result<Ack, String> {
        let batch = self.opts.batch_max;
        for chunk in events.chunks(batch) {
            if let Err(e) = self.apply(chunk) {
                // A timed-out or broken connection may hold a half-read reply.
                self.conn = None;
                return Err(format!("redis: {e}"));
            }
        }
        Ok(Ack {
            durable: true,
            cursor_stored: false,
        })
    }
}
