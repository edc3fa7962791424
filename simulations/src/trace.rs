//! Real spot price traces, in the JSON that `aws ec2 describe-spot-price-history --output json`
//! prints (`{"SpotPriceHistory": [{"AvailabilityZone", "InstanceType", "ProductDescription",
//! "SpotPrice", "Timestamp"}, ...], "NextToken": ...}`).
//!
//! Each (instance type, zone) becomes one market whose price path starts at the trace's earliest
//! timestamp (time 0 of the simulation); a market's price before its first record is its first
//! record's price, and after its last record it holds the last price.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::catalog::{find_type, MarketKey};
use crate::price::PricePath;

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("cannot read trace {path}")]
    Read { path: String, source: std::io::Error },
    #[error("trace is not describe-spot-price-history JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("record {index}: bad SpotPrice {value:?} (want a non-negative decimal)")]
    BadPrice { index: usize, value: String },
    #[error("record {index}: bad Timestamp {value:?} (want RFC 3339, e.g. 2024-05-01T12:00:00+00:00)")]
    BadTimestamp { index: usize, value: String },
    #[error("record {index}: instance type {name:?} is not in the simulator's catalogue (known: {known})")]
    UnknownType { index: usize, name: String, known: String },
    #[error("trace has no Linux/UNIX price records")]
    Empty,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct History {
    spot_price_history: Vec<Record>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Record {
    availability_zone: String,
    instance_type: String,
    #[serde(default)]
    product_description: Option<String>,
    spot_price: String,
    timestamp: String,
}

/// One market of a loaded trace.
#[derive(Debug, Clone)]
pub struct TraceMarket {
    pub key: MarketKey,
    pub path: PricePath,
}

/// A loaded trace: markets sorted by (type, zone), and the span it covers.
#[derive(Debug, Clone)]
pub struct PriceTrace {
    pub markets: Vec<TraceMarket>,
    /// Unix time (ms) of the earliest record: time 0 of the simulation.
    pub start_unix_ms: i64,
    /// Milliseconds from the first to the last record.
    pub span_ms: u64,
}

pub fn load(path: &Path) -> Result<PriceTrace, TraceError> {
    let text = std::fs::read_to_string(path).map_err(|source| TraceError::Read { path: path.display().to_string(), source })?;
    parse(&text)
}

/// Parses describe-spot-price-history JSON. Only Linux/UNIX records are used (a trace may mix
/// operating systems; their prices differ). Records without a product description are kept.
pub fn parse(text: &str) -> Result<PriceTrace, TraceError> {
    let history: History = serde_json::from_str(text)?;
    let mut by_market: BTreeMap<(String, String), Vec<(i64, f64)>> = BTreeMap::new();
    for (index, r) in history.spot_price_history.into_iter().enumerate() {
        if let Some(desc) = &r.product_description {
            if !desc.starts_with("Linux/UNIX") {
                continue;
            }
        }
        let price: f64 = r.spot_price.trim().parse().ok().filter(|p: &f64| p.is_finite() && *p >= 0.0).ok_or_else(|| {
            TraceError::BadPrice { index, value: r.spot_price.clone() }
        })?;
        let at = parse_rfc3339_ms(&r.timestamp).ok_or_else(|| TraceError::BadTimestamp { index, value: r.timestamp.clone() })?;
        if find_type(&r.instance_type).is_none() {
            let known = crate::catalog::INSTANCE_TYPES.iter().map(|t| t.name).collect::<Vec<_>>().join(", ");
            return Err(TraceError::UnknownType { index, name: r.instance_type, known });
        }
        by_market.entry((r.instance_type, r.availability_zone)).or_default().push((at, price));
    }
    let start = by_market.values().flatten().map(|p| p.0).min().ok_or(TraceError::Empty)?;
    let end = by_market.values().flatten().map(|p| p.0).max().unwrap_or(start);
    let markets = by_market
        .into_iter()
        .map(|((ty, zone), points)| TraceMarket {
            key: MarketKey { instance: find_type(&ty).expect("checked above"), zone },
            path: PricePath::new(points.into_iter().map(|(t, p)| ((t - start) as u64, p)).collect()),
        })
        .collect();
    Ok(PriceTrace { markets, start_unix_ms: start, span_ms: (end - start) as u64 })
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.fff](Z|+HH:MM|-HH:MM)` into Unix milliseconds.
pub fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    let b = s.trim().as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = b.get(r)?;
        if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(part).ok()?.parse().ok()
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut i = 19;
    let mut millis = 0i64;
    if b.get(i) == Some(&b'.') {
        let start = i + 1;
        i = start;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        let frac = std::str::from_utf8(&b[start..i]).ok()?;
        if frac.is_empty() {
            return None;
        }
        millis = format!("{:0<3}", &frac[..frac.len().min(3)]).parse().ok()?;
    }
    let offset_min = match b.get(i)? {
        b'Z' | b'z' if i + 1 == b.len() => 0,
        sign @ (b'+' | b'-') if i + 6 == b.len() && b[i + 3] == b':' => {
            let m = num(i + 1..i + 3)? * 60 + num(i + 4..i + 6)?;
            if *sign == b'+' {
                m
            } else {
                -m
            }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_min * 60;
    Some(secs * 1000 + millis)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_in_both_cli_formats() {
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339_ms("2024-05-01T12:00:00+00:00"), Some(1_714_564_800_000));
        assert_eq!(parse_rfc3339_ms("2024-05-01T14:00:00+02:00"), Some(1_714_564_800_000));
        assert_eq!(parse_rfc3339_ms("2018-01-01T00:00:00.250Z"), Some(1_514_764_800_250));
        for bad in ["2024-05-01", "2024-13-01T00:00:00Z", "2024-05-01T00:00:00", "2024-05-01T00:00:00+0000", "x024-05-01T00:00:00Z"] {
            assert_eq!(parse_rfc3339_ms(bad), None, "{bad}");
        }
    }
}
