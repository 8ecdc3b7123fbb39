//! Order budgets: a rolling hour of orders for the whole gateway and one per
//! reseller, so that a flood of names (random SNI, a reseller adding hundreds
//! of domains, a broken DNS record retried by every client) cannot spend the
//! CA's limits. Plus the backoff after a failed order.

use std::collections::{HashMap, VecDeque};

const HOUR: i64 = 3600;

/// Rolling-hour order counters (Unix seconds of each order placed).
#[derive(Debug)]
pub struct OrderBudget {
    global_per_hour: u32,
    reseller_per_hour: u32,
    global: VecDeque<i64>,
    resellers: HashMap<String, VecDeque<i64>>,
}

/// Why no order may be placed now, and when one may.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub reason: String,
    pub retry_at: i64,
}

impl OrderBudget {
    pub fn new(global_per_hour: u32, reseller_per_hour: u32) -> Self {
        Self {
            global_per_hour,
            reseller_per_hour,
            global: VecDeque::new(),
            resellers: HashMap::new(),
        }
    }

    /// Takes one order from both budgets, or neither.
    pub fn take(&mut self, reseller: &str, now: i64) -> Result<(), Refused> {
        prune(&mut self.global, now);
        if self.global.len() >= self.global_per_hour as usize {
            return Err(Refused {
                reason: format!(
                    "the gateway's limit of {} certificate orders per hour is reached",
                    self.global_per_hour
                ),
                retry_at: self.global.front().map_or(now, |t| t + HOUR),
            });
        }
        let window = self.resellers.entry(reseller.to_owned()).or_default();
        prune(window, now);
        if window.len() >= self.reseller_per_hour as usize {
            return Err(Refused {
                reason: format!(
                    "reseller `{reseller}` reached its limit of {} certificate orders per hour",
                    self.reseller_per_hour
                ),
                retry_at: window.front().map_or(now, |t| t + HOUR),
            });
        }
        window.push_back(now);
        self.global.push_back(now);
        Ok(())
    }
}

fn prune(window: &mut VecDeque<i64>, now: i64) {
    while window.front().is_some_and(|t| *t + HOUR <= now) {
        window.pop_front();
    }
}

/// Seconds to wait after the `failures`-th consecutive failure: `base`,
/// doubling, capped at `max`.
pub fn backoff_secs(failures: u32, base: u64, max: u64) -> u64 {
    let shift = failures.saturating_sub(1).min(32);
    base.saturating_mul(1u64 << shift).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_reseller_and_global_budgets() {
        let mut b = OrderBudget::new(3, 2);
        assert!(b.take("acme", 0).is_ok());
        assert!(b.take("acme", 1).is_ok());
        let refused = b.take("acme", 2).unwrap_err();
        assert!(refused.reason.contains("acme"));
        assert_eq!(refused.retry_at, HOUR);
        assert!(b.take("globex", 3).is_ok());
        assert!(b.take("globex", 4).unwrap_err().reason.contains("gateway"));
        // An hour later the first orders have rolled out of the window.
        assert!(b.take("acme", HOUR + 1).is_ok());
    }

    #[test]
    fn backoff_doubles_to_a_cap() {
        assert_eq!(backoff_secs(1, 60, 3600), 60);
        assert_eq!(backoff_secs(2, 60, 3600), 120);
        assert_eq!(backoff_secs(7, 60, 3600), 3600);
        assert_eq!(backoff_secs(100, 60, 3600), 3600);
    }
}
