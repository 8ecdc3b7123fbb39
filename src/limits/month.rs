//! Calendar months (UTC) and where a month's real token totals come from
//! ([`MonthlyUsageSource`], the durable usage ledger in production).

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

/// A calendar month in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Month {
    pub year: i32,
    /// 1 to 12.
    pub month: u8,
}

impl Month {
    pub fn current() -> Self {
        Self::of(time::OffsetDateTime::now_utc())
    }

    pub fn of(t: time::OffsetDateTime) -> Self {
        let t = t.to_offset(time::UtcOffset::UTC);
        Self {
            year: t.year(),
            month: u8::from(t.month()),
        }
    }

    pub fn next(self) -> Self {
        if self.month >= 12 {
            Self {
                year: self.year + 1,
                month: 1,
            }
        } else {
            Self {
                year: self.year,
                month: self.month + 1,
            }
        }
    }

    /// Time from now until this month is over (zero if it already is).
    pub fn remaining(self) -> Duration {
        let next = self.next();
        let start = time::Month::try_from(next.month)
            .ok()
            .and_then(|m| time::Date::from_calendar_date(next.year, m, 1).ok())
            .map(|d| d.midnight().assume_utc());
        match start {
            Some(start) => {
                let left = start - time::OffsetDateTime::now_utc();
                Duration::try_from(left).unwrap_or(Duration::ZERO)
            }
            None => Duration::ZERO,
        }
    }
}

impl fmt::Display for Month {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}", self.year, self.month)
    }
}

/// The real tokens already counted in a month, read when a limiter first needs
/// a tenant's (or reseller's) month, e.g. after a restart. The limiter keeps the
/// count up to date itself from then on, so this is read once per key and month
/// and may be a database query.
pub trait MonthlyUsageSource: Send + Sync {
    /// Tokens of `tenant` of `reseller`, or with `tenant: None` of all the
    /// reseller's tenants together, in `month`.
    fn month_tokens(&self, reseller: &str, tenant: Option<&str>, month: Month) -> u64;
}

/// No history: every month starts at zero (a gateway without a ledger).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoMonthlyUsage;

impl MonthlyUsageSource for NoMonthlyUsage {
    fn month_tokens(&self, _: &str, _: Option<&str>, _: Month) -> u64 {
        0
    }
}

type MonthKey = (String, Option<String>, Month);

/// An in-memory source (tests, and a stand-in ledger): totals set or added by
/// key. Adding to a tenant does not add to its reseller; set both.
#[derive(Debug, Default)]
pub struct MemoryMonthlyUsage {
    totals: Mutex<HashMap<MonthKey, u64>>,
}

impl MemoryMonthlyUsage {
    pub fn set(&self, reseller: &str, tenant: Option<&str>, month: Month, tokens: u64) {
        let mut m = self.totals.lock().unwrap_or_else(|e| e.into_inner());
        m.insert(
            (reseller.to_owned(), tenant.map(str::to_owned), month),
            tokens,
        );
    }

    pub fn add(&self, reseller: &str, tenant: Option<&str>, month: Month, tokens: u64) {
        let mut m = self.totals.lock().unwrap_or_else(|e| e.into_inner());
        *m.entry((reseller.to_owned(), tenant.map(str::to_owned), month))
            .or_default() += tokens;
    }
}

impl MonthlyUsageSource for MemoryMonthlyUsage {
    fn month_tokens(&self, reseller: &str, tenant: Option<&str>, month: Month) -> u64 {
        let m = self.totals.lock().unwrap_or_else(|e| e.into_inner());
        m.get(&(reseller.to_owned(), tenant.map(str::to_owned), month))
            .copied()
            .unwrap_or(0)
    }
}
