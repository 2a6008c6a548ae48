//! The native protocol's framing: length-prefixed, checksummed, versioned frames.
//!
//! Sans-IO: [`check`] says whether a whole frame is buffered, [`parse`] takes
//! it, [`encode`] writes one. Collectors (`tandem push`) and the nodes
//! themselves (forwarding, replication, catch-up) speak it over TCP.
//!
//! ```text
//! offset size field
//!      0    4 magic "TNDM"
//!      4    1 version (1)
//!      5    1 kind
//!      6    2 reserved, zero
//!      8    8 request id, u64 LE (echoed in the answer; answers may come out of order)
//!     16    4 payload length, u32 LE (at most FRAME_PAYLOAD_MAX)
//!     20    4 CRC32C, u32 LE, of bytes 4..20 followed by the payload
//!     24    n payload
//! ```

use bytes::{Buf, BufMut, Bytes, BytesMut};

pub const MAGIC: [u8; 4] = *b"TNDM";
pub const VERSION: u8 = 1;
pub const HEADER_LEN: usize = 24;
/// Largest payload a frame may carry. Batches are split well below this.
pub const FRAME_PAYLOAD_MAX: usize = 64 << 20;

/// What a frame carries. The numbers are the wire form and never change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    /// Collector -> gateway: one encoded batch. Answered by `Ack` or `Error`.
    Write = 1,
    /// Success; payload depends on the request.
    Ack = 2,
    /// Failure; payload is an [`ErrorCode`] (u16 LE) and a UTF-8 message.
    Error = 3,
    /// Gateway -> primary: partition-grouped batch.
    Forward = 4,
    /// Primary -> replica: one log record.
    Replicate = 5,
    /// Replica -> primary: read log records from an LSN.
    CatchUp = 6,
    /// Any -> node: the node's cluster map, or a newer one pushed to it.
    Map = 7,
    /// Node -> node: select series for a query.
    Select = 8,
    /// Node -> node: partition digests and stats.
    Digest = 9,
    /// Node -> node: a full copy of a partition.
    Snapshot = 10,
    /// Client -> node or controller: JSON control request.
    Control = 11,
    /// Controller -> controller: one Raft RPC (`src/raft/network.rs`).
    Raft = 12,
    /// Node -> node: fold an aggregation of a query over partitions.
    Fold = 13,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Kind> {
        use Kind::*;
        [
            Write, Ack, Error, Forward, Replicate, CatchUp, Map, Select, Digest, Snapshot, Control,
            Raft, Fold,
        ]
        .into_iter()
        .find(|k| *k as u8 == b)
    }
}

/// Why a request failed, in a form the sender can act on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum ErrorCode {
    /// The request was malformed; retrying the same bytes will fail again.
    BadRequest = 1,
    /// The sender's map is older than the receiver's: refresh the map, retry.
    StaleMap = 2,
    /// The sender's term is older than the partition's: it was failed over.
    Fenced = 3,
    /// No Active copy could take the write or answer the read now; retry later.
    Unavailable = 4,
    /// The receiver does not hold this partition in that role.
    NotOwner = 5,
    /// Too many requests in flight; retry later.
    Overloaded = 6,
    /// A bug or an I/O failure on the receiver.
    Internal = 7,
    /// The catch-up source no longer has the log that far back: use a snapshot.
    TrimmedAway = 8,
    /// This controller is not the leader of the controller group; the
    /// message names the leader if one is known (`control::NotLeader`).
    NotLeader = 9,
}

impl ErrorCode {
    pub fn from_u16(v: u16) -> ErrorCode {
        use ErrorCode::*;
        [
            BadRequest,
            StaleMap,
            Fenced,
            Unavailable,
            NotOwner,
            Overloaded,
            Internal,
            TrimmedAway,
            NotLeader,
        ]
        .into_iter()
        .find(|c| *c as u16 == v)
        .unwrap_or(Internal)
    }

    /// Whether the same request may succeed if sent again (elsewhere or later).
    pub fn is_retryable(self) -> bool {
        !matches!(self, ErrorCode::BadRequest)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub kind: Kind,
    pub request_id: u64,
    pub payload: Bytes,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("not a tandem frame (bad magic); is this the native port?")]
    BadMagic,
    #[error("unsupported protocol version {0} (this build speaks {VERSION})")]
    BadVersion(u8),
    #[error("unknown frame kind {0}")]
    BadKind(u8),
    #[error("frame payload of {0} bytes is over the limit of {FRAME_PAYLOAD_MAX}")]
    TooLarge(usize),
    #[error("frame checksum mismatch")]
    Checksum,
}

/// Is a whole frame buffered? `Ok(Some(total_len))` if so, `Ok(None)` if more
/// bytes are needed. A bad header is an error: the stream cannot be resynced.
pub fn check(buf: &[u8]) -> Result<Option<usize>, FrameError> {
    if buf.len() < HEADER_LEN {
        // Reject garbage early, without waiting for a whole header.
        let n = buf.len().min(4);
        if buf[..n] != MAGIC[..n] {
            return Err(FrameError::BadMagic);
        }
        return Ok(None);
    }
    if buf[..4] != MAGIC {
        return Err(FrameError::BadMagic);
    }
    if buf[4] != VERSION {
        return Err(FrameError::BadVersion(buf[4]));
    }
    if Kind::from_u8(buf[5]).is_none() {
        return Err(FrameError::BadKind(buf[5]));
    }
    let len = u32::from_le_bytes(buf[16..20].try_into().expect("4 bytes")) as usize;
    if len > FRAME_PAYLOAD_MAX {
        return Err(FrameError::TooLarge(len));
    }
    Ok((buf.len() >= HEADER_LEN + len).then_some(HEADER_LEN + len))
}

/// Takes one whole frame off the front of `buf`, if there is one.
pub fn parse(buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
    let Some(total) = check(buf)? else {
        return Ok(None);
    };
    let crc = u32::from_le_bytes(buf[20..24].try_into().expect("4 bytes"));
    let want = crc32c::crc32c_append(crc32c::crc32c(&buf[4..20]), &buf[HEADER_LEN..total]);
    if crc != want {
        return Err(FrameError::Checksum);
    }
    let kind = Kind::from_u8(buf[5]).expect("checked");
    let request_id = u64::from_le_bytes(buf[8..16].try_into().expect("8 bytes"));
    let mut frame = buf.split_to(total);
    frame.advance(HEADER_LEN);
    Ok(Some(Frame {
        kind,
        request_id,
        payload: frame.freeze(),
    }))
}

/// Appends one frame to `out`.
pub fn encode(kind: Kind, request_id: u64, payload: &[u8], out: &mut BytesMut) {
    assert!(
        payload.len() <= FRAME_PAYLOAD_MAX,
        "callers split payloads below the frame limit"
    );
    out.reserve(HEADER_LEN + payload.len());
    let start = out.len();
    out.put_slice(&MAGIC);
    out.put_u8(VERSION);
    out.put_u8(kind as u8);
    out.put_u16_le(0);
    out.put_u64_le(request_id);
    out.put_u32_le(payload.len() as u32);
    let crc = crc32c::crc32c_append(crc32c::crc32c(&out[start + 4..start + 20]), payload);
    out.put_u32_le(crc);
    out.put_slice(payload);
}

/// The payload of an `Error` frame.
pub fn encode_error(code: ErrorCode, message: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + message.len());
    out.extend_from_slice(&(code as u16).to_le_bytes());
    out.extend_from_slice(message.as_bytes());
    out
}

pub fn decode_error(payload: &[u8]) -> (ErrorCode, String) {
    if payload.len() < 2 {
        return (ErrorCode::Internal, "malformed error frame".to_string());
    }
    let code = ErrorCode::from_u16(u16::from_le_bytes([payload[0], payload[1]]));
    (code, String::from_utf8_lossy(&payload[2..]).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frame(kind: Kind, id: u64, payload: &[u8]) -> BytesMut {
        let mut b = BytesMut::new();
        encode(kind, id, payload, &mut b);
        b
    }

    #[test]
    fn round_trips_and_waits_for_whole_frames() {
        let mut stream = frame(Kind::Write, 7, b"hello");
        stream.extend_from_slice(&frame(Kind::Ack, 8, b""));
        let whole = stream.clone();
        for cut in 0..whole.len() {
            let mut partial = BytesMut::from(&whole[..cut]);
            let first = parse(&mut partial).unwrap();
            if cut < HEADER_LEN + 5 {
                assert_eq!(first, None, "cut at {cut}");
            } else {
                assert_eq!(first.unwrap().payload, Bytes::from_static(b"hello"));
            }
        }
        let a = parse(&mut stream).unwrap().unwrap();
        assert_eq!(
            (a.kind, a.request_id, &a.payload[..]),
            (Kind::Write, 7, &b"hello"[..])
        );
        let b = parse(&mut stream).unwrap().unwrap();
        assert_eq!((b.kind, b.request_id, b.payload.len()), (Kind::Ack, 8, 0));
        assert!(stream.is_empty());
    }

    #[test]
    fn rejects_bad_frames() {
        let check_err =
            |mut bytes: BytesMut, want: FrameError| assert_eq!(parse(&mut bytes), Err(want));
        check_err(
            BytesMut::from(&b"GET / HTTP/1.1\r\n"[..]),
            FrameError::BadMagic,
        );
        let mut f = frame(Kind::Write, 1, b"abc");
        f[4] = 9;
        check_err(f, FrameError::BadVersion(9));
        let mut f = frame(Kind::Write, 1, b"abc");
        f[5] = 200;
        check_err(f, FrameError::BadKind(200));
        let mut f = frame(Kind::Write, 1, b"abc");
        f[16..20].copy_from_slice(&(FRAME_PAYLOAD_MAX as u32 + 1).to_le_bytes());
        check_err(f, FrameError::TooLarge(FRAME_PAYLOAD_MAX + 1));
        let mut f = frame(Kind::Write, 1, b"abc");
        f[HEADER_LEN] ^= 1;
        check_err(f, FrameError::Checksum);
    }

    #[test]
    fn error_payload_round_trips() {
        let p = encode_error(ErrorCode::StaleMap, "map epoch 3 is older than 5");
        assert_eq!(
            decode_error(&p),
            (
                ErrorCode::StaleMap,
                "map epoch 3 is older than 5".to_string()
            )
        );
        assert_eq!(decode_error(b"x").0, ErrorCode::Internal);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut buf = BytesMut::from(&bytes[..]);
            let _ = parse(&mut buf);
        }

        #[test]
        fn any_single_bit_flip_is_caught(payload in proptest::collection::vec(any::<u8>(), 0..64), bit in 0usize..(88 * 8)) {
            let f = frame(Kind::Replicate, 42, &payload);
            let bit = bit % (f.len() * 8);
            let mut bad = f.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            if let Ok(Some(got)) = parse(&mut bad) {
                prop_assert!(false, "flip at bit {bit} accepted: {got:?}");
            }
        }
    }
}
