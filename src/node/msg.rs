//! Payloads of the node-to-node frames: forward, replicate, catch-up, snapshot, select. Little-endian, sans-IO.

use crate::proto::ErrorCode;

/// Reads fixed-width little-endian fields off the front of a payload.
pub struct Reader<'a> {
    buf: &'a [u8],
}

pub type DecodeResult<T> = Result<T, (ErrorCode, String)>;

fn short() -> (ErrorCode, String) {
    (ErrorCode::BadRequest, "truncated payload".to_string())
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf }
    }

    pub fn u32(&mut self) -> DecodeResult<u32> {
        let (head, rest) = self.buf.split_first_chunk::<4>().ok_or_else(short)?;
        self.buf = rest;
        Ok(u32::from_le_bytes(*head))
    }

    pub fn u64(&mut self) -> DecodeResult<u64> {
        let (head, rest) = self.buf.split_first_chunk::<8>().ok_or_else(short)?;
        self.buf = rest;
        Ok(u64::from_le_bytes(*head))
    }

    pub fn bytes(&mut self, len: usize) -> DecodeResult<&'a [u8]> {
        if self.buf.len() < len {
            return Err(short());
        }
        let (head, rest) = self.buf.split_at(len);
        self.buf = rest;
        Ok(head)
    }

    /// A u32 length followed by that many bytes.
    pub fn sized(&mut self) -> DecodeResult<&'a [u8]> {
        let len = self.u32()? as usize;
        self.bytes(len)
    }

    pub fn rest(self) -> &'a [u8] {
        self.buf
    }
}

pub fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

pub fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

pub fn put_sized(out: &mut Vec<u8>, bytes: &[u8]) {
    put_u32(out, bytes.len() as u32);
    out.extend_from_slice(bytes);
}

/// Gateway -> primary: one partition's batch, with the gateway's map epoch.
pub struct Forward<'a> {
    pub partition: u32,
    pub epoch: u64,
    pub batch: &'a [u8],
}

impl<'a> Forward<'a> {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(12 + self.batch.len());
        put_u32(&mut out, self.partition);
        put_u64(&mut out, self.epoch);
        out.extend_from_slice(self.batch);
        out
    }

    pub fn decode(buf: &'a [u8]) -> DecodeResult<Forward<'a>> {
        let mut r = Reader::new(buf);
        Ok(Forward {
            partition: r.u32()?,
            epoch: r.u64()?,
            batch: r.rest(),
        })
    }
}

/// Primary -> replica: one log record, stamped with the primary's epoch and term.
pub struct Replicate<'a> {
    pub partition: u32,
    pub epoch: u64,
    /// The sender's term as primary: what fencing compares. A resend of
    /// older records comes with the current primary's term, not theirs.
    pub primary_term: u64,
    /// The record's own term (log matching).
    pub term: u64,
    pub lsn: u64,
    /// The term of the primary's record at `lsn - 1` (0 for none): the
    /// replica appends only after a record of that term (log matching).
    pub prev_term: u64,
    pub batch: &'a [u8],
}

impl<'a> Replicate<'a> {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(44 + self.batch.len());
        put_u32(&mut out, self.partition);
        put_u64(&mut out, self.epoch);
        put_u64(&mut out, self.primary_term);
        put_u64(&mut out, self.term);
        put_u64(&mut out, self.lsn);
        put_u64(&mut out, self.prev_term);
        out.extend_from_slice(self.batch);
        out
    }

    pub fn decode(buf: &'a [u8]) -> DecodeResult<Replicate<'a>> {
        let mut r = Reader::new(buf);
        Ok(Replicate {
            partition: r.u32()?,
            epoch: r.u64()?,
            primary_term: r.u64()?,
            term: r.u64()?,
            lsn: r.u64()?,
            prev_term: r.u64()?,
            batch: r.rest(),
        })
    }
}

/// A replica's answer to `Replicate`: its last LSN and term, and whether it
/// could not append the record (a gap before it, or a last record of
/// another term). The primary then resends from where the replica's log
/// stops matching its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplicateAck {
    pub last_lsn: u64,
    pub last_term: u64,
    pub gap: bool,
}

impl ReplicateAck {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(17);
        put_u64(&mut out, self.last_lsn);
        put_u64(&mut out, self.last_term);
        out.push(self.gap as u8);
        out
    }

    pub fn decode(buf: &[u8]) -> DecodeResult<ReplicateAck> {
        let mut r = Reader::new(buf);
        let last_lsn = r.u64()?;
        let last_term = r.u64()?;
        let gap = r.bytes(1)?[0] != 0;
        Ok(ReplicateAck {
            last_lsn,
            last_term,
            gap,
        })
    }
}

/// Replica -> source: records of `partition` from `from_lsn`, at most about
/// `max_bytes`. A new primary sets `fence_term` to its term: the source then
/// refuses records of older terms (the old primary can no longer get an
/// acknowledgement through it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CatchUpRequest {
    pub partition: u32,
    pub from_lsn: u64,
    pub max_bytes: u32,
    pub fence_term: u64,
}

impl CatchUpRequest {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16);
        put_u32(&mut out, self.partition);
        put_u64(&mut out, self.from_lsn);
        put_u32(&mut out, self.max_bytes);
        put_u64(&mut out, self.fence_term);
        out
    }

    pub fn decode(buf: &[u8]) -> DecodeResult<CatchUpRequest> {
        let mut r = Reader::new(buf);
        Ok(CatchUpRequest {
            partition: r.u32()?,
            from_lsn: r.u64()?,
            max_bytes: r.u32()?,
            fence_term: r.u64()?,
        })
    }
}

/// One log record on the wire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WireRecord {
    pub lsn: u64,
    pub term: u64,
    pub batch: Vec<u8>,
}

/// The source's answer: its last LSN and term history (for divergence
/// checks), and the records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CatchUpReply {
    pub last_lsn: u64,
    /// `(term, first lsn of that term)`, oldest first.
    pub term_history: Vec<(u64, u64)>,
    pub records: Vec<WireRecord>,
}

impl CatchUpReply {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        put_u64(&mut out, self.last_lsn);
        put_u32(&mut out, self.term_history.len() as u32);
        for &(t, l) in &self.term_history {
            put_u64(&mut out, t);
            put_u64(&mut out, l);
        }
        put_records(&mut out, &self.records);
        out
    }

    pub fn decode(buf: &[u8]) -> DecodeResult<CatchUpReply> {
        let mut r = Reader::new(buf);
        let last_lsn = r.u64()?;
        let n = r.u32()? as usize;
        let mut term_history = Vec::with_capacity(n.min(1024));
        for _ in 0..n {
            term_history.push((r.u64()?, r.u64()?));
        }
        let records = get_records(&mut r)?;
        Ok(CatchUpReply {
            last_lsn,
            term_history,
            records,
        })
    }
}

fn put_records(out: &mut Vec<u8>, records: &[WireRecord]) {
    put_u32(out, records.len() as u32);
    for rec in records {
        put_u64(out, rec.lsn);
        put_u64(out, rec.term);
        put_sized(out, &rec.batch);
    }
}

fn get_records(r: &mut Reader<'_>) -> DecodeResult<Vec<WireRecord>> {
    let n = r.u32()? as usize;
    let mut records = Vec::with_capacity(n.min(4096));
    for _ in 0..n {
        records.push(WireRecord {
            lsn: r.u64()?,
            term: r.u64()?,
            batch: r.sized()?.to_vec(),
        });
    }
    Ok(records)
}

/// A full copy of a partition, as of `lsn` in `term`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotReply {
    pub lsn: u64,
    pub term: u64,
    pub batches: Vec<Vec<u8>>,
}

impl SnapshotReply {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        put_u64(&mut out, self.lsn);
        put_u64(&mut out, self.term);
        put_u32(&mut out, self.batches.len() as u32);
        for b in &self.batches {
            put_sized(&mut out, b);
        }
        out
    }

    pub fn decode(buf: &[u8]) -> DecodeResult<SnapshotReply> {
        let mut r = Reader::new(buf);
        let (lsn, term) = (r.u64()?, r.u64()?);
        let n = r.u32()? as usize;
        let mut batches = Vec::with_capacity(n.min(4096));
        for _ in 0..n {
            batches.push(r.sized()?.to_vec());
        }
        Ok(SnapshotReply { lsn, term, batches })
    }
}

/// What a query needs from a node: series matching `matchers` in `[start, end]`
/// of the listed partitions.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SelectRequest {
    pub partitions: Vec<u32>,
    /// `(label, op, value)` with op one of `=`, `!=`, `=~`, `!~`.
    pub matchers: Vec<(String, String, String)>,
    pub start_ms: i64,
    pub end_ms: i64,
}

/// The answer: partitions the node could not serve (not an Active copy
/// there), then one encoded batch with the matching series.
pub struct SelectReply<'a> {
    pub missing: Vec<u32>,
    pub batch: &'a [u8],
}

impl<'a> SelectReply<'a> {
    pub fn encode(missing: &[u32], batch: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + 4 * missing.len() + batch.len());
        put_u32(&mut out, missing.len() as u32);
        for &p in missing {
            put_u32(&mut out, p);
        }
        out.extend_from_slice(batch);
        out
    }

    pub fn decode(buf: &'a [u8]) -> DecodeResult<SelectReply<'a>> {
        let mut r = Reader::new(buf);
        let n = r.u32()? as usize;
        let mut missing = Vec::with_capacity(n.min(65536));
        for _ in 0..n {
            missing.push(r.u32()?);
        }
        Ok(SelectReply {
            missing,
            batch: r.rest(),
        })
    }
}

/// What a query needs folded by a node: aggregation `index` of `expr`
/// (see `store::query::FoldPlan`) over the listed partitions, at
/// `start_ms + k * step_ms` up to `end_ms`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FoldRequest {
    pub partitions: Vec<u32>,
    pub expr: String,
    pub index: usize,
    pub start_ms: i64,
    pub end_ms: i64,
    pub step_ms: i64,
}

/// The answer: partitions the node could not serve, then the partial of
/// the others, or nothing when the aggregation does not fold there.
pub struct FoldReply<'a> {
    pub missing: Vec<u32>,
    pub partial: Option<&'a [u8]>,
}

impl<'a> FoldReply<'a> {
    pub fn encode(missing: &[u32], partial: Option<&[u8]>) -> Vec<u8> {
        let mut out = SelectReply::encode(missing, &[]);
        if let Some(p) = partial {
            out.extend_from_slice(p);
        }
        out
    }

    pub fn decode(buf: &'a [u8]) -> DecodeResult<FoldReply<'a>> {
        let s = SelectReply::decode(buf)?;
        Ok(FoldReply {
            missing: s.missing,
            partial: (!s.batch.is_empty()).then_some(s.batch),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        let f = Forward {
            partition: 7,
            epoch: 9,
            batch: b"abc",
        }
        .encode();
        let d = Forward::decode(&f).unwrap();
        assert_eq!((d.partition, d.epoch, d.batch), (7, 9, &b"abc"[..]));

        let r = Replicate {
            partition: 1,
            epoch: 2,
            primary_term: 5,
            term: 3,
            lsn: 4,
            prev_term: 2,
            batch: b"xy",
        }
        .encode();
        let d = Replicate::decode(&r).unwrap();
        assert_eq!(
            (
                d.partition,
                d.epoch,
                d.primary_term,
                d.term,
                d.lsn,
                d.prev_term,
                d.batch
            ),
            (1, 2, 5, 3, 4, 2, &b"xy"[..])
        );

        let a = ReplicateAck {
            last_lsn: 5,
            last_term: 2,
            gap: true,
        };
        assert_eq!(ReplicateAck::decode(&a.encode()).unwrap(), a);

        let c = CatchUpRequest {
            partition: 3,
            from_lsn: 10,
            max_bytes: 1 << 20,
            fence_term: 4,
        };
        assert_eq!(CatchUpRequest::decode(&c.encode()).unwrap(), c);

        let reply = CatchUpReply {
            last_lsn: 12,
            term_history: vec![(1, 1), (3, 8)],
            records: vec![
                WireRecord {
                    lsn: 11,
                    term: 3,
                    batch: b"one".to_vec(),
                },
                WireRecord {
                    lsn: 12,
                    term: 3,
                    batch: vec![],
                },
            ],
        };
        assert_eq!(CatchUpReply::decode(&reply.encode()).unwrap(), reply);

        let s = SnapshotReply {
            lsn: 4,
            term: 2,
            batches: vec![b"a".to_vec(), b"bc".to_vec()],
        };
        assert_eq!(SnapshotReply::decode(&s.encode()).unwrap(), s);

        let fold = FoldReply::encode(&[3], Some(b"partial"));
        let d = FoldReply::decode(&fold).unwrap();
        assert_eq!((d.missing, d.partial), (vec![3], Some(&b"partial"[..])));
        let declined = FoldReply::encode(&[], None);
        assert_eq!(FoldReply::decode(&declined).unwrap().partial, None);
        let sel = SelectReply::encode(&[4, 5], b"batch");
        let d = SelectReply::decode(&sel).unwrap();
        assert_eq!((d.missing, d.batch), (vec![4, 5], &b"batch"[..]));
    }

    #[test]
    fn truncated_payloads_are_errors() {
        let reply = CatchUpReply {
            last_lsn: 1,
            term_history: vec![(1, 1)],
            records: vec![WireRecord {
                lsn: 1,
                term: 1,
                batch: b"x".to_vec(),
            }],
        }
        .encode();
        for cut in 0..reply.len() {
            assert!(CatchUpReply::decode(&reply[..cut]).is_err(), "cut at {cut}");
        }
        assert!(Replicate::decode(&[1, 2, 3]).is_err());
        assert!(SnapshotReply::decode(&[0; 19]).is_err());
    }
}
