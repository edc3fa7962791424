//! Where a node's price per hour comes from. The daemon asks its [`PriceSource`] every advert
//! tick; an EC2 spot-price source (issue: EC2) implements the same trait.

use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum PriceError {
    #[error("cannot read price trace {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("price trace {path} line {line}: {message}")]
    Parse { path: PathBuf, line: usize, message: String },
    #[error("price trace {path} has no points")]
    Empty { path: PathBuf },
}

/// A source of this node's price. `elapsed` is the time since the daemon started.
pub trait PriceSource: Send {
    /// USD per hour now.
    fn price_at(&mut self, elapsed: Duration) -> f64;
    /// Shown in `hotspot-node status`.
    fn describe(&self) -> String;
}

/// A price from the config file.
#[derive(Debug, Clone)]
pub struct FixedPrice(pub f64);

impl PriceSource for FixedPrice {
    fn price_at(&mut self, _elapsed: Duration) -> f64 {
        self.0
    }
    fn describe(&self) -> String {
        format!("fixed {:.4} USD/h", self.0)
    }
}

/// A recorded price history replayed over time: step function through `(offset, price)` points.
#[derive(Debug, Clone)]
pub struct TracePrice {
    path: PathBuf,
    points: Vec<(Duration, f64)>,
    looped: bool,
}

impl TracePrice {
    /// Reads lines `<seconds> <usd_per_hour>` (whitespace or comma separated, `#` comments).
    pub fn load(path: &Path, looped: bool) -> Result<Self, PriceError> {
        let text = std::fs::read_to_string(path).map_err(|source| PriceError::Read { path: path.into(), source })?;
        Self::parse(path, &text, looped)
    }

    pub fn parse(path: &Path, text: &str, looped: bool) -> Result<Self, PriceError> {
        let err = |line: usize, message: String| PriceError::Parse { path: path.into(), line, message };
        let mut points: Vec<(Duration, f64)> = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let mut fields = line.split(|c: char| c == ',' || c.is_whitespace()).filter(|f| !f.is_empty());
            let (Some(t), Some(p), None) = (fields.next(), fields.next(), fields.next()) else {
                return Err(err(i + 1, format!("expected `<seconds> <usd_per_hour>`, got {line:?}")));
            };
            let t: f64 = t.parse().map_err(|_| err(i + 1, format!("bad time {t:?}")))?;
            let p: f64 = p.parse().map_err(|_| err(i + 1, format!("bad price {p:?}")))?;
            if !(t.is_finite() && t >= 0.0 && p.is_finite() && p >= 0.0) {
                return Err(err(i + 1, "time and price must be finite and >= 0".into()));
            }
            let t = Duration::from_secs_f64(t);
            if points.last().is_some_and(|(last, _)| t <= *last) {
                return Err(err(i + 1, "times must increase".into()));
            }
            points.push((t, p));
        }
        if points.is_empty() {
            return Err(PriceError::Empty { path: path.into() });
        }
        Ok(TracePrice { path: path.into(), points, looped })
    }
}

impl PriceSource for TracePrice {
    fn price_at(&mut self, elapsed: Duration) -> f64 {
        let last = self.points.last().expect("non-empty").0;
        let t = if self.looped && !last.is_zero() {
            // One period ends at the last point's time; it then starts over.
            Duration::from_nanos((elapsed.as_nanos() % last.as_nanos()) as u64)
        } else {
            elapsed
        };
        self.points.iter().take_while(|(at, _)| *at <= t).last().map_or(self.points[0].1, |(_, p)| *p)
    }

    fn describe(&self) -> String {
        format!("trace {} ({} points{})", self.path.display(), self.points.len(), if self.looped { ", looped" } else { "" })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_replays_as_steps_and_loops() {
        let text = "# t price\n0 0.10\n10, 0.05\n20 0.20 # spike\n30 0.10\n";
        let mut t = TracePrice::parse(Path::new("t"), text, true).unwrap();
        let at = |t: &mut TracePrice, s: u64| t.price_at(Duration::from_secs(s));
        assert_eq!(at(&mut t, 0), 0.10);
        assert_eq!(at(&mut t, 9), 0.10);
        assert_eq!(at(&mut t, 10), 0.05);
        assert_eq!(at(&mut t, 25), 0.20);
        assert_eq!(at(&mut t, 35), 0.10, "looped: 35 s is 5 s into the second period");
        assert_eq!(at(&mut t, 41), 0.05);
        let mut once = TracePrice::parse(Path::new("t"), text, false).unwrap();
        assert_eq!(at(&mut once, 1000), 0.10);
    }

    #[test]
    fn bad_traces_say_where() {
        let e = TracePrice::parse(Path::new("p.txt"), "0 0.1\n5 abc\n", false).unwrap_err();
        assert_eq!(e.to_string(), "price trace p.txt line 2: bad price \"abc\"");
        assert!(TracePrice::parse(Path::new("p"), "5 1\n5 2\n", false).is_err());
        assert!(matches!(TracePrice::parse(Path::new("p"), "# nothing\n", false), Err(PriceError::Empty { .. })));
    }
}
