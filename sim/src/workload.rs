//! The synthetic load calibrate pushes through the store: the reference mix of `tandem push`.
//!
//! A third constant gauges, a third counters with integer increments 0..=100,
//! a third random walks with two decimals and steps in [-5, 5]. One *round*
//! is one sample of every series at one timestamp, as a collector sends it
//! every interval.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use store::batch::BatchBuilder;

pub struct Workload {
    series: Vec<(String, String, f64)>,
    rng: ChaCha8Rng,
    round: u64,
    start_ms: i64,
    interval_ms: i64,
}

impl Workload {
    /// `resources x metrics` series named `vm<r>` / `metric<m>`.
    pub fn new(resources: u32, metrics: u32, interval_ms: i64, seed: u64) -> Workload {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut series = Vec::with_capacity((resources * metrics) as usize);
        for r in 0..resources {
            for m in 0..metrics {
                let start = match (r * metrics + m) % 3 {
                    1 => 0.0,
                    _ => (rng.gen_range(0..10_000) as f64) / 100.0,
                };
                series.push((format!("vm{r}"), format!("metric{m}"), start));
            }
        }
        Workload {
            series,
            rng,
            round: 0,
            start_ms: 1_700_000_000_000,
            interval_ms,
        }
    }

    pub fn series(&self) -> usize {
        self.series.len()
    }

    /// Average canonical key length of the series, in bytes.
    pub fn key_bytes(&self) -> f64 {
        let total: usize = self
            .series
            .iter()
            .map(|(r, m, _)| {
                store::SeriesKey::new(r, m, &[])
                    .map(|k| k.encoded_len())
                    .unwrap_or(0)
            })
            .sum();
        total as f64 / self.series.len().max(1) as f64
    }

    /// Timestamp of the next round.
    pub fn next_ts(&self) -> i64 {
        self.start_ms + self.round as i64 * self.interval_ms
    }

    /// The next round, encoded as one batch (what a collector sends).
    pub fn next_round(&mut self, builder: &mut BatchBuilder, out: &mut Vec<u8>) {
        builder.clear();
        let ts = self.next_ts();
        for (i, (resource, metric, value)) in self.series.iter_mut().enumerate() {
            if self.round > 0 {
                match i % 3 {
                    0 => {}
                    1 => *value += self.rng.gen_range(0..=100) as f64,
                    _ => {
                        *value = ((*value * 100.0).round() + self.rng.gen_range(-500..=500) as f64)
                            / 100.0
                    }
                }
            }
            builder
                .push(resource, metric, &[], ts, *value)
                .expect("synthetic keys are valid");
        }
        out.clear();
        builder.encode(out);
        self.round += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_round_holds_one_sample_of_every_series() {
        let mut w = Workload::new(10, 3, 300_000, 1);
        let (mut b, mut out) = (BatchBuilder::new(), Vec::new());
        w.next_round(&mut b, &mut out);
        let view = store::batch::decode(&out).unwrap();
        assert_eq!((view.series_count(), view.sample_count()), (30, 30));
        assert_eq!(w.next_ts(), 1_700_000_300_000);
        // "vm0"/"metric0": 2 + 3 + 2 + 7 + 1 (no tags) bytes.
        assert!((Workload::new(1, 1, 1, 1).key_bytes() - 15.0).abs() < 1e-9);
    }
}
