//! Byte layout of log segments: the segment header, the two synced-watermark slots and the
//! record frame. Pure functions over byte slices; `FORMAT.md` describes the same layout.

use crate::{Lsn, Term};

pub(crate) const MAGIC: &[u8; 8] = b"TDMLOG\0\x01";
pub(crate) const VERSION: u32 = 1;
/// Records start here; everything before is the header.
pub(crate) const DATA_START: usize = 1024;
/// At most this many term-history entries are carried in a header (the newest ones).
pub(crate) const MAX_TERMS: usize = 56;
const TERMS_OFFSET: usize = 64;
/// The two watermark slots: `seq u64, synced_end u64, write_limit u64, crc u32` each.
pub(crate) const WM_OFFSET: usize = 960;
const WM_SLOT: usize = 28;
pub(crate) const WM_LEN: usize = 2 * WM_SLOT;
/// `frame_len u32, crc u32, lsn u64, term u64`, then the payload.
pub(crate) const FRAME_HEADER: usize = 24;

/// The immutable part of a segment header, written once when the segment is created.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SegmentHeader {
    /// Generation: bumped by `reset`; segments of an older generation are garbage.
    pub gen: u64,
    /// LSN of the first record this segment holds.
    pub base_lsn: Lsn,
    /// Term of the record before `base_lsn` (the log's last term when created).
    pub base_term: Term,
    pub segment_len: u64,
    /// Term history entries with a first LSN up to `base_lsn`.
    pub terms: Vec<(Term, Lsn)>,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn header_crc(b: &[u8], n_terms: usize) -> u32 {
    let crc = crc32c::crc32c(&b[..48]);
    crc32c::crc32c_append(crc, &b[TERMS_OFFSET..TERMS_OFFSET + 16 * n_terms])
}

impl SegmentHeader {
    /// Writes the header into `b[..DATA_START]` (the newest `MAX_TERMS` entries only).
    pub fn encode(&self, b: &mut [u8]) {
        let terms = &self.terms[self.terms.len().saturating_sub(MAX_TERMS)..];
        b[..DATA_START].fill(0);
        b[0..8].copy_from_slice(MAGIC);
        b[8..12].copy_from_slice(&VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&(terms.len() as u32).to_le_bytes());
        b[16..24].copy_from_slice(&self.gen.to_le_bytes());
        b[24..32].copy_from_slice(&self.base_lsn.0.to_le_bytes());
        b[32..40].copy_from_slice(&self.base_term.0.to_le_bytes());
        b[40..48].copy_from_slice(&self.segment_len.to_le_bytes());
        for (i, (t, l)) in terms.iter().enumerate() {
            let at = TERMS_OFFSET + 16 * i;
            b[at..at + 8].copy_from_slice(&t.0.to_le_bytes());
            b[at + 8..at + 16].copy_from_slice(&l.0.to_le_bytes());
        }
        let crc = header_crc(b, terms.len());
        b[48..52].copy_from_slice(&crc.to_le_bytes());
    }

    /// Parses and verifies a header; the error says what is wrong.
    pub fn decode(b: &[u8]) -> Result<SegmentHeader, String> {
        if b.len() < DATA_START {
            return Err(format!(
                "file of {} bytes is shorter than a header",
                b.len()
            ));
        }
        if &b[0..8] != MAGIC {
            return Err("bad magic".into());
        }
        let version = u32_at(b, 8);
        if version != VERSION {
            return Err(format!("unknown version {version}"));
        }
        let n = u32_at(b, 12) as usize;
        if n > MAX_TERMS {
            return Err(format!("{n} term entries, at most {MAX_TERMS}"));
        }
        if u32_at(b, 48) != header_crc(b, n) {
            return Err("header checksum mismatch".into());
        }
        let terms = (0..n)
            .map(|i| {
                let at = TERMS_OFFSET + 16 * i;
                (Term(u64_at(b, at)), Lsn(u64_at(b, at + 8)))
            })
            .collect();
        Ok(SegmentHeader {
            gen: u64_at(b, 16),
            base_lsn: Lsn(u64_at(b, 24)),
            base_term: Term(u64_at(b, 32)),
            segment_len: u64_at(b, 40),
            terms,
        })
    }
}

fn wm_crc(slot: &[u8]) -> u32 {
    crc32c::crc32c(&slot[..24])
}

/// The mutable part of a segment header, written to one of two slots in turn.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Watermark {
    /// Bumped at every write; the valid slot with the highest wins.
    pub seq: u64,
    /// Bytes before this offset were msynced.
    pub synced_end: u64,
    /// No byte at or after this offset was ever written (appends msync a higher limit first).
    pub write_limit: u64,
}

/// Watermark slot `seq % 2`: its offset in the segment and its bytes.
pub(crate) fn watermark_slot(wm: Watermark) -> (usize, [u8; WM_SLOT]) {
    let at = WM_OFFSET + WM_SLOT * (wm.seq % 2) as usize;
    let mut slot = [0u8; WM_SLOT];
    slot[0..8].copy_from_slice(&wm.seq.to_le_bytes());
    slot[8..16].copy_from_slice(&wm.synced_end.to_le_bytes());
    slot[16..24].copy_from_slice(&wm.write_limit.to_le_bytes());
    let crc = wm_crc(&slot);
    slot[24..28].copy_from_slice(&crc.to_le_bytes());
    (at, slot)
}

/// Writes watermark slot `seq % 2` into a segment's first bytes.
pub(crate) fn encode_watermark(b: &mut [u8], wm: Watermark) {
    let (at, slot) = watermark_slot(wm);
    b[at..at + WM_SLOT].copy_from_slice(&slot);
}

/// The valid watermark slot with the highest sequence, or `None` if neither slot verifies.
pub(crate) fn decode_watermark(b: &[u8]) -> Option<Watermark> {
    (0..2)
        .filter_map(|i| {
            let slot = &b[WM_OFFSET + WM_SLOT * i..WM_OFFSET + WM_SLOT * (i + 1)];
            (u32_at(slot, 24) == wm_crc(slot)).then(|| Watermark {
                seq: u64_at(slot, 0),
                synced_end: u64_at(slot, 8),
                write_limit: u64_at(slot, 16),
            })
        })
        .max()
}

/// The header of the frame that carries `payload` (which follows it).
pub(crate) fn frame_header(lsn: Lsn, term: Term, payload: &[u8]) -> [u8; FRAME_HEADER] {
    let len = FRAME_HEADER + payload.len();
    let mut h = [0u8; FRAME_HEADER];
    h[0..4].copy_from_slice(&(len as u32).to_le_bytes());
    h[8..16].copy_from_slice(&lsn.0.to_le_bytes());
    h[16..24].copy_from_slice(&term.0.to_le_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&h[0..4]), &h[8..24]);
    let crc = crc32c::crc32c_append(crc, payload);
    h[4..8].copy_from_slice(&crc.to_le_bytes());
    h
}

/// What is found at a position of a segment.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Frame {
    /// No record here: a zero length field, or no room for a frame header.
    End,
    /// Bytes that are not a valid frame.
    Bad(&'static str),
    /// A frame whose checksum verifies; the payload is `pos + FRAME_HEADER .. pos + len`.
    Valid { lsn: Lsn, term: Term, len: usize },
}

/// Decodes and verifies the frame at `pos`; `b` ends where valid data may end.
pub(crate) fn read_frame(b: &[u8], pos: usize) -> Frame {
    if pos + FRAME_HEADER > b.len() {
        return Frame::End;
    }
    let len = u32_at(b, pos) as usize;
    if len == 0 {
        return Frame::End;
    }
    if len < FRAME_HEADER {
        return Frame::Bad("frame length below header size");
    }
    if len > b.len() - pos {
        return Frame::Bad("frame runs past the end of the segment");
    }
    let crc = crc32c::crc32c_append(crc32c::crc32c(&b[pos..pos + 4]), &b[pos + 8..pos + len]);
    if crc != u32_at(b, pos + 4) {
        return Frame::Bad("record checksum mismatch");
    }
    Frame::Valid {
        lsn: Lsn(u64_at(b, pos + 8)),
        term: Term(u64_at(b, pos + 16)),
        len,
    }
}

/// The length field of the frame at `pos` (to skip frames without verifying them).
pub(crate) fn frame_len_at(b: &[u8], pos: usize) -> Option<usize> {
    let len = u32_at(b.get(pos..pos + 4)?, 0) as usize;
    (len >= FRAME_HEADER && len <= b.len() - pos).then_some(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(payload: &[u8]) -> Vec<u8> {
        let mut b = frame_header(Lsn(7), Term(3), payload).to_vec();
        b.extend_from_slice(payload);
        b.extend_from_slice(&[0; 8]);
        b
    }

    fn check(bytes: &[u8], pos: usize, expected: Frame) {
        assert_eq!(read_frame(bytes, pos), expected);
    }

    #[test]
    fn frames() {
        let ok = framed(b"hello");
        let valid = Frame::Valid {
            lsn: Lsn(7),
            term: Term(3),
            len: 29,
        };
        check(&ok, 0, valid);
        check(&ok, 29, Frame::End);
        check(
            &ok[..28],
            0,
            Frame::Bad("frame runs past the end of the segment"),
        );
        check(&ok[..10], 0, Frame::End);
        let mut flipped = ok.clone();
        flipped[26] ^= 1;
        check(&flipped, 0, Frame::Bad("record checksum mismatch"));
        let mut short = ok.clone();
        short[0] = 5;
        check(&short, 0, Frame::Bad("frame length below header size"));
        let empty = framed(b"");
        let valid_empty = Frame::Valid {
            lsn: Lsn(7),
            term: Term(3),
            len: FRAME_HEADER,
        };
        check(&empty, 0, valid_empty);
    }

    #[test]
    fn header_round_trip_and_damage() {
        let h = SegmentHeader {
            gen: 2,
            base_lsn: Lsn(100),
            base_term: Term(4),
            segment_len: 65536,
            terms: vec![(Term(1), Lsn(1)), (Term(4), Lsn(50))],
        };
        let mut b = vec![0u8; DATA_START];
        h.encode(&mut b);
        assert_eq!(SegmentHeader::decode(&b), Ok(h));
        b[30] ^= 0x10;
        assert_eq!(
            SegmentHeader::decode(&b),
            Err("header checksum mismatch".into())
        );
        assert_eq!(
            SegmentHeader::decode(&[0u8; 10]).unwrap_err(),
            "file of 10 bytes is shorter than a header"
        );
    }

    #[test]
    fn watermark_picks_newest_valid_slot() {
        let wm = |seq, synced_end| Watermark {
            seq,
            synced_end,
            write_limit: 8192,
        };
        let mut b = vec![0u8; DATA_START];
        assert_eq!(decode_watermark(&b), None);
        encode_watermark(&mut b, wm(1, 2000));
        encode_watermark(&mut b, wm(2, 3000));
        assert_eq!(decode_watermark(&b), Some(wm(2, 3000)));
        // A torn write of the newer slot falls back to the older one.
        b[WM_OFFSET + 8] ^= 0xff;
        assert_eq!(decode_watermark(&b), Some(wm(1, 2000)));
    }

    #[test]
    fn header_keeps_newest_terms() {
        let terms: Vec<_> = (0..100).map(|i| (Term(i), Lsn(i * 10))).collect();
        let h = SegmentHeader {
            gen: 1,
            base_lsn: Lsn(2000),
            base_term: Term(99),
            segment_len: 65536,
            terms: terms.clone(),
        };
        let mut b = vec![0u8; DATA_START];
        h.encode(&mut b);
        let back = SegmentHeader::decode(&b).unwrap();
        assert_eq!(back.terms, terms[100 - MAX_TERMS..]);
    }
}
