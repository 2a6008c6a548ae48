//! Tests of the sample codec: round trips, streaming prefixes, compactness, bad bytes.

use super::*;
use proptest::prelude::*;

fn encode(samples: &[(i64, f64)]) -> ChunkEncoder {
    let mut enc = ChunkEncoder::new();
    for &(ts, v) in samples {
        enc.push(ts, v);
    }
    enc
}

fn bits_of(samples: &[(i64, f64)]) -> Vec<(i64, u64)> {
    samples.iter().map(|&(t, v)| (t, v.to_bits())).collect()
}

fn decoded(bytes: &[u8]) -> Vec<(i64, f64)> {
    let mut out = Vec::new();
    decode_into(bytes, &mut out).expect("chunk decodes");
    out
}

/// Round-trips `samples` bit-exactly, checks that every prefix decodes while
/// the chunk grows, and that the chunk takes at most `max_bits_per_sample`
/// bits per sample after the header and the first sample.
fn check(samples: &[(i64, f64)], max_bits_per_sample: f64) {
    let mut enc = ChunkEncoder::new();
    for (i, &(ts, v)) in samples.iter().enumerate() {
        enc.push(ts, v);
        assert_eq!(enc.len(), i + 1);
        assert_eq!(enc.first_ts(), Some(samples[0].0));
        assert_eq!(enc.last_ts(), Some(ts));
        assert_eq!(bits_of(&decoded(enc.bytes())), bits_of(&samples[..=i]));
    }
    let iter_decoded: Vec<_> = decode(enc.bytes())
        .expect("header")
        .collect::<Result<_>>()
        .expect("chunk decodes");
    assert_eq!(bits_of(&iter_decoded), bits_of(samples));
    if samples.len() > 1 {
        let body_bits = ((enc.bytes().len() - HEADER_BYTES) * 8) as f64;
        // The first sample: 64 bits of timestamp and up to ~80 bits of value.
        let per_sample = (body_bits - 144.0).max(0.0) / (samples.len() - 1) as f64;
        assert!(
            per_sample <= max_bits_per_sample,
            "{per_sample:.2} bits/sample > {max_bits_per_sample}"
        );
    }
}

fn regular(values: &[f64]) -> Vec<(i64, f64)> {
    values
        .iter()
        .enumerate()
        .map(|(i, &v)| (1_700_000_000_000 + 10_000 * i as i64, v))
        .collect()
}

/// A small deterministic generator, so the unit tests need no RNG crate.
fn lcg(seed: &mut u64) -> u64 {
    *seed = seed
        .wrapping_mul(6_364_136_223_846_793_005)
        .wrapping_add(1_442_695_040_888_963_407);
    *seed >> 11
}

#[test]
fn empty_chunk() {
    let enc = ChunkEncoder::new();
    assert!(enc.is_empty());
    assert_eq!(enc.first_ts(), None);
    assert_eq!(enc.last_ts(), None);
    assert_eq!(enc.bytes(), &[FORMAT_VERSION, 0, 0, 0, 0]);
    assert!(decoded(enc.bytes()).is_empty());
    check(&[], 0.0);
}

#[test]
fn special_floats_round_trip_bit_exactly() {
    let nan_payload = f64::from_bits(0x7ff8_0000_dead_beef);
    let neg_nan = f64::from_bits(0xfff0_0000_0000_0001);
    check(
        &regular(&[
            f64::NAN,
            nan_payload,
            neg_nan,
            f64::INFINITY,
            f64::NEG_INFINITY,
            -0.0,
            0.0,
            -0.0,
            f64::MIN_POSITIVE,
            f64::from_bits(1),
            f64::MAX,
            f64::MIN,
            1.5,
            nan_payload,
            nan_payload,
            2.25,
        ]),
        80.0,
    );
}

#[test]
fn timestamps_in_any_order_and_range() {
    let ts = [
        0,
        -1,
        i64::MAX,
        i64::MIN,
        i64::MIN + 1,
        5,
        5,
        4,
        1_700_000_000_000,
        1_699_999_999_999,
        -1_700_000_000_000,
        i64::MAX,
        7,
    ];
    let samples: Vec<_> = ts.iter().map(|&t| (t, 1.0)).collect();
    check(&samples, 80.0);
    let irregular: Vec<_> = (0..200i64)
        .scan((0i64, 1u64), |(t, seed), _| {
            *t += (lcg(seed) % 30_000) as i64 - 5_000;
            Some((*t, 3.0))
        })
        .collect();
    check(&irregular, 22.0);
}

#[test]
fn constant_runs_cost_a_fraction_of_a_bit() {
    check(&regular(&[42.5; 1000]), 0.1);
    check(&regular(&[0.0; 1000]), 0.1);
    check(&regular(&[f64::NAN; 1000]), 0.15);
    // A constant that is no short decimal runs in float mode.
    check(&regular(&[std::f64::consts::PI; 1000]), 0.15);
}

#[test]
fn runs_end_and_resume_with_the_value_state_intact() {
    // A ramp in dod packing, a plateau run, the ramp again, a plateau of a
    // one-off NaN (no run in decimal mode), and an interval change mid-run.
    let mut samples = Vec::new();
    let mut ts = 0i64;
    let mut push = |dt: i64, v: f64| {
        ts += dt;
        samples.push((ts, v));
    };
    for i in 0..40 {
        push(10, 100.0 + 2.5 * f64::from(i));
    }
    for _ in 0..300 {
        push(10, 197.5);
    }
    for i in 0..40 {
        push(10, 200.0 + 2.5 * f64::from(i));
    }
    for _ in 0..3 {
        push(10, f64::NAN);
    }
    push(10, 7.25);
    for _ in 0..20 {
        push(10, 7.25);
    }
    for _ in 0..20 {
        push(11, 7.25);
    }
    check(&samples, 6.0);
}

#[test]
fn counters_pack_deltas_unsigned() {
    let mut seed = 7;
    let mut c = 1_000_000i64;
    let values: Vec<f64> = (0..2000)
        .map(|_| {
            c += (lcg(&mut seed) % 101) as i64;
            c as f64
        })
        .collect();
    // 1 bit of sample code, 7 bits of increment.
    check(&regular(&values), 8.2);
}

#[test]
fn decimal_random_walk_packs_scaled_deltas() {
    let mut seed = 11;
    let mut cents = 5_000i64;
    let values: Vec<f64> = (0..2000)
        .map(|_| {
            cents += (lcg(&mut seed) % 1001) as i64 - 500;
            cents as f64 / 100.0
        })
        .collect();
    // 1 bit of sample code, 10 bits of zigzag step.
    check(&regular(&values), 11.2);
}

#[test]
fn scale_drops_again_when_extra_digits_stop() {
    let mut seed = 13;
    let mut cents = 5_000i64;
    let mut values: Vec<f64> = vec![50.125];
    values.extend((0..2000).map(|_| {
        cents += (lcg(&mut seed) % 1001) as i64 - 500;
        cents as f64 / 100.0
    }));
    // As the 2-decimal walk, not 3.3 bits more per value at scale 3.
    check(&regular(&values), 11.4);
}

#[test]
fn linear_ramp_uses_delta_of_delta() {
    // One bit per sample: sample code 0 and a zero-width dod payload.
    let values: Vec<f64> = (0..5000).map(|i| 1000.0 + 12.5 * i as f64).collect();
    check(&regular(&values), 1.05);
}

#[test]
fn scale_changes_mid_chunk() {
    let mut values = vec![1.0, 2.0, 3.0, 1.5, 1.25, 1.125, 1.0625, 7.0];
    values.extend((0..100).map(|i| i as f64 / 1000.0));
    values.extend([1e-20, 1e20, 123456789.123, 1e300, 1e-300, 0.1 + 0.2, 3.0]);
    values.extend((0..100).map(|i| i as f64 / 10.0));
    check(&regular(&values), 24.0);
}

#[test]
fn arbitrary_floats_fall_back_to_xor() {
    let mut seed = 3;
    let random_bits: Vec<f64> = (0..300)
        .map(|_| f64::from_bits(lcg(&mut seed) << 11 ^ lcg(&mut seed)))
        .collect();
    check(&regular(&random_bits), 80.0);
    // Smooth non-decimal floats compress like Gorilla.
    let smooth: Vec<f64> = (0..500).map(|i| (i as f64 / 50.0).sin()).collect();
    check(&regular(&smooth), 70.0);
}

#[test]
fn isolated_odd_values_keep_the_decimal_packing() {
    let mut values: Vec<f64> = (0..300).map(|i| (i % 7) as f64 / 10.0).collect();
    for i in (10..300).step_by(50) {
        values[i] = f64::NAN;
    }
    check(&regular(&values), 7.5);
}

#[test]
fn packing_narrows_again_after_a_burst() {
    let mut seed = 5;
    let mut c = 0i64;
    let values: Vec<f64> = (0..2000)
        .map(|i| {
            c += (lcg(&mut seed) % 4) as i64 + if i == 500 { 1_000_000 } else { 0 };
            c as f64
        })
        .collect();
    // 1 bit of sample code, 2 bits of increment, plus the burst.
    check(&regular(&values), 3.4);
}

#[test]
fn encoder_state_is_small() {
    // The store holds one encoder per series besides its bytes.
    assert!(std::mem::size_of::<ChunkEncoder>() <= 104);
}

#[test]
fn heap_bytes_tracks_capacity_and_shrinks() {
    let values: Vec<f64> = (0..4000).map(|i| f64::from(i * i % 1000)).collect();
    let mut enc = encode(&regular(&values));
    assert!(enc.bytes().len() > 4000);
    assert!(enc.heap_bytes() >= enc.bytes().len());
    // Growth by an eighth keeps the slack under about an eighth of the bytes.
    assert!(enc.heap_bytes() * 8 <= enc.bytes().len() * 9 + 16 * 8);
    enc.shrink_to_fit();
    assert_eq!(enc.heap_bytes(), enc.bytes().len());
}

fn check_err(bytes: &[u8], expected: Error) {
    let err = decode(bytes)
        .and_then(|iter| iter.collect::<Result<Vec<_>>>())
        .expect_err("bad chunk must not decode");
    assert_eq!(err, expected);
    let mut out = Vec::new();
    assert_eq!(decode_into(bytes, &mut out), Err(expected));
}

#[test]
fn bad_chunks_are_errors() {
    check_err(&[], Error::ShortHeader { len: 0 });
    check_err(&[1, 0, 0], Error::ShortHeader { len: 3 });
    check_err(&[9, 0, 0, 0, 0], Error::UnknownVersion { version: 9 });
    check_err(
        &[1, 1, 0, 0, 0, 0, 0],
        Error::CountTooLarge {
            count: 1,
            body_bits: 16,
        },
    );
    check_err(
        &[1, 255, 255, 255, 255, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        Error::CountTooLarge {
            count: u32::MAX,
            body_bits: 72,
        },
    );
    let good = encode(&regular(&[1.0, 2.0, 3.5, 4.25])).bytes().to_vec();
    let mut trailing = good.clone();
    trailing.push(0);
    check_err(
        &trailing,
        Error::Corrupted {
            index: 3,
            reason: "bytes after the last sample",
        },
    );
    check_err(
        &good[..good.len() - 1],
        Error::Truncated { index: 3, count: 4 },
    );
    // Two samples: the first 0.0 at scale 0, the second a scale change to 31.
    let mut w = BitWriter {
        buf: vec![FORMAT_VERSION, 2, 0, 0, 0],
        free: 0,
    };
    w.write(0, 64);
    w.write(0b110, 3);
    w.write(0, 5 + 6);
    // Sample code 1, timestamp dod 0, then the scale change.
    w.write(0b10, 2);
    w.write(0b110, 3);
    w.write(31, 5);
    w.write(0, 6);
    let bytes = w.buf;
    check_err(
        &bytes,
        Error::Corrupted {
            index: 1,
            reason: "decimal scale above 22",
        },
    );
}

fn any_value() -> impl Strategy<Value = f64> {
    prop_oneof![
        any::<u64>().prop_map(f64::from_bits),
        (-100_000i64..100_000, 0u32..6).prop_map(|(m, e)| m as f64 / 10f64.powi(e as i32)),
        Just(f64::NAN),
        Just(-0.0),
        Just(f64::INFINITY),
        Just(f64::NEG_INFINITY),
        any::<i32>().prop_map(f64::from),
    ]
}

fn any_ts_step() -> impl Strategy<Value = i64> {
    prop_oneof![Just(10_000i64), -20_000i64..20_000, any::<i64>(),]
}

/// Runs of repeated values and steady steps, so that packings change often.
fn any_samples() -> impl Strategy<Value = Vec<(i64, f64)>> {
    (
        any::<i64>(),
        prop::collection::vec((any_ts_step(), any_value(), 1usize..20), 0..40),
    )
        .prop_map(|(start, runs)| {
            let mut ts = start;
            let mut out = Vec::new();
            for (step, v, repeat) in runs {
                for _ in 0..repeat {
                    ts = ts.wrapping_add(step);
                    out.push((ts, v));
                }
            }
            out
        })
}

/// Deterministic: a fixed seed and 300 cases; `PROPTEST_CASES=N` runs a
/// deeper search locally (same seed, more cases).
fn config() -> ProptestConfig {
    let base = ProptestConfig::default();
    let cases = match std::env::var_os("PROPTEST_CASES") {
        Some(_) => base.cases,
        None => 300,
    };
    ProptestConfig {
        cases,
        rng_seed: prop::test_runner::RngSeed::Fixed(20_261_122),
        ..base
    }
}

/// Decodes as `decode_into` does, every sample through the general path.
fn decoded_generally(bytes: &[u8]) -> (Vec<(i64, u64)>, Result<()>) {
    let mut out = Vec::new();
    let result = decode(bytes).and_then(|mut iter| {
        while iter.index < iter.count {
            let (ts, v) = iter.next_any()?;
            out.push((ts, v.to_bits()));
        }
        Ok(())
    });
    (out, result)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn the_one_load_path_decodes_as_the_general_one(
        samples in any_samples(),
        count in 0u32..300,
        body in prop::collection::vec(any::<u8>(), 0..300),
    ) {
        let mut random = vec![FORMAT_VERSION];
        random.extend_from_slice(&count.to_le_bytes());
        random.extend_from_slice(&body);
        for bytes in [encode(&samples).bytes(), &random] {
            let mut out = Vec::new();
            let result = decode_into(bytes, &mut out);
            prop_assert_eq!((bits_of(&out), result), decoded_generally(bytes));
        }
    }

    #[test]
    fn round_trips_any_samples(samples in any_samples()) {
        let enc = encode(&samples);
        prop_assert_eq!(bits_of(&decoded(enc.bytes())), bits_of(&samples));
    }

    #[test]
    fn every_prefix_decodes_while_streaming(samples in prop::collection::vec((any::<i64>(), any_value()), 0..60)) {
        let mut enc = ChunkEncoder::new();
        for (i, &(ts, v)) in samples.iter().enumerate() {
            enc.push(ts, v);
            prop_assert_eq!(bits_of(&decoded(enc.bytes())), bits_of(&samples[..=i]));
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(
        raw in prop::collection::vec(any::<u8>(), 0..200),
        count in 0u32..300,
        body in prop::collection::vec(any::<u8>(), 0..300),
    ) {
        // Raw bytes exercise the header checks; a valid header with a small
        // count over random bits exercises every code path of the decoder.
        let mut chunk = vec![FORMAT_VERSION];
        chunk.extend_from_slice(&count.to_le_bytes());
        chunk.extend_from_slice(&body);
        for bytes in [&raw, &chunk] {
            if let Ok(iter) = decode(bytes) {
                let n = iter.sample_count();
                let mut yielded = 0;
                for sample in iter.take(n + 1) {
                    yielded += 1;
                    if sample.is_err() {
                        break;
                    }
                }
                prop_assert!(yielded <= n);
            }
        }
    }

    #[test]
    fn damaged_chunks_never_panic(samples in any_samples(), cut in any::<prop::sample::Index>(), flips in prop::collection::vec(any::<prop::sample::Index>(), 1..4)) {
        let good = encode(&samples).bytes().to_vec();
        let truncated = &good[..cut.index(good.len() + 1)];
        let mut out = Vec::new();
        let result = decode_into(truncated, &mut out);
        if truncated.len() < good.len() {
            prop_assert!(result.is_err());
        }
        let mut flipped = good.clone();
        for f in flips {
            let bit = f.index(flipped.len() * 8);
            flipped[bit / 8] ^= 1 << (bit % 8);
        }
        out.clear();
        let _ = decode_into(&flipped, &mut out);
        prop_assert!(out.len() as u64 <= max_samples(flipped.len() as u64 * 8));
    }
}

proptest! {
    #[test]
    fn rounding_with_two_additions_is_rounding_half_to_even(
        x in prop_oneof![
            any::<f64>(),
            (-1e6f64..1e6).prop_map(|x| (x * 2.0).round() / 2.0),
            (-9.1e15f64..9.1e15),
        ],
    ) {
        let (got, want) = (round_half_even(x), x.round_ties_even());
        prop_assert!(got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()), "{x}: {got} vs {want}");
    }
}
