//! Replication's encode and decode: what a primary does to send a write to
//! its secondary, and what the secondary does before it applies it.
//!
//! The input is one connection flush of the compare load: 200 000 samples
//! (50 000 series, 4 samples each, resources spread over 1 024 partitions),
//! grouped into one batch per partition as `PartitionBuilders` makes them.
//! - encode: each partition's batch as a `Replicate` message, framed
//!   (header and CRC-32C) into one buffer, as a peer connection writes it;
//! - decode: the frames taken off that buffer (CRC checked), each message
//!   decoded, its batch validated and every sample read, as a replica does
//!   before it appends the batch (appending is the `append` bench's).

use bytes::BytesMut;
use criterion::{Criterion, Throughput};
use store::batch::{self, Batch, PartitionBuilders};
use tandem::node::msg::Replicate;
use tandem::proto::{self, Kind};

const PARTITIONS: u32 = 1024;
const RESOURCES: usize = 2_500;
const METRICS: usize = 20;
const SAMPLES_PER_SERIES: usize = 4;
const SAMPLES: usize = RESOURCES * METRICS * SAMPLES_PER_SERIES;

/// One flush's batches, by partition.
fn flush() -> Vec<(u32, Batch)> {
    let mut builders = PartitionBuilders::new(PARTITIONS);
    let start = 1_700_000_000_000i64;
    for t in 0..SAMPLES_PER_SERIES {
        for r in 0..RESOURCES {
            let resource = format!("dc1.vm{r}");
            let p = controller::partition_of(resource.as_bytes(), PARTITIONS).0;
            for m in 0..METRICS {
                let value = ((r * 31 + m * 7 + t) % 1000) as f64 / 10.0;
                let metric = format!("metric{m}");
                builders
                    .push(p, &resource, &metric, &[], start + t as i64 * 10_000, value)
                    .expect("a valid key");
            }
        }
    }
    builders.finish()
}

fn encode(batches: &[(u32, Batch)], out: &mut BytesMut) {
    for (i, (p, batch)) in batches.iter().enumerate() {
        let payload = Replicate {
            partition: *p,
            epoch: 7,
            primary_term: 3,
            term: 3,
            lsn: 1_000 + i as u64,
            prev_term: 3,
            batch: batch.bytes(),
        }
        .encode();
        proto::encode(Kind::Replicate, i as u64, &payload, out);
    }
}

/// Samples read back from the frames in `wire`.
fn decode(mut wire: BytesMut) -> usize {
    let mut samples = 0;
    while let Some(frame) = proto::parse(&mut wire).expect("well-formed frames") {
        let m = Replicate::decode(&frame.payload).expect("a Replicate message");
        let view = batch::decode(m.batch).expect("a valid batch");
        for series in view.series() {
            samples += series.samples.count();
        }
    }
    samples
}

fn bench(c: &mut Criterion) {
    let batches = flush();
    let mut wire = BytesMut::new();
    encode(&batches, &mut wire);
    assert_eq!(decode(wire.clone()), SAMPLES);
    eprintln!(
        "{} batches, {} samples, {} bytes framed ({:.1} bytes per sample)",
        batches.len(),
        SAMPLES,
        wire.len(),
        wire.len() as f64 / SAMPLES as f64
    );

    let mut group = c.benchmark_group("replication_200k_samples");
    group.throughput(Throughput::Elements(SAMPLES as u64));
    let mut out = BytesMut::with_capacity(wire.len());
    group.bench_function("encode_and_frame", |b| {
        b.iter(|| {
            out.clear();
            encode(&batches, &mut out);
            out.len()
        })
    });
    group.bench_function("unframe_decode_validate_read", |b| {
        b.iter_batched(|| wire.clone(), decode, criterion::BatchSize::LargeInput)
    });
    group.finish();
}

criterion::criterion_group!(benches, bench);
criterion::criterion_main!(benches);
