//! Money without floats. Every amount is an integer number of micro-units of
//! the configured currency (1 USD = 1 000 000 micro-units). Configured amounts
//! are read exactly from their decimal text (`"0.15"`, `2`, or a TOML float whose
//! shortest decimal form is used, never its binary value); a price with more than
//! six decimals is refused rather than rounded.
//!
//! [`PriceTable`] turns an event's tokens into the platform's cost: the
//! prompt's cache reads, its cache writes (five-minute and one-hour) and the
//! rest of it each at their own price. Token-priced amounts are
//! `tokens × price_per_million / 1 000 000`, rounded half up once, on the
//! exact integer sum of the products (kept in quarters of a micro-unit, so
//! that the default cache-write price, 1.25 × the input price, stays exact).

use crate::config::{GatewayConfig, ModelPriceConfig};
use serde::{Deserialize, Deserializer};

/// Micro-units per currency unit.
pub const MICROS: u64 = 1_000_000;

/// An amount of money in micro-units, read exactly from configuration.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Amount(pub u64);

impl Amount {
    pub fn micros(self) -> u64 {
        self.0
    }

    /// Parses a non-negative decimal (`"1"`, `"0.15"`, `"$2.50"` is refused) with
    /// at most six decimals.
    pub fn parse(text: &str) -> Result<Self, String> {
        parse_scaled(text, 6).map(Amount)
    }
}

impl<'de> Deserialize<'de> for Amount {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = decimal_text(d)?;
        Amount::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// A ratio in parts per million (`"0.2"`, `"20%"`, `0.2`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ratio(pub u64);

impl Ratio {
    pub fn ppm(self) -> u64 {
        self.0
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let t = text.trim();
        let ppm = match t.strip_suffix('%') {
            Some(pct) => parse_scaled(pct, 4)?,
            None => parse_scaled(t, 6)?,
        };
        if ppm > MICROS {
            return Err(format!("ratio {text} is above 1 (100%)"));
        }
        Ok(Ratio(ppm))
    }
}

impl<'de> Deserialize<'de> for Ratio {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = decimal_text(d)?;
        Ratio::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// Accepts a string, an integer or a float; returns decimal text. A float is
/// formatted by Rust's shortest round-trip representation, which is the decimal
/// the author wrote (`0.15` → `"0.15"`), so no binary rounding leaks in.
fn decimal_text<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Int(u64),
        Float(f64),
        Text(String),
    }
    Ok(match Raw::deserialize(d)? {
        Raw::Int(i) => i.to_string(),
        Raw::Float(f) if f.is_finite() && f >= 0.0 => format!("{f}"),
        Raw::Float(f) => return Err(serde::de::Error::custom(format!("invalid amount {f}"))),
        Raw::Text(t) => t,
    })
}

/// `"12.345"` with `scale` 6 → 12_345_000. Exact; refuses more decimals than
/// `scale`, signs, exponents and anything that is not plain digits.
fn parse_scaled(text: &str, scale: u32) -> Result<u64, String> {
    let t = text.trim();
    let (int, frac) = t.split_once('.').unwrap_or((t, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if (int.is_empty() && frac.is_empty()) || !digits(int) || !digits(frac) {
        return Err(format!("`{text}` is not a non-negative decimal number"));
    }
    let frac = frac.trim_end_matches('0');
    if frac.len() > scale as usize {
        return Err(format!(
            "`{text}` has more than {scale} decimals (amounts are exact to the micro-unit)"
        ));
    }
    let int: u64 = if int.is_empty() {
        0
    } else {
        int.parse().map_err(|_| format!("`{text}` is too large"))?
    };
    let frac_val: u64 = if frac.is_empty() {
        0
    } else {
        frac.parse()
            .map_err(|_| format!("`{text}` is not a number"))?
    };
    let frac_scaled = frac_val * 10u64.pow(scale - frac.len() as u32);
    int.checked_mul(10u64.pow(scale))
        .and_then(|v| v.checked_add(frac_scaled))
        .ok_or_else(|| format!("`{text}` is too large"))
}

/// `round_half_up(a × b / d)` on exact integers.
pub fn mul_div_round(a: u64, b: u64, d: u64) -> u64 {
    if d == 0 {
        return 0;
    }
    let p = u128::from(a) * u128::from(b);
    let d = u128::from(d);
    u64::try_from((p + d / 2) / d).unwrap_or(u64::MAX)
}

/// Cost of `tokens` at `per_million` micro-units per million tokens.
pub fn token_cost(tokens: u64, per_million: Amount) -> u64 {
    mul_div_round(tokens, per_million.0, 1_000_000)
}

/// Formats micro-units as a decimal with six places (`1.500000`).
pub fn format_micros(m: u64) -> String {
    format!("{}.{:06}", m / MICROS, m % MICROS)
}

/// Anthropic's documented prices of cache writes, as multiples of the input
/// price: 1.25 × for the default five-minute cache, 2 × for the one-hour
/// cache. They are the defaults of an entry that sets no cache-write price,
/// in quarters (1.25 × input micro-units is not always a whole number of
/// micro-units; every price is kept in quarters so the cost is still exact).
const CACHE_WRITE_QUARTERS: u128 = 5;
const CACHE_WRITE_1H_QUARTERS: u128 = 8;

/// Prices per million tokens in quarters of a micro-unit.
#[derive(Debug, Clone)]
struct ModelPrice {
    model: String,
    provider: Option<String>,
    input: u128,
    output: u128,
    cached: u128,
    cache_write: u128,
    cache_write_1h: u128,
}

impl ModelPrice {
    fn of(m: &ModelPriceConfig) -> Self {
        let quarters = |a: Amount| u128::from(a.0) * 4;
        let input = u128::from(m.input_per_million.0);
        Self {
            model: m.model.clone(),
            provider: m.provider.clone(),
            input: input * 4,
            output: quarters(m.output_per_million),
            cached: quarters(m.cached_input_per_million.unwrap_or(m.input_per_million)),
            cache_write: 0,
            cache_write_1h: 0,
        }
        .with_cache_writes(
            m.cache_write_input_per_million.map(quarters),
            m.cache_write_1h_input_per_million.map(quarters),
        )
    }

    /// The cache-write prices: each one set as it is, an unset one at
    /// Anthropic's multiple of the input price, kept on its side of the
    /// other (a one-hour default of at least the five-minute price set, a
    /// five-minute default of at most the one-hour price set). A provider
    /// that sells one kind of write only, at a price beyond the other's
    /// default, is priced with that one price alone: both defaults fixed,
    /// the entry was refused unless its author made up the price of the
    /// kind the provider does not sell.
    fn with_cache_writes(mut self, five_min: Option<u128>, one_hour: Option<u128>) -> Self {
        let input = self.input / 4;
        (self.cache_write, self.cache_write_1h) = match (five_min, one_hour) {
            (Some(w), Some(h)) => (w, h),
            (Some(w), None) => (w, w.max(input * CACHE_WRITE_1H_QUARTERS)),
            (None, Some(h)) => (h.min(input * CACHE_WRITE_QUARTERS), h),
            (None, None) => (
                input * CACHE_WRITE_QUARTERS,
                input * CACHE_WRITE_1H_QUARTERS,
            ),
        };
        self
    }
}

/// What [`PriceTable`] would price unlike what its author meant, refused when
/// the configuration is loaded: a one-hour cache write set below the
/// five-minute one (every provider that sells both charges more for the
/// hour: the two are swapped). With one of them set, the other's default
/// never crosses it.
pub fn check_entry(m: &ModelPriceConfig) -> Result<(), String> {
    let p = ModelPrice::of(m);
    if p.cache_write_1h < p.cache_write {
        return Err(format!(
            "`{}`: cache_write_1h_input_per_million ({}) is below cache_write_input_per_million ({})",
            m.model,
            format_quarters(p.cache_write_1h),
            format_quarters(p.cache_write),
        ));
    }
    Ok(())
}

/// A price in quarters of a micro-unit, as a decimal of the currency.
fn format_quarters(q: u128) -> String {
    let micros = q / 4;
    let text = format!(
        "{}.{:06}",
        micros / u128::from(MICROS),
        micros % u128::from(MICROS)
    );
    match q % 4 {
        0 => text,
        r => format!("{text}{}", ["", "25", "5", "75"][r as usize]),
    }
}

/// A call's token counts as its record has them. `cached` and
/// `cache_write` are parts of `prompt` (OpenAI's convention), and
/// `cache_write_1h` a part of `cache_write`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenCounts {
    pub prompt: u64,
    pub cached: u64,
    pub cache_write: u64,
    pub cache_write_1h: u64,
    pub completion: u64,
}

/// The platform's price per model.
#[derive(Debug, Clone, Default)]
pub struct PriceTable {
    entries: Vec<ModelPrice>,
}

impl PriceTable {
    pub fn from_config(config: &GatewayConfig) -> Self {
        Self::from_entries(&config.prices.models)
    }

    pub fn from_entries(models: &[ModelPriceConfig]) -> Self {
        Self {
            entries: models.iter().map(ModelPrice::of).collect(),
        }
    }

    fn find(&self, provider: Option<&str>, candidates: &[Option<&str>]) -> Option<&ModelPrice> {
        candidates.iter().flatten().find_map(|name| {
            // An entry naming the provider wins over a provider-less one.
            let mut generic = None;
            for e in self.entries.iter().filter(|e| e.model == *name) {
                match (&e.provider, provider) {
                    (Some(p), Some(q)) if p == q => return Some(e),
                    (None, _) => generic = generic.or(Some(e)),
                    _ => {}
                }
            }
            generic
        })
    }

    /// The cost of a finished request's record: its provider's price for the
    /// model it was served as (else its last attempt's, else the one asked
    /// for), or `None` without a price.
    pub fn cost_of(&self, rec: &super::UsageRecord) -> Option<u64> {
        let last_attempt = rec.attempts.last().map(|a| &*a.model);
        self.cost(
            rec.provider.as_deref(),
            &[
                rec.served_model.as_deref(),
                last_attempt,
                rec.requested_model.as_deref(),
            ],
            TokenCounts {
                prompt: rec.prompt_tokens.unwrap_or(0),
                cached: rec.cached_tokens.unwrap_or(0),
                cache_write: rec.cache_write_tokens.unwrap_or(0),
                cache_write_1h: rec.cache_write_1h_tokens.unwrap_or(0),
                completion: rec.completion_tokens.unwrap_or(0),
            },
        )
    }

    /// The platform's cost of a call in micro-units, or `None` when no price
    /// matches: the prompt's cache reads at the cached price, its cache
    /// writes at theirs (the one-hour ones at the one-hour price), the rest
    /// at the input price.
    pub fn cost(
        &self,
        provider: Option<&str>,
        candidates: &[Option<&str>],
        t: TokenCounts,
    ) -> Option<u64> {
        let p = self.find(provider, candidates)?;
        // Parts larger than their whole (a provider's inconsistent report)
        // are cut to it, so no tokens are billed twice.
        let cached = t.cached.min(t.prompt);
        let cache_write = t.cache_write.min(t.prompt - cached);
        let cache_write_1h = t.cache_write_1h.min(cache_write);
        let q = |tokens: u64, price: u128| u128::from(tokens).saturating_mul(price);
        // One rounding on the exact sum of the products, in quarters of a
        // millionth of a micro-unit (saturating: a sum beyond `u128` is far
        // beyond `u64` micro-units too, and is no cost).
        let quarter_millionths = [
            q(t.prompt - cached - cache_write, p.input),
            q(cached, p.cached),
            q(cache_write - cache_write_1h, p.cache_write),
            q(cache_write_1h, p.cache_write_1h),
            q(t.completion, p.output),
        ]
        .into_iter()
        .fold(0u128, u128::saturating_add);
        u64::try_from(quarter_millionths.saturating_add(2_000_000) / 4_000_000).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_are_exact() {
        assert_eq!(Amount::parse("0.15").unwrap().0, 150_000);
        assert_eq!(Amount::parse("2").unwrap().0, 2_000_000);
        assert_eq!(Amount::parse("0.000001").unwrap().0, 1);
        assert_eq!(Amount::parse(".5").unwrap().0, 500_000);
        assert_eq!(Amount::parse("1.2300000").unwrap().0, 1_230_000);
        assert!(Amount::parse("0.0000001").is_err());
        assert!(Amount::parse("-1").is_err());
        assert!(Amount::parse("1e3").is_err());
        assert!(Amount::parse("").is_err());
        assert_eq!(Ratio::parse("20%").unwrap().0, 200_000);
        assert_eq!(Ratio::parse("0.2").unwrap().0, 200_000);
        assert!(Ratio::parse("1.5").is_err());
    }

    #[test]
    fn toml_floats_are_read_as_written() {
        #[derive(Deserialize)]
        struct T {
            a: Amount,
            b: Amount,
            c: Amount,
        }
        let t: T = toml::from_str("a = 0.15\nb = 3\nc = \"0.075\"").unwrap();
        assert_eq!((t.a.0, t.b.0, t.c.0), (150_000, 3_000_000, 75_000));
    }

    fn entry(input: u64, output: u64, cached: Option<u64>) -> ModelPriceConfig {
        ModelPriceConfig {
            model: "m".into(),
            provider: None,
            input_per_million: Amount(input),
            output_per_million: Amount(output),
            cached_input_per_million: cached.map(Amount),
            cache_write_input_per_million: None,
            cache_write_1h_input_per_million: None,
        }
    }

    fn tokens(
        prompt: u64,
        cached: u64,
        cache_write: u64,
        cache_write_1h: u64,
        completion: u64,
    ) -> TokenCounts {
        TokenCounts {
            prompt,
            cached,
            cache_write,
            cache_write_1h,
            completion,
        }
    }

    #[test]
    fn costs_round_once_half_up() {
        assert_eq!(token_cost(1, Amount(500_000)), 1); // 0.5 → 1
        assert_eq!(token_cost(1, Amount(499_999)), 0);
        assert_eq!(token_cost(1_000_000, Amount(150_000)), 150_000);
        let table = PriceTable::from_entries(&[entry(150_000, 600_000, Some(75_000))]);
        // 1000 prompt (200 cached) + 500 completion:
        // 800×0.15 + 200×0.075 + 500×0.6 = 120 + 15 + 300 = 435 micro-units.
        assert_eq!(
            table.cost(None, &[Some("m")], tokens(1000, 200, 0, 0, 500)),
            Some(435)
        );
        assert_eq!(
            table.cost(None, &[Some("x")], tokens(1000, 0, 0, 0, 500)),
            None
        );
        assert_eq!(format_micros(1_500_000), "1.500000");
    }

    /// Claude Sonnet's prices (input 3, output 15, cache reads 0.30 per
    /// million) and the capture's usage: 187 input, 418 written to the cache,
    /// 1111 read from it, 33 out. Without a cache-write price the writes cost
    /// 1.25 × input (Anthropic's five-minute rate), not the input price.
    #[test]
    fn cache_writes_cost_anthropics_multiples_of_the_input_price_by_default() {
        let sonnet = entry(3_000_000, 15_000_000, Some(300_000));
        let table = PriceTable::from_entries(std::slice::from_ref(&sonnet));
        let cost = |t| table.cost(None, &[Some("m")], t).unwrap();
        // 187×3 + 1111×0.30 + 418×3.75 + 33×15 = 561 + 333.3 + 1567.5 + 495
        // = 2956.8 -> 2957 (at the input price the writes were 1254: 2643).
        assert_eq!(cost(tokens(1716, 1111, 418, 0, 33)), 2957);
        // The same writes for an hour: 418 × 6 = 2508 -> 3897.3 -> 3897.
        assert_eq!(cost(tokens(1716, 1111, 418, 418, 33)), 3897);
        // Split: 400 for five minutes (1500), 18 for an hour (108).
        assert_eq!(
            cost(tokens(1716, 1111, 418, 18, 33)),
            561 + 333 + 1500 + 108 + 495
        );
        // Without writes nothing changes.
        assert_eq!(cost(tokens(1298, 1111, 0, 0, 33)), 561 + 333 + 495);

        // Set prices win over the defaults.
        let mut priced = sonnet.clone();
        priced.cache_write_input_per_million = Some(Amount(4_000_000));
        priced.cache_write_1h_input_per_million = Some(Amount(7_000_000));
        let table = PriceTable::from_entries(&[priced]);
        let cost = |t| table.cost(None, &[Some("m")], t).unwrap();
        assert_eq!(cost(tokens(1000, 0, 1000, 0, 0)), 4_000);
        assert_eq!(cost(tokens(1000, 0, 1000, 1000, 0)), 7_000);
        assert_eq!(cost(tokens(1000, 0, 1000, 250, 0)), 3_000 + 1_750);
    }

    /// The defaults are exact fractions of micro-units, summed with the rest
    /// and rounded once: an input price of 1 micro-unit per million makes a
    /// five-minute write 1.25 and an hour's 2.
    #[test]
    fn cache_write_defaults_are_exact_and_round_once() {
        let table = PriceTable::from_entries(&[entry(1, 0, None)]);
        let cost = |t| table.cost(None, &[Some("m")], t).unwrap();
        // 1 million written: 1.25 -> 1; 2 million: 2.5 -> 3 (half up).
        assert_eq!(cost(tokens(1_000_000, 0, 1_000_000, 0, 0)), 1);
        assert_eq!(cost(tokens(2_000_000, 0, 2_000_000, 0, 0)), 3);
        // 200k writes at 1.25 (0.25) and 250k input at 1 (0.25): 0.5 -> 1,
        // where each part rounded alone would be 0.
        assert_eq!(cost(tokens(450_000, 0, 200_000, 0, 0)), 1);
        // An hour's million: 2.
        assert_eq!(cost(tokens(1_000_000, 0, 1_000_000, 1_000_000, 0)), 2);
    }

    /// A report whose parts exceed their whole bills no token twice: reads
    /// first, then writes within what is left, the hour within the writes.
    #[test]
    fn cache_counts_beyond_the_prompt_are_cut_to_it() {
        let table = PriceTable::from_entries(&[entry(4_000_000, 0, Some(0))]);
        let cost = |t| table.cost(None, &[Some("m")], t).unwrap();
        // 10 prompt, 6 read (free), 9 written: 4 written at 5 each.
        assert_eq!(cost(tokens(10, 6, 9, 0, 0)), 20);
        // The hour's writes above the writes: all 4 at the hour's 8.
        assert_eq!(cost(tokens(10, 6, 9, 50, 0)), 32);
        assert_eq!(cost(tokens(0, 6, 9, 50, 0)), 0);
    }

    #[test]
    fn a_one_hour_write_priced_below_the_five_minute_one_is_refused() {
        let mut e = entry(3_000_000, 15_000_000, None);
        assert!(check_entry(&e).is_ok());
        e.cache_write_1h_input_per_million = Some(Amount(3_750_000));
        assert!(check_entry(&e).is_ok(), "equal is allowed");
        // Both set, the hour below.
        e.cache_write_input_per_million = Some(Amount(3_750_000));
        e.cache_write_1h_input_per_million = Some(Amount(3_000_000));
        let err = check_entry(&e).unwrap_err();
        assert!(
            err.contains("(3.000000) is below") && err.contains("(3.750000)"),
            "{err}"
        );
        // Swapped.
        e.cache_write_input_per_million = Some(Amount(6_000_000));
        e.cache_write_1h_input_per_million = Some(Amount(3_750_000));
        assert!(check_entry(&e).is_err());
        assert_eq!(format_quarters(5), "0.00000125");
        assert_eq!(format_quarters(6), "0.0000015");
    }

    /// A provider that sells one kind of cache write only (OpenAI-shaped
    /// usage never says which kind a write was) is priced with the one price
    /// set, whatever it is: the other's default does not cross it, and the
    /// entry is not refused for a price its author had no reason to set.
    #[test]
    fn one_cache_write_price_set_alone_is_not_crossed_by_the_others_default() {
        // Input 1 per million: the defaults are 1.25 and 2.
        let mut five_min_only = entry(1_000_000, 0, None);
        five_min_only.cache_write_input_per_million = Some(Amount(3_000_000));
        assert!(check_entry(&five_min_only).is_ok());
        let table = PriceTable::from_entries(&[five_min_only]);
        let cost = |t| table.cost(None, &[Some("m")], t).unwrap();
        assert_eq!(cost(tokens(1_000_000, 0, 1_000_000, 0, 0)), 3_000_000);
        // An hour's write reported all the same: at that price, not below.
        assert_eq!(
            cost(tokens(1_000_000, 0, 1_000_000, 1_000_000, 0)),
            3_000_000
        );
        // Below the default, the hour keeps its default.
        let mut cheap = entry(1_000_000, 0, None);
        cheap.cache_write_input_per_million = Some(Amount(1_000_000));
        let table = PriceTable::from_entries(&[cheap]);
        assert_eq!(
            table.cost(None, &[Some("m")], tokens(2, 0, 2, 1, 0)),
            Some(3)
        );

        let mut one_hour_only = entry(1_000_000, 0, None);
        one_hour_only.cache_write_1h_input_per_million = Some(Amount(1_000_000));
        assert!(check_entry(&one_hour_only).is_ok());
        let table = PriceTable::from_entries(&[one_hour_only]);
        let cost = |t| table.cost(None, &[Some("m")], t).unwrap();
        assert_eq!(cost(tokens(1_000_000, 0, 1_000_000, 0, 0)), 1_000_000);
        assert_eq!(
            cost(tokens(1_000_000, 0, 1_000_000, 1_000_000, 0)),
            1_000_000
        );
    }

    /// The new fields are amounts like the others: exact, non-negative, six
    /// decimals at most, and a misspelt one is refused.
    #[test]
    fn cache_write_prices_parse_like_the_other_prices() {
        let parse = |extra: &str| {
            toml::from_str::<ModelPriceConfig>(&format!(
                "model = \"m\"\ninput_per_million = 3\noutput_per_million = 15\n{extra}"
            ))
        };
        let e =
            parse("cache_write_input_per_million = \"3.75\"\ncache_write_1h_input_per_million = 6")
                .unwrap();
        assert_eq!(e.cache_write_input_per_million, Some(Amount(3_750_000)));
        assert_eq!(e.cache_write_1h_input_per_million, Some(Amount(6_000_000)));
        for bad in [
            "cache_write_input_per_million = \"-1\"",
            "cache_write_input_per_million = \"0.0000001\"",
            "cache_write_1h_input_per_million = \"two\"",
            "cache_writes_input_per_million = 1",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
