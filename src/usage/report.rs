//! `livery usage report`: a reseller's month from the SQLite ledger, per tenant,
//! and the invoice preview under the reseller's billing model. Every amount is
//! integer micro-units; each invoice line rounds once (half up) on exact
//! integer products.
//!
//! Billing models (`[billing.RESELLER]`):
//! * `wholesale`: per tenant, prompt tokens × `input_per_million` + completion
//!   tokens × `output_per_million` + billable requests × `per_request`.
//! * `revenue_share`: per tenant, what the reseller charges (tokens at
//!   `retail_input_per_million` / `retail_output_per_million`), and the
//!   platform's `share` of it, which is the line amount.
//! * `platform_fee`: one line, the fee of the tier the reseller's total tokens
//!   of the month fall in (first tier with `up_to_tokens` ≥ total; else the last).
//!   Tiers must go up, only the last unbounded (refused at load otherwise).
//!
//! A reseller without `[billing]` gets the usage table and no invoice lines.

use super::price::{format_micros, Amount};
use super::sinks::sqlite::{self, Rollup};
use crate::config::{BillingConfig, BillingModel, GatewayConfig};
use serde::Serialize;
use std::fmt::Write as _;
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InvoiceLine {
    /// The tenant the line is for (`None`: the reseller as a whole).
    pub tenant: Option<String>,
    pub description: String,
    pub amount_micros: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub reseller: String,
    pub month: String,
    pub currency: String,
    pub billing_model: Option<BillingModel>,
    pub tenants: Vec<Rollup>,
    pub lines: Vec<InvoiceLine>,
    pub invoice_total_micros: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("--month must be YYYY-MM, not `{0}`")]
    Month(String),
    #[error("cannot read the usage ledger {path}: {source}")]
    Db {
        path: String,
        source: rusqlite::Error,
    },
    #[error("billing of reseller `{0}`: {1}")]
    Billing(String, String),
}

/// Checks `YYYY-MM`.
pub fn valid_month(month: &str) -> bool {
    let b = month.as_bytes();
    b.len() == 7
        && b[4] == b'-'
        && b[..4].iter().chain(&b[5..]).all(u8::is_ascii_digit)
        && matches!(month[5..].parse::<u8>(), Ok(1..=12))
}

/// A reseller's month per tenant and gateway key (`--group-by api_key_id`):
/// the platform's cost of each key's calls, and no invoice (invoices are per
/// tenant).
#[derive(Debug, Clone, Serialize)]
pub struct KeyReport {
    pub reseller: String,
    pub month: String,
    pub currency: String,
    pub group_by: &'static str,
    pub data: Vec<KeyLine>,
}

/// One key's month, with the name the configuration gives it (if it still
/// holds the key).
#[derive(Debug, Clone, Serialize)]
pub struct KeyLine {
    #[serde(flatten)]
    pub usage: sqlite::KeyRollup,
    pub name: Option<String>,
}

/// The ledger at `db`, opened to read `month` (checked: `YYYY-MM`).
fn open_month(db: &Path, month: &str) -> Result<rusqlite::Connection, ReportError> {
    if !valid_month(month) {
        return Err(ReportError::Month(month.to_owned()));
    }
    sqlite::open_read(db).map_err(db_err(db))
}

/// A failure to read the ledger at `db`.
fn db_err(db: &Path) -> impl Fn(rusqlite::Error) -> ReportError + '_ {
    move |source| ReportError::Db {
        path: db.display().to_string(),
        source,
    }
}

/// Reads `month` of `reseller` (optionally one tenant) from the ledger at `db`
/// per tenant and gateway key.
pub fn build_by_key(
    db: &Path,
    config: &GatewayConfig,
    reseller: &str,
    tenant: Option<&str>,
    month: &str,
) -> Result<KeyReport, ReportError> {
    let conn = open_month(db, month)?;
    let rows = sqlite::monthly_key_rollups(&conn, reseller, month, tenant).map_err(db_err(db))?;
    let data = rows
        .into_iter()
        .map(|usage| KeyLine {
            name: usage
                .key_id
                .as_deref()
                .and_then(|id| key_name(config, reseller, &usage.rollup.tenant, id)),
            usage,
        })
        .collect();
    Ok(KeyReport {
        reseller: reseller.to_owned(),
        month: month.to_owned(),
        currency: config.prices.currency.clone(),
        group_by: "api_key_id",
        data,
    })
}

/// The name of tenant `t`'s key `id`, if it has one (and still exists).
fn key_name(config: &GatewayConfig, r: &str, t: &str, id: &str) -> Option<String> {
    config
        .resellers
        .iter()
        .find(|x| x.id == r)?
        .tenants
        .iter()
        .find(|x| x.id == t)?
        .key_hashes
        .iter()
        .find(|k| crate::admin::key_id(&k.hash) == id)?
        .name
        .clone()
}

/// Renders a per-key report as `table`, `csv` or `json`.
pub fn render_by_key(report: &KeyReport, format: &str) -> Result<String, String> {
    let mut out = String::new();
    match format {
        "json" => return serde_json::to_string_pretty(report).map_err(|e| e.to_string()),
        "csv" => {
            out.push_str(
                "reseller,month,tenant,key_id,name,requests,billable_requests,prompt_tokens,completion_tokens,cached_tokens,total_tokens,estimated_events,unpriced_events,platform_cost,cache_write_tokens,cache_write_1h_tokens\n",
            );
            let (reseller, month) = (csv(&report.reseller), csv(&report.month));
            for l in &report.data {
                let t = &l.usage.rollup;
                let _ = writeln!(
                    out,
                    "{reseller},{month},{},{},{},{},{},{},{}",
                    csv(&t.tenant),
                    l.usage.key_id.as_deref().unwrap_or(""),
                    csv(l.name.as_deref().unwrap_or("")),
                    counts_csv(t),
                    format_micros(t.cost_micros),
                    t.cache_write_tokens,
                    t.cache_write_1h_tokens
                );
            }
        }
        "table" => {
            let _ = writeln!(
                out,
                "Usage of reseller {} in {} per key ({})",
                report.reseller, report.month, report.currency
            );
            let _ = writeln!(
                out,
                "{:<20} {:<16} {:<20} {:>10} {:>14} {:>14} {:>16}",
                "tenant", "key", "name", "requests", "prompt", "completion", "platform cost"
            );
            for l in &report.data {
                let t = &l.usage.rollup;
                let _ = writeln!(
                    out,
                    "{:<20} {:<16} {:<20} {:>10} {:>14} {:>14} {:>16}",
                    t.tenant,
                    // Events recorded before records named their key.
                    l.usage.key_id.as_deref().unwrap_or("(unrecorded)"),
                    l.name.as_deref().unwrap_or(""),
                    t.requests,
                    t.prompt_tokens,
                    t.completion_tokens,
                    format_micros(t.cost_micros)
                );
            }
            if report.data.is_empty() {
                let _ = writeln!(out, "(no usage)");
            }
        }
        other => return Err(format!("unknown format `{other}` (table, csv, json)")),
    }
    Ok(out)
}

/// Reads `month` of `reseller` (optionally one tenant) from the ledger at `db`
/// and prices it under the reseller's billing configuration.
pub fn build(
    db: &Path,
    config: &GatewayConfig,
    reseller: &str,
    tenant: Option<&str>,
    month: &str,
) -> Result<Report, ReportError> {
    let conn = open_month(db, month)?;
    let db_err = db_err(db);
    let tenants = sqlite::monthly_rollups(&conn, reseller, month, tenant).map_err(&db_err)?;
    let billing = config.billing.get(reseller);
    // The platform fee's tier is the reseller's whole month, not the one
    // tenant a report may be filtered to.
    let reseller_tokens = match tenant {
        Some(_) => sqlite::monthly_tokens(&conn, reseller, None, month).map_err(db_err)?,
        None => tenants.iter().map(|t| t.total_tokens).sum(),
    };
    let lines = match billing {
        Some(b) => invoice_lines(b, &tenants, reseller_tokens)
            .map_err(|e| ReportError::Billing(reseller.into(), e))?,
        None => Vec::new(),
    };
    Ok(Report {
        reseller: reseller.to_owned(),
        month: month.to_owned(),
        currency: config.prices.currency.clone(),
        billing_model: billing.map(|b| b.model),
        invoice_total_micros: lines
            .iter()
            .fold(0u64, |sum, l| sum.saturating_add(l.amount_micros)),
        tenants,
        lines,
    })
}

fn need(v: Option<Amount>, what: &str) -> Result<Amount, String> {
    v.ok_or_else(|| format!("`{what}` is required by this billing model"))
}

/// What [`invoice_lines`] would refuse of `billing` at report time (a
/// required field missing), checked when the configuration is loaded.
pub fn check_billing(billing: &BillingConfig) -> Result<(), String> {
    invoice_lines(billing, &[], 0).map(drop)
}

/// The invoice lines of a month's per-tenant rollups under `billing`.
/// `reseller_tokens`: the reseller's total tokens of the month, which picks
/// the platform fee's tier.
pub fn invoice_lines(
    billing: &BillingConfig,
    tenants: &[Rollup],
    reseller_tokens: u64,
) -> Result<Vec<InvoiceLine>, String> {
    let mut lines = Vec::new();
    match billing.model {
        BillingModel::Wholesale => {
            let input = billing.input_per_million.unwrap_or_default();
            let output = billing.output_per_million.unwrap_or_default();
            let per_request = billing.per_request.unwrap_or_default();
            if billing.input_per_million.is_none()
                && billing.output_per_million.is_none()
                && billing.per_request.is_none()
            {
                return Err(
                    "wholesale needs input_per_million, output_per_million or per_request".into(),
                );
            }
            for t in tenants {
                // One rounding of the line's exact token amount; requests are
                // whole micro-units already.
                let tokens = round_millionths(
                    millionths(t.prompt_tokens, input)
                        .saturating_add(millionths(t.completion_tokens, output)),
                );
                let amount =
                    tokens.saturating_add(t.billable_requests.saturating_mul(per_request.micros()));
                lines.push(InvoiceLine {
                    tenant: Some(t.tenant.clone()),
                    description: format!(
                        "wholesale: {} prompt + {} completion tokens, {} requests",
                        t.prompt_tokens, t.completion_tokens, t.billable_requests
                    ),
                    amount_micros: amount,
                });
            }
        }
        BillingModel::RevenueShare => {
            let share = billing
                .share
                .ok_or_else(|| "`share` is required by revenue_share".to_owned())?;
            let input = need(billing.retail_input_per_million, "retail_input_per_million")?;
            let output = need(
                billing.retail_output_per_million,
                "retail_output_per_million",
            )?;
            for t in tenants {
                // The share of the exact revenue, rounded once (the revenue
                // shown is rounded for the description only).
                let exact = millionths(t.prompt_tokens, input)
                    .saturating_add(millionths(t.completion_tokens, output));
                let revenue = round_millionths(exact);
                let scaled = exact.saturating_mul(u128::from(share.ppm()));
                let half = 500_000_000_000u128;
                let amount =
                    u64::try_from(scaled.saturating_add(half) / (2 * half)).unwrap_or(u64::MAX);
                lines.push(InvoiceLine {
                    tenant: Some(t.tenant.clone()),
                    description: format!(
                        "revenue share {}% of {} charged",
                        format_ppm_percent(share.ppm()),
                        format_micros(revenue)
                    ),
                    amount_micros: amount,
                });
            }
        }
        BillingModel::PlatformFee => {
            if billing.tiers.is_empty() {
                return Err("platform_fee needs at least one [[billing.RESELLER.tiers]]".into());
            }
            // The first tier the tokens fit in is the fee: tiers out of order
            // (or an unbounded one before others) would shadow the cheaper
            // ones below them.
            let bounds: Vec<Option<u64>> = billing.tiers.iter().map(|t| t.up_to_tokens).collect();
            for pair in bounds.windows(2) {
                match (pair[0], pair[1]) {
                    (Some(a), Some(b)) if a < b => {}
                    (Some(_), None) => {}
                    _ => {
                        return Err(
                            "platform_fee tiers must go up: each `up_to_tokens` above the one before, and only the last tier unbounded".into(),
                        )
                    }
                }
            }
            let total = reseller_tokens;
            let tier = billing
                .tiers
                .iter()
                .find(|t| t.up_to_tokens.is_none_or(|u| total <= u))
                .or(billing.tiers.last());
            if let Some(tier) = tier {
                let bound = tier
                    .up_to_tokens
                    .map_or("unbounded".to_owned(), |u| format!("up to {u} tokens"));
                lines.push(InvoiceLine {
                    tenant: None,
                    description: format!("platform fee, tier {bound} ({total} tokens used)"),
                    amount_micros: tier.fee.micros(),
                });
            }
        }
    }
    Ok(lines)
}

/// `tokens × per_million`: the exact amount in millionths of a micro-unit.
fn millionths(tokens: u64, per_million: Amount) -> u128 {
    u128::from(tokens) * u128::from(per_million.micros())
}

/// Millionths of a micro-unit to micro-units, rounded half up (saturating).
fn round_millionths(m: u128) -> u64 {
    u64::try_from(m.saturating_add(500_000) / 1_000_000).unwrap_or(u64::MAX)
}

fn format_ppm_percent(ppm: u64) -> String {
    // ppm / 10_000 = percent, with 4 decimals trimmed.
    let s = format!("{}.{:04}", ppm / 10_000, ppm % 10_000);
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// Renders a report as `table`, `csv` or `json`.
pub fn render(report: &Report, format: &str) -> Result<String, String> {
    match format {
        "json" => serde_json::to_string_pretty(report).map_err(|e| e.to_string()),
        "csv" => Ok(render_csv(report)),
        "table" => Ok(render_table(report)),
        other => Err(format!("unknown format `{other}` (table, csv, json)")),
    }
}

/// A CSV field per RFC 4180: quoted (quotes doubled) when it holds a comma,
/// a quote or a line break.
fn csv(field: &str) -> std::borrow::Cow<'_, str> {
    if field.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", field.replace('"', "\"\"")).into()
    } else {
        field.into()
    }
}

/// A rollup's counts as the CSV reports give them, in their columns' order
/// (`requests` to `unpriced_events`).
fn counts_csv(t: &Rollup) -> String {
    format!(
        "{},{},{},{},{},{},{},{}",
        t.requests,
        t.billable_requests,
        t.prompt_tokens,
        t.completion_tokens,
        t.cached_tokens,
        t.total_tokens,
        t.estimated_events,
        t.unpriced_events
    )
}

/// The columns added since the first layout come last, so that a consumer
/// that reads columns by position still finds the others where they were.
fn render_csv(r: &Report) -> String {
    let mut out = String::from(
        "kind,reseller,month,tenant,requests,billable_requests,prompt_tokens,completion_tokens,cached_tokens,total_tokens,estimated_events,unpriced_events,platform_cost,description,amount,cache_write_tokens,cache_write_1h_tokens\n",
    );
    let (reseller, month) = (csv(&r.reseller), csv(&r.month));
    for t in &r.tenants {
        let _ = writeln!(
            out,
            "usage,{reseller},{month},{},{},{},,,{},{}",
            csv(&t.tenant),
            counts_csv(t),
            format_micros(t.cost_micros),
            t.cache_write_tokens,
            t.cache_write_1h_tokens
        );
    }
    for l in &r.lines {
        let _ = writeln!(
            out,
            "invoice,{reseller},{month},{},,,,,,,,,,{},{},,",
            csv(l.tenant.as_deref().unwrap_or("")),
            csv(&l.description),
            format_micros(l.amount_micros)
        );
    }
    let _ = writeln!(
        out,
        "total,{reseller},{month},,,,,,,,,,,,{},,",
        format_micros(r.invoice_total_micros)
    );
    out
}

fn render_table(r: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Usage of reseller {} in {} ({})",
        r.reseller, r.month, r.currency
    );
    let _ = writeln!(
        out,
        "{:<20} {:>10} {:>14} {:>14} {:>14} {:>14} {:>16}",
        "tenant", "requests", "prompt", "cache writes", "completion", "total", "platform cost"
    );
    for t in &r.tenants {
        let _ = writeln!(
            out,
            "{:<20} {:>10} {:>14} {:>14} {:>14} {:>14} {:>16}",
            t.tenant,
            t.requests,
            t.prompt_tokens,
            t.cache_write_tokens,
            t.completion_tokens,
            t.total_tokens,
            format_micros(t.cost_micros)
        );
    }
    if r.tenants.is_empty() {
        let _ = writeln!(out, "(no usage)");
    }
    let unpriced: u64 = r.tenants.iter().map(|t| t.unpriced_events).sum();
    if unpriced > 0 {
        let _ = writeln!(
            out,
            "WARNING: {unpriced} events with tokens matched no [prices] entry: the platform cost leaves them out"
        );
    }
    match r.billing_model {
        None => {
            let _ = writeln!(out, "\nNo [billing.{}] configured: no invoice.", r.reseller);
        }
        Some(m) => {
            let _ = writeln!(out, "\nInvoice preview ({m:?}):");
            for l in &r.lines {
                let _ = writeln!(
                    out,
                    "  {:<20} {:<60} {:>16}",
                    l.tenant.as_deref().unwrap_or("-"),
                    l.description,
                    format_micros(l.amount_micros)
                );
            }
            let _ = writeln!(
                out,
                "  {:<20} {:<60} {:>16}",
                "TOTAL",
                "",
                format_micros(r.invoice_total_micros)
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months_are_checked() {
        assert!(valid_month("2025-01"));
        assert!(valid_month("2025-12"));
        assert!(!valid_month("2025-13"));
        assert!(!valid_month("2025-1"));
        assert!(!valid_month("25-01-01"));
    }

    /// RFC 4180: a field holding a comma or a quote is quoted, so every
    /// row keeps its 17 columns; the cache writes come last, where they
    /// move no earlier column.
    #[test]
    fn csv_rows_keep_their_columns_whatever_the_fields_hold() {
        let report = Report {
            reseller: "acme".into(),
            month: "2025-02".into(),
            currency: "USD".into(),
            billing_model: Some(BillingModel::Wholesale),
            tenants: vec![Rollup {
                tenant: "a,b".into(),
                requests: 1,
                billable_requests: 1,
                prompt_tokens: 2,
                completion_tokens: 3,
                cached_tokens: 0,
                total_tokens: 5,
                estimated_events: 0,
                cost_micros: 0,
                unpriced_events: 0,
                cache_write_tokens: 4,
                cache_write_1h_tokens: 1,
            }],
            lines: vec![InvoiceLine {
                tenant: Some("a,b".into()),
                description: "say \"hi\", twice".into(),
                amount_micros: 1,
            }],
            invoice_total_micros: 1,
        };
        let text = render_csv(&report);
        let mut lines = text.lines();
        assert_eq!(lines.next().map(|h| h.split(',').count()), Some(17));
        let usage = lines.next().unwrap_or_default();
        assert_eq!(
            usage,
            "usage,acme,2025-02,\"a,b\",1,1,2,3,0,5,0,0,0.000000,,,4,1"
        );
        let invoice = lines.next().unwrap_or_default();
        assert!(
            invoice.starts_with(
                "invoice,acme,2025-02,\"a,b\",,,,,,,,,,\"say \"\"hi\"\", twice\",0.000001,,"
            ),
            "{invoice}"
        );
        assert_eq!(
            lines.next(),
            Some("total,acme,2025-02,,,,,,,,,,,,0.000001,,")
        );
    }

    fn rollup(tenant: &str, prompt: u64, completion: u64) -> Rollup {
        Rollup {
            tenant: tenant.into(),
            requests: 1,
            billable_requests: 1,
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: prompt + completion,
            ..Rollup::default()
        }
    }

    fn billing(toml_text: &str) -> BillingConfig {
        toml::from_str(toml_text).unwrap()
    }

    /// An invoice line rounds once, on the exact sum of its token amounts:
    /// 1_000_001 prompt tokens at 0.50 (500_000.5) and 1_000_001 completion
    /// tokens at 1.50 (1_500_001.5) are 2_000_002 micro-units, not 2_000_003
    /// (each rounded up, then added).
    #[test]
    fn an_invoice_line_rounds_once_on_its_exact_amount() {
        let tenants = [rollup("t", 1_000_001, 1_000_001)];
        let wholesale = billing(
            "model = \"wholesale\"\ninput_per_million = \"0.50\"\noutput_per_million = \"1.50\"\nper_request = \"0.000001\"",
        );
        let lines = invoice_lines(&wholesale, &tenants, 0).unwrap();
        assert_eq!(lines[0].amount_micros, 2_000_002 + 1);

        // Revenue share: 50% of the exact revenue (2_000_002) is 1_000_001,
        // not 50% of 2_000_003 rounded (1_000_002).
        let share = billing(
            "model = \"revenue_share\"\nshare = \"50%\"\nretail_input_per_million = \"0.50\"\nretail_output_per_million = \"1.50\"",
        );
        let lines = invoice_lines(&share, &tenants, 0).unwrap();
        assert_eq!(lines[0].amount_micros, 1_000_001);
        // 1 prompt token at 0.5 and 1 completion at 1.5: revenue 2.0
        // micro-units, of which 25% is 0.5 -> 1 (not 25% of 3 -> 1, nor 0).
        let quarter = billing(
            "model = \"revenue_share\"\nshare = \"25%\"\nretail_input_per_million = \"0.50\"\nretail_output_per_million = \"1.50\"",
        );
        let lines = invoice_lines(&quarter, &[rollup("t", 1, 1)], 0).unwrap();
        assert_eq!(lines[0].amount_micros, 1);
        // 1 prompt token at 0.5, 60%: exact 0.3 -> 0 (the revenue rounded
        // first, 1, would give 0.6 -> 1).
        let sixty = billing(
            "model = \"revenue_share\"\nshare = \"60%\"\nretail_input_per_million = \"0.50\"\nretail_output_per_million = \"1.50\"",
        );
        let lines = invoice_lines(&sixty, &[rollup("t", 1, 0)], 0).unwrap();
        assert_eq!(lines[0].amount_micros, 0);
    }

    /// Tiers out of order would bill a small month the fee of a larger tier
    /// listed first: refused (at load, through `check_billing`).
    #[test]
    fn platform_fee_tiers_out_of_order_are_refused() {
        let tiers = |t: &str| billing(&format!("model = \"platform_fee\"\n{t}"));
        let bad = [
            "[[tiers]]\nup_to_tokens = 10000000\nfee = 199\n[[tiers]]\nup_to_tokens = 1000000\nfee = 49",
            "[[tiers]]\nup_to_tokens = 5\nfee = 1\n[[tiers]]\nup_to_tokens = 5\nfee = 2",
            "[[tiers]]\nfee = 199\n[[tiers]]\nup_to_tokens = 1000000\nfee = 49",
        ];
        for t in bad {
            assert!(check_billing(&tiers(t)).is_err(), "{t}");
        }
        let good = tiers(
            "[[tiers]]\nup_to_tokens = 1000000\nfee = 49\n[[tiers]]\nup_to_tokens = 10000000\nfee = 199\n[[tiers]]\nfee = 999",
        );
        assert!(check_billing(&good).is_ok());
        // The bound is inclusive: exactly 1_000_000 tokens is the first tier.
        let fee = |n| invoice_lines(&good, &[], n).unwrap()[0].amount_micros;
        assert_eq!(fee(1_000_000), 49_000_000);
        assert_eq!(fee(1_000_001), 199_000_000);
        assert_eq!(fee(10_000_001), 999_000_000);
    }

    #[test]
    fn percent_formatting() {
        assert_eq!(format_ppm_percent(200_000), "20");
        assert_eq!(format_ppm_percent(125_000), "12.5");
    }
}
