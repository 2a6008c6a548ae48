//! Sample codec bench: bytes per sample on the reference mix against plain Gorilla, and throughput.
//!
//! The reference mix: 1/3 constant gauges, 1/3 counters with random integer
//! increments 0..=100, 1/3 random-walk gauges with 2 decimals and steps
//! -5.00..=+5.00; 10 s interval, 8 640 samples (one day) per series, seeded.
//! Sizes count a per-chunk index entry of `INDEX_ENTRY_BYTES`.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use fsdb::codec::{decode_into, ChunkEncoder};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::hint::black_box;

const SAMPLES_PER_SERIES: usize = 8_640;
const INTERVAL_MS: i64 = 10_000;
const SERIES_PER_KIND: usize = 100;
/// Series key ref 8 + min/max ts 16 + count 4 + offset 8 + len 4 + crc 4 = 44,
/// rounded down to the 40 the brief assumes.
const INDEX_ENTRY_BYTES: usize = 40;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Constant,
    Counter,
    Walk,
}

const KINDS: [Kind; 3] = [Kind::Constant, Kind::Counter, Kind::Walk];

fn series(kind: Kind, rng: &mut ChaCha8Rng, jitter_ms: i64) -> Vec<(i64, f64)> {
    let start = 1_700_000_000_000 + rng.gen_range(0..INTERVAL_MS);
    let constant = rng.gen_range(0..100_000) as f64 / 100.0;
    let mut counter = rng.gen_range(0..1_000_000i64);
    let mut cents = rng.gen_range(0..100_000i64);
    (0..SAMPLES_PER_SERIES)
        .map(|i| {
            let jitter = if jitter_ms > 0 {
                rng.gen_range(-jitter_ms..=jitter_ms)
            } else {
                0
            };
            let ts = start + i as i64 * INTERVAL_MS + jitter;
            let v = match kind {
                Kind::Constant => constant,
                Kind::Counter => {
                    counter += rng.gen_range(0..=100);
                    counter as f64
                }
                Kind::Walk => {
                    cents += rng.gen_range(-500..=500);
                    cents as f64 / 100.0
                }
            };
            (ts, v)
        })
        .collect()
}

fn mix(series_per_kind: usize, jitter_ms: i64) -> Vec<(Kind, Vec<(i64, f64)>)> {
    let mut rng = ChaCha8Rng::seed_from_u64(20_240_601);
    (0..series_per_kind)
        .flat_map(|_| KINDS)
        .map(|kind| (kind, series(kind, &mut rng, jitter_ms)))
        .collect()
}

fn tandem_bytes(samples: &[(i64, f64)]) -> usize {
    let mut enc = ChunkEncoder::new();
    for &(ts, v) in samples {
        enc.push(ts, v);
    }
    enc.bytes().len()
}

/// Plain Gorilla (Pelkonen et al., 2015) as the measuring stick: timestamps
/// delta-of-delta in 7/9/12/32-bit buckets (64 bits beyond), values XOR with
/// 5-bit leading zeros and 6-bit length. A 16-byte header (first timestamp
/// plus a count) is added for parity with the tandem header.
mod gorilla {
    #[derive(Default)]
    struct Bits {
        buf: Vec<u8>,
        used: u32,
    }

    impl Bits {
        fn write(&mut self, value: u64, n: u32) {
            for i in (0..n).rev() {
                if self.used % 8 == 0 {
                    self.buf.push(0);
                }
                let bit = ((value >> i) & 1) as u8;
                let last = self.buf.len() - 1;
                self.buf[last] |= bit << (7 - self.used % 8);
                self.used += 1;
            }
        }
    }

    pub fn encoded_bytes(samples: &[(i64, f64)]) -> usize {
        let mut w = Bits::default();
        let (mut prev_ts, mut prev_delta, mut prev_bits) = (0i64, 0i64, 0u64);
        let (mut lead, mut len) = (u32::MAX, 0u32);
        for (i, &(ts, v)) in samples.iter().enumerate() {
            let bits = v.to_bits();
            if i == 0 {
                w.write(bits, 64);
            } else {
                let delta = ts.wrapping_sub(prev_ts);
                let dod = delta.wrapping_sub(prev_delta);
                prev_delta = delta;
                match dod {
                    0 => w.write(0, 1),
                    -63..=64 => (w.write(0b10, 2), w.write(dod as u64 & 0x7f, 7)).1,
                    -255..=256 => (w.write(0b110, 3), w.write(dod as u64 & 0x1ff, 9)).1,
                    -2047..=2048 => (w.write(0b1110, 4), w.write(dod as u64 & 0xfff, 12)).1,
                    _ if i32::try_from(dod).is_ok() => {
                        (w.write(0b11110, 5), w.write(dod as u64 & 0xffff_ffff, 32)).1
                    }
                    _ => (w.write(0b11111, 5), w.write(dod as u64, 64)).1,
                }
                let xor = bits ^ prev_bits;
                if xor == 0 {
                    w.write(0, 1);
                } else {
                    let l = xor.leading_zeros().min(31);
                    let t = xor.trailing_zeros();
                    if lead != u32::MAX && l >= lead && t >= 64 - lead - len {
                        w.write(0b10, 2);
                        w.write(xor >> (64 - lead - len), len);
                    } else {
                        lead = l;
                        len = 64 - l - t;
                        w.write(0b11, 2);
                        w.write(u64::from(l), 5);
                        w.write(u64::from(len - 1), 6);
                        w.write(xor >> t, len);
                    }
                }
            }
            prev_ts = ts;
            prev_bits = bits;
        }
        16 + w.buf.len()
    }
}

/// Bytes per sample per kind and overall, index entries included.
fn report(
    name: &str,
    data: &[(Kind, Vec<(i64, f64)>)],
    chunk: usize,
    size: fn(&[(i64, f64)]) -> usize,
) {
    let mut per_kind = [(0usize, 0usize); 3];
    for (kind, samples) in data {
        let k = KINDS.iter().position(|x| x == kind).expect("known kind");
        for c in samples.chunks(chunk) {
            per_kind[k].0 += size(c) + INDEX_ENTRY_BYTES;
            per_kind[k].1 += c.len();
        }
    }
    let ratio = |(b, n): (usize, usize)| b as f64 / n as f64;
    let total = per_kind
        .iter()
        .fold((0, 0), |acc, &(b, n)| (acc.0 + b, acc.1 + n));
    println!(
        "{name:<28} chunk {chunk:>5}: constant {:.3}  counter {:.3}  walk {:.3}  overall {:.3} B/sample",
        ratio(per_kind[0]),
        ratio(per_kind[1]),
        ratio(per_kind[2]),
        ratio(total),
    );
}

/// Bytes per sample a head chunk holds in memory: the encoder itself plus its
/// heap buffer with spare capacity, as the store accounts it.
fn report_memory(data: &[(Kind, Vec<(i64, f64)>)], chunk: usize) {
    let (mut bytes, mut n) = (0, 0);
    for (_, samples) in data {
        for c in samples.chunks(chunk) {
            let mut enc = ChunkEncoder::new();
            c.iter().for_each(|&(t, v)| enc.push(t, v));
            bytes += enc.heap_bytes() + std::mem::size_of::<ChunkEncoder>();
            n += c.len();
        }
    }
    println!(
        "tandem head chunk in memory  chunk {chunk:>5}: {:.3} B/sample (encoder {} B + heap incl. capacity)",
        bytes as f64 / n as f64,
        std::mem::size_of::<ChunkEncoder>()
    );
}

fn print_sizes() {
    println!(
        "bytes/sample, {SERIES_PER_KIND} series per kind x {SAMPLES_PER_SERIES} samples, index entry {INDEX_ENTRY_BYTES} B per chunk"
    );
    for jitter in [0, 25] {
        let data = mix(SERIES_PER_KIND, jitter);
        for chunk in [SAMPLES_PER_SERIES, 720, 120] {
            report(
                &format!("tandem jitter ±{jitter} ms"),
                &data,
                chunk,
                tandem_bytes,
            );
            report(
                &format!("gorilla jitter ±{jitter} ms"),
                &data,
                chunk,
                gorilla::encoded_bytes,
            );
            if jitter == 0 {
                report_memory(&data, chunk);
            }
        }
    }
}

fn bench(c: &mut Criterion) {
    print_sizes();
    let data = mix(10, 0);
    let samples: usize = data.iter().map(|(_, s)| s.len()).sum();
    let chunks: Vec<Vec<u8>> = data
        .iter()
        .map(|(_, s)| {
            let mut enc = ChunkEncoder::new();
            s.iter().for_each(|&(t, v)| enc.push(t, v));
            enc.bytes().to_vec()
        })
        .collect();
    let mut group = c.benchmark_group("codec");
    group.throughput(Throughput::Elements(samples as u64));
    group.bench_function("encode_mix", |b| {
        b.iter(|| {
            for (_, s) in &data {
                let mut enc = ChunkEncoder::new();
                for &(t, v) in s {
                    enc.push(t, v);
                }
                black_box(enc.bytes().len());
            }
        })
    });
    group.bench_function("decode_mix", |b| {
        b.iter_batched_ref(
            || Vec::with_capacity(SAMPLES_PER_SERIES),
            |out| {
                for chunk in &chunks {
                    out.clear();
                    decode_into(chunk, out).expect("chunk decodes");
                    black_box(out.len());
                }
            },
            BatchSize::SmallInput,
        )
    });
    group.bench_function("gorilla_encode_mix", |b| {
        b.iter(|| {
            for (_, s) in &data {
                black_box(gorilla::encoded_bytes(s));
            }
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
