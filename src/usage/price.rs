//! Money without floats. Every amount is an integer number of micro-units of
//! the configured currency (1 USD = 1 000 000 micro-units). Configured amounts
//! are read exactly from their decimal text (`"0.15"`, `2`, or a TOML float whose
//! shortest decimal form is used, never its binary value); a price with more than
//! six decimals is refused rather than rounded.
//!
//! [`PriceTable`] turns an event's tokens into the platform's cost; token-priced
//! amounts are `tokens × price_per_million / 1 000 000`, rounded half up once,
//! on the exact integer product.

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

#[derive(Debug, Clone)]
struct ModelPrice {
    model: String,
    provider: Option<String>,
    input: Amount,
    output: Amount,
    cached: Amount,
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
            entries: models
                .iter()
                .map(|m| ModelPrice {
                    model: m.model.clone(),
                    provider: m.provider.clone(),
                    input: m.input_per_million,
                    output: m.output_per_million,
                    cached: m.cached_input_per_million.unwrap_or(m.input_per_million),
                })
                .collect(),
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

    /// The platform's cost of a call in micro-units, or `None` when no price
    /// matches. `cached` tokens are part of `prompt` (OpenAI's convention) and
    /// billed at the cached price.
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
            rec.prompt_tokens.unwrap_or(0),
            rec.cached_tokens.unwrap_or(0),
            rec.completion_tokens.unwrap_or(0),
        )
    }

    pub fn cost(
        &self,
        provider: Option<&str>,
        candidates: &[Option<&str>],
        prompt: u64,
        cached: u64,
        completion: u64,
    ) -> Option<u64> {
        let p = self.find(provider, candidates)?;
        let cached = cached.min(prompt);
        // One rounding on the exact sum of the three products.
        let micro_millionths = u128::from(prompt - cached) * u128::from(p.input.0)
            + u128::from(cached) * u128::from(p.cached.0)
            + u128::from(completion) * u128::from(p.output.0);
        u64::try_from((micro_millionths + 500_000) / 1_000_000).ok()
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

    #[test]
    fn costs_round_once_half_up() {
        assert_eq!(token_cost(1, Amount(500_000)), 1); // 0.5 → 1
        assert_eq!(token_cost(1, Amount(499_999)), 0);
        assert_eq!(token_cost(1_000_000, Amount(150_000)), 150_000);
        let table = PriceTable::from_entries(&[ModelPriceConfig {
            model: "m".into(),
            provider: None,
            input_per_million: Amount(150_000),
            output_per_million: Amount(600_000),
            cached_input_per_million: Some(Amount(75_000)),
        }]);
        // 1000 prompt (200 cached) + 500 completion:
        // 800×0.15 + 200×0.075 + 500×0.6 = 120 + 15 + 300 = 435 micro-units.
        assert_eq!(table.cost(None, &[Some("m")], 1000, 200, 500), Some(435));
        assert_eq!(table.cost(None, &[Some("x")], 1000, 0, 500), None);
        assert_eq!(format_micros(1_500_000), "1.500000");
    }
}
