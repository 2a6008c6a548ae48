//! Sample codec: a chunk of `(timestamp_ms, f64)` samples compressed as it is appended.
//!
//! Timestamps are delta-of-delta coded (Gorilla). Values that are decimals with
//! few digits are stored as integers scaled by `10^scale` and bit-packed as
//! deltas or deltas-of-deltas at an adaptive width (VictoriaMetrics' idea, made
//! streaming); anything else (NaN with its payload, ±Inf, -0.0, long floats)
//! falls back to Gorilla XOR for that value, so every value round-trips
//! bit-exactly. The byte layout is described in `fsdb/FORMAT.md`, section
//! "Sample codec".
//!
//! The encoder writes every bit straight into its byte buffer and keeps the
//! sample count in the header, so [`ChunkEncoder::bytes`] is a complete,
//! decodable chunk after every [`ChunkEncoder::push`].

use crate::varint::{unzigzag, zigzag};
use thiserror::Error;

/// Format version, the first byte of every chunk.
pub const FORMAT_VERSION: u8 = 1;
/// Header: version byte, then the sample count as a little-endian `u32`.
pub const HEADER_BYTES: usize = 5;
/// The most samples one encoder appends (five years at 10 s). It keeps every
/// bit offset of a chunk within a `u32` (at most ~150 bits per sample); the
/// decoder accepts any `u32` count.
pub const MAX_SAMPLES: usize = 1 << 24;

/// Largest decimal scale: `10^22` is the largest power of ten exact in an f64.
const MAX_SCALE: u8 = 22;
/// Largest magnitude of a scaled integer: every integer up to `2^53` is exact in an f64.
const MAX_SCALED: f64 = 9_007_199_254_740_992.0;
/// Samples per block of width statistics: the encoder reconsiders its packing
/// after each block, so a burst widens it only for about a block.
const BLOCK: u8 = 16;
/// Decimal values in a row that fit one scale less before the encoder lowers
/// the scale: a scale change costs ~35 bits and saves ~3.3 bits per value.
const COARSE_AFTER: u8 = 32;
/// Bits spent by a packing change (`10` + dod + signed + 6 bits of width).
const PACKING_CHANGE_BITS: u32 = 10;

const POW10: [f64; MAX_SCALE as usize + 1] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

/// Why a chunk could not be decoded.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum Error {
    /// Fewer than [`HEADER_BYTES`] bytes.
    #[error("chunk of {len} bytes is shorter than its {HEADER_BYTES}-byte header")]
    ShortHeader { len: usize },
    /// A version byte this code does not know.
    #[error("chunk format version {version} is not supported (expected {FORMAT_VERSION})")]
    UnknownVersion { version: u8 },
    /// The header's count cannot fit in the body (checked before decoding).
    #[error("chunk claims {count} samples but its {body_bits} body bits cannot hold them")]
    CountTooLarge { count: u32, body_bits: u64 },
    /// The bits ran out before sample `index`.
    #[error("chunk is truncated at sample {index} of {count}")]
    Truncated { index: u32, count: u32 },
    /// A field no encoder writes, or bytes after the last sample.
    #[error("chunk is corrupted at sample {index}: {reason}")]
    Corrupted { index: u32, reason: &'static str },
}

/// Result of the codec's fallible operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

// ---------------------------------------------------------------------------
// Bits

/// Appends bits, most significant first, straight into a byte vector so that
/// the vector is always the complete stream (the last byte zero-padded).
#[derive(Debug, Clone)]
struct BitWriter {
    buf: Vec<u8>,
    /// Unused low bits of the last byte of `buf`.
    free: u8,
}

impl BitWriter {
    fn write(&mut self, value: u64, n: u32) {
        debug_assert!(n <= 64);
        debug_assert!(n == 64 || value >> n == 0, "value wider than {n} bits");
        if n == 0 {
            return;
        }
        if n <= u32::from(self.free) {
            // Fits in the partial last byte: the common 1- to 7-bit codes.
            let last = self.buf.len() - 1;
            self.free -= n as u8;
            self.buf[last] |= (value << self.free) as u8;
            return;
        }
        let used = (8 - u32::from(self.free)) % 8;
        if used + n > 64 {
            self.write(value >> 32, n - 32);
            return self.write(value & mask(32), 32);
        }
        // Bytes from the last (partial) one on, as one big-endian word.
        let word = (value << (64 - n)) >> used;
        let first = if self.free == 0 {
            self.buf.len()
        } else {
            self.buf.len() - 1
        };
        let total_bits = used + n;
        let new_len = first + total_bits.div_ceil(8) as usize;
        if new_len > self.buf.capacity() {
            self.grow(new_len - self.buf.len());
        }
        self.buf.resize(new_len, 0);
        for (dst, src) in self.buf[first..].iter_mut().zip(word.to_be_bytes()) {
            *dst |= src;
        }
        self.free = ((8 - total_bits % 8) % 8) as u8;
    }

    fn bit_len(&self) -> u64 {
        self.buf.len() as u64 * 8 - u64::from(self.free)
    }

    /// Rewrites `n` bits already written at bit offset `pos`.
    fn overwrite(&mut self, pos: u64, value: u64, n: u32) {
        debug_assert!(pos + u64::from(n) <= self.bit_len());
        for i in 0..u64::from(n) {
            let bit = pos + i;
            let byte = &mut self.buf[(bit / 8) as usize];
            let shift = 7 - bit % 8;
            let one = (value >> (u64::from(n) - 1 - i)) & 1;
            *byte = (*byte & !(1 << shift)) | ((one as u8) << shift);
        }
    }

    /// Grows by an eighth instead of doubling: head chunks live in memory, and
    /// a doubled buffer would waste up to half of it. Still amortized O(1).
    fn grow(&mut self, needed: usize) {
        let extra = (self.buf.len() / 8).max(16).max(needed);
        self.buf.reserve_exact(extra);
    }
}

fn mask(n: u32) -> u64 {
    if n >= 64 {
        u64::MAX
    } else {
        (1u64 << n) - 1
    }
}

/// Reads bits written by [`BitWriter`]; reading past `end_bits` is an error.
struct BitReader<'a> {
    data: &'a [u8],
    pos: u64,
    end: u64,
}

impl<'a> BitReader<'a> {
    fn new(data: &'a [u8]) -> Self {
        BitReader {
            data,
            pos: 0,
            end: data.len() as u64 * 8,
        }
    }

    fn remaining(&self) -> u64 {
        self.end - self.pos
    }

    /// The next 64 bits from `pos`, zeros past the end; at least 57 of them are real.
    fn peek(&self) -> u64 {
        let byte = (self.pos / 8) as usize;
        let word = match self.data.get(byte..byte + 8) {
            Some(b) => u64::from_be_bytes(b.try_into().expect("8 bytes")),
            // Near the end: the last 8 bytes, shifted past those before
            // `byte` (a chunk's last few samples all come here; a copy of
            // a varying length was a call and a mispredicted branch each).
            None if self.data.len() >= 8 => {
                let last = &self.data[self.data.len() - 8..];
                let before = byte - (self.data.len() - 8);
                u64::from_be_bytes(last.try_into().expect("8 bytes"))
                    .checked_shl(u32::try_from(before * 8).unwrap_or(u32::MAX))
                    .unwrap_or(0)
            }
            None => {
                let mut w = [0u8; 8];
                let tail = self.data.get(byte..).unwrap_or_default();
                w[..tail.len()].copy_from_slice(tail);
                u64::from_be_bytes(w)
            }
        };
        word << (self.pos % 8)
    }

    /// The next 64 bits from `pos`, at least 57 of them real, while 8 bytes
    /// remain from its byte: one load, no zero fill.
    #[inline(always)]
    fn peek_within(&self) -> Option<u64> {
        let byte = (self.pos / 8) as usize;
        let word = self.data.get(byte..byte + 8)?;
        Some(u64::from_be_bytes(word.try_into().expect("8 bytes")) << (self.pos % 8))
    }

    /// Reads `n <= 64` bits, or `None` when fewer remain.
    #[inline]
    fn read(&mut self, n: u32) -> Option<u64> {
        if n > 56 {
            return self.read_wide(n);
        }
        if u64::from(n) > self.remaining() {
            return None;
        }
        if n == 0 {
            return Some(0);
        }
        let bits = self.peek() >> (64 - n);
        self.pos += u64::from(n);
        Some(bits)
    }

    #[cold]
    fn read_wide(&mut self, n: u32) -> Option<u64> {
        let high = self.read(n - 32)?;
        let low = self.read(32)?;
        Some((high << 32) | low)
    }

    fn bit(&mut self) -> Option<bool> {
        self.read(1).map(|b| b == 1)
    }

    /// Reads a unary code: up to `max` one bits, ended by a zero unless `max`
    /// ones came first. Returns the number of ones.
    fn ones(&mut self, max: u32) -> Option<u32> {
        let n = self.peek().leading_ones().min(max);
        let consumed = if n < max { n + 1 } else { n };
        if u64::from(consumed) > self.remaining() {
            return None;
        }
        self.pos += u64::from(consumed);
        Some(n)
    }
}

/// Bits needed to hold `u`.
fn width(u: u64) -> u32 {
    64 - u.leading_zeros()
}

// ---------------------------------------------------------------------------
// Timestamps: delta-of-delta in buckets sized for millisecond clocks.

/// `(prefix, prefix bits, payload bits)`; the last bucket holds any i64.
const TS_BUCKETS: [(u64, u32, u32); 5] = [
    (0b10, 2, 7),
    (0b110, 3, 10),
    (0b1110, 4, 16),
    (0b11110, 5, 32),
    (0b111110, 6, 64),
];
/// The timestamp code that starts a run of repeated samples instead, then
/// `RUN_LEN_BITS` bits of run length.
const RUN_CODE: (u64, u32) = (0b111111, 6);
const RUN_LEN_BITS: u32 = 8;
const RUN_MAX: u8 = u8::MAX;
/// Plain repeats written before a run is opened: a run costs 14 bits, a
/// plain repeat 2 or more.
const RUN_AFTER: u8 = 3;

fn write_ts_dod(w: &mut BitWriter, dod: i64) {
    if dod == 0 {
        w.write(0, 1);
        return;
    }
    let z = zigzag(dod);
    for (prefix, prefix_bits, payload_bits) in TS_BUCKETS {
        if width(z) <= payload_bits {
            w.write(prefix, prefix_bits);
            w.write(z, payload_bits);
            return;
        }
    }
    unreachable!("the last bucket holds 64 bits");
}

/// What a timestamp code says: a delta-of-delta, or a run of `n` repeats.
enum TsCode {
    Dod(i64),
    Run(u32),
}

fn read_ts_code(r: &mut BitReader) -> Option<TsCode> {
    let ones = r.ones(RUN_CODE.1)?;
    if ones == 0 {
        return Some(TsCode::Dod(0));
    }
    if ones == RUN_CODE.1 {
        return r.read(RUN_LEN_BITS).map(|n| TsCode::Run(n as u32));
    }
    let (_, _, payload_bits) = TS_BUCKETS[ones as usize - 1];
    r.read(payload_bits).map(|z| TsCode::Dod(unzigzag(z)))
}

// ---------------------------------------------------------------------------
// Values: state shared by the encoder and the decoder.

/// How the scaled integer of the next decimal value is bit-packed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Packing {
    /// Delta-of-delta of the scaled integer instead of its delta.
    dod: bool,
    /// Zigzag-coded (any sign) instead of a plain non-negative number.
    signed: bool,
    /// Payload bits, `0..=63`; zero means "the difference is 0".
    width: u8,
}

impl Packing {
    const ALL: [(bool, bool); 4] = [(false, false), (false, true), (true, false), (true, true)];

    /// The payload for this packing, if the value fits.
    fn payload(self, delta: i64, dod: i64) -> Option<u64> {
        let x = if self.dod { dod } else { delta };
        let u = if self.signed {
            zigzag(x)
        } else if x >= 0 {
            x as u64
        } else {
            return None;
        };
        (width(u) <= u32::from(self.width)).then_some(u)
    }

    /// The scaled-integer delta a payload stands for.
    fn delta(self, payload: u64, prev_delta: i64) -> i64 {
        let x = if self.signed {
            unzigzag(payload)
        } else {
            payload as i64
        };
        if self.dod {
            prev_delta.wrapping_add(x)
        } else {
            x
        }
    }
}

/// The value coder's state; the encoder and the decoder evolve it identically.
#[derive(Debug, Clone)]
struct ValueState {
    /// Values are raw XOR floats (`true`) or scaled decimals (`false`).
    float_mode: bool,
    scale: u8,
    /// The last decimal value as a scaled integer, and its last delta.
    scaled: i64,
    scaled_delta: i64,
    packing: Packing,
    /// Bits of the previous value, whatever its coding, for XOR.
    prev_bits: u64,
    /// The current XOR window: leading zeros and meaningful bits.
    xor_lead: u8,
    xor_len: u8,
}

impl ValueState {
    fn new() -> Self {
        ValueState {
            float_mode: false,
            scale: 0,
            scaled: 0,
            scaled_delta: 0,
            packing: Packing {
                dod: false,
                signed: false,
                width: 0,
            },
            prev_bits: 0f64.to_bits(),
            xor_lead: 0,
            xor_len: 64,
        }
    }

    fn decimal_value(&self) -> f64 {
        // An integer (a counter) needs no division.
        match self.scale {
            0 => self.scaled as f64,
            scale => self.scaled as f64 / POW10[usize::from(scale)],
        }
    }
}

/// The scaled integer of `v` at `scale`, if `v` is exactly that decimal.
fn scaled_at(v: f64, scale: u8) -> Option<i64> {
    let p = POW10[usize::from(scale)];
    let m = round_half_even(v * p);
    if m.is_nan() || m.abs() > MAX_SCALED {
        return None;
    }
    let m = m as i64;
    ((m as f64 / p).to_bits() == v.to_bits()).then_some(m)
}

/// `x` rounded to an integer, halves to even, with two additions: without
/// SSE4.1 (the baseline x86-64 target), `f64::round` is a library call, one
/// per value encoded. Which neighbour a half goes to does not matter to
/// [`scaled_at`], whose caller keeps only an `m` with `m / p == v` exactly.
#[inline]
fn round_half_even(x: f64) -> f64 {
    // From 2^52 on, every double is an integer.
    const TWO_52: f64 = 4_503_599_627_370_496.0;
    if x.abs() < TWO_52 {
        ((x.abs() + TWO_52) - TWO_52).copysign(x)
    } else {
        x
    }
}

/// The smallest scale at which `v` is an exact decimal, with its scaled integer.
fn find_decimal(v: f64) -> Option<(u8, i64)> {
    if !v.is_finite() || v.abs() > MAX_SCALED {
        return None;
    }
    (0..=MAX_SCALE).find_map(|scale| scaled_at(v, scale).map(|m| (scale, m)))
}

fn write_xor_full(w: &mut BitWriter, s: &mut ValueState, bits: u64) {
    let xor = bits ^ s.prev_bits;
    if xor == 0 {
        w.write(0, 1);
        return;
    }
    w.write(1, 1);
    write_xor_window(w, s, xor);
}

fn write_xor_window(w: &mut BitWriter, s: &mut ValueState, xor: u64) {
    let lead = xor.leading_zeros().min(63);
    let len = 64 - lead - xor.trailing_zeros();
    w.write(u64::from(lead), 6);
    w.write(u64::from(len - 1), 6);
    w.write(xor >> (64 - lead - len), len);
    s.xor_lead = lead as u8;
    s.xor_len = len as u8;
}

fn read_xor_window(
    r: &mut BitReader,
    s: &mut ValueState,
) -> Option<std::result::Result<u64, &'static str>> {
    let lead = r.read(6)? as u32;
    let len = r.read(6)? as u32 + 1;
    if lead + len > 64 {
        return Some(Err("xor window is wider than 64 bits"));
    }
    let meaningful = r.read(len)?;
    s.xor_lead = lead as u8;
    s.xor_len = len as u8;
    Some(Ok(meaningful << (64 - lead - len)))
}

fn write_scale_change(w: &mut BitWriter, s: &mut ValueState, scale: u8, m: i64) {
    let z = zigzag(m);
    let n = width(z);
    w.write(u64::from(scale), 5);
    w.write(u64::from(n), 6);
    w.write(z, n);
    s.float_mode = false;
    s.scale = scale;
    s.scaled = m;
    s.scaled_delta = 0;
}

// ---------------------------------------------------------------------------
// Encoder

/// Width statistics of the current block: the widest payload each packing
/// kind would have needed, so the encoder can tell which was narrowest.
#[derive(Debug, Clone, Default)]
struct BlockStats {
    samples: u8,
    /// Per kind of [`Packing::ALL`]; 64 marks "does not fit at all".
    widths: [u8; 4],
}

impl BlockStats {
    fn add(&mut self, delta: i64, dod: i64) {
        for (k, (is_dod, signed)) in Packing::ALL.into_iter().enumerate() {
            let x = if is_dod { dod } else { delta };
            let w = match (signed, x >= 0) {
                (true, _) => width(zigzag(x)),
                (false, true) => width(x as u64),
                (false, false) => 64,
            };
            self.widths[k] = self.widths[k].max(w as u8);
        }
        self.samples += 1;
    }

    /// The narrowest packing for every payload of the block; ties go to the
    /// simpler kinds (delta before dod, unsigned before signed).
    fn best(&self) -> Packing {
        let mut best = None::<Packing>;
        for (k, (dod, signed)) in Packing::ALL.into_iter().enumerate() {
            let w = self.widths[k];
            if w <= 63 && best.is_none_or(|b| w < b.width) {
                best = Some(Packing {
                    dod,
                    signed,
                    width: w,
                });
            }
        }
        best.expect("a signed packing always fits the bounded scaled integers")
    }
}

/// The value code the encoder chose for one value, before it is written.
#[derive(Debug, Clone, Copy)]
enum ValueCode {
    /// Decimal `0`: the current packing.
    Packed { payload: u64, m: i64, delta: i64 },
    /// Decimal `10`: a new packing.
    Repacked {
        packing: Packing,
        payload: u64,
        m: i64,
        delta: i64,
    },
    /// Decimal `110` or float `111`: a new scale, absolute.
    Rescaled { scale: u8, m: i64 },
    /// Decimal `1110`: one raw value.
    RawOnce,
    /// Decimal `1111`: raw value, then float mode.
    ToFloat,
    /// Float `0`: the same bits again.
    FloatSame,
    /// Float `10`: XOR in the current window.
    FloatWindow { xor: u64 },
    /// Float `110`: XOR with a new window.
    FloatNewWindow { xor: u64 },
}

impl ValueCode {
    fn starts_with_zero(self) -> bool {
        matches!(self, ValueCode::Packed { .. } | ValueCode::FloatSame)
    }
}

/// A chunk being appended to, one sample at a time; its bytes are a complete
/// chunk at every moment.
#[derive(Debug, Clone)]
pub struct ChunkEncoder {
    bits: BitWriter,
    count: u32,
    last_ts: i64,
    ts_delta: i64,
    value: ValueState,
    block: BlockStats,
    /// A narrower packing chosen at the end of the last block, adopted by the
    /// next value that fits it.
    pending: Option<Packing>,
    /// Consecutive values that needed the raw fallback in decimal mode.
    raw_streak: u8,
    /// Consecutive repeats (same interval, same value) written plainly.
    repeats: u8,
    /// Samples in the open run (0: none), and the bit offset of its length
    /// field, rewritten in place as the run grows.
    run_len: u8,
    run_len_pos: u32,
    /// Consecutive decimal values whose scaled integer ends in a zero.
    coarse_streak: u8,
}

impl Default for ChunkEncoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkEncoder {
    /// An empty chunk: its bytes are the 5-byte header with a count of 0.
    pub fn new() -> ChunkEncoder {
        let mut buf = Vec::with_capacity(32);
        buf.push(FORMAT_VERSION);
        buf.extend_from_slice(&0u32.to_le_bytes());
        ChunkEncoder {
            bits: BitWriter { buf, free: 0 },
            count: 0,
            last_ts: 0,
            ts_delta: 0,
            value: ValueState::new(),
            block: BlockStats::default(),
            pending: None,
            raw_streak: 0,
            repeats: 0,
            run_len: 0,
            run_len_pos: 0,
            coarse_streak: 0,
        }
    }

    /// Appends one sample. Timestamps may come in any order.
    ///
    /// Panics if the chunk already holds [`MAX_SAMPLES`] samples: the store
    /// seals chunks long before, so reaching it is a broken invariant.
    pub fn push(&mut self, ts: i64, value: f64) {
        assert!(
            self.len() < MAX_SAMPLES,
            "chunk is full ({MAX_SAMPLES} samples)"
        );
        if self.count == 0 {
            self.bits.write(ts as u64, 64);
            let code = self.plan_first_value(value);
            self.emit(code, value);
        } else {
            let repeat = self.is_repeat(ts, value);
            if repeat && self.repeats >= RUN_AFTER {
                self.push_run();
            } else {
                self.push_plain(ts, value, repeat);
            }
        }
        self.last_ts = ts;
        self.value.prev_bits = value.to_bits();
        self.count += 1;
        self.bits.buf[1..HEADER_BYTES].copy_from_slice(&self.count.to_le_bytes());
    }

    /// A sample that is not part of a run: its timestamp code and value code.
    fn push_plain(&mut self, ts: i64, value: f64, repeat: bool) {
        self.repeats = if repeat { self.repeats + 1 } else { 0 };
        self.run_len = 0;
        let delta = ts.wrapping_sub(self.last_ts);
        let dod = delta.wrapping_sub(self.ts_delta);
        self.ts_delta = delta;
        let code = self.plan_value(value);
        // Sample code 0: dod 0 and a value code starting with 0, which
        // doubles as the sample code. Anything else: 1, then both codes.
        if dod != 0 || !code.starts_with_zero() {
            self.bits.write(1, 1);
            write_ts_dod(&mut self.bits, dod);
        }
        self.emit(code, value);
    }

    /// Whether the sample repeats the last one: same interval, same value bits,
    /// and in decimal mode the value is the current decimal (not a one-off).
    fn is_repeat(&self, ts: i64, v: f64) -> bool {
        let s = &self.value;
        ts.wrapping_sub(self.last_ts) == self.ts_delta
            && v.to_bits() == s.prev_bits
            && (s.float_mode || scaled_at(v, s.scale) == Some(s.scaled))
    }

    /// Extends the open run in place, or opens a new one.
    fn push_run(&mut self) {
        if self.run_len == 0 || self.run_len == RUN_MAX {
            self.bits.write(1, 1);
            self.bits.write(RUN_CODE.0, RUN_CODE.1);
            self.run_len_pos = u32::try_from(self.bits.bit_len())
                .expect("MAX_SAMPLES keeps bit offsets within u32");
            self.bits.write(0, RUN_LEN_BITS);
            self.run_len = 0;
        }
        self.run_len += 1;
        self.bits.overwrite(
            u64::from(self.run_len_pos),
            u64::from(self.run_len),
            RUN_LEN_BITS,
        );
        apply_repeat(&mut self.value);
    }

    /// The first value of a chunk is written absolute (a scale change) when it
    /// is a decimal, so no packing is widened for a delta from zero.
    fn plan_first_value(&mut self, v: f64) -> ValueCode {
        match find_decimal(v) {
            Some((scale, m)) => ValueCode::Rescaled { scale, m },
            None => self.plan_value(v),
        }
    }

    fn plan_value(&mut self, v: f64) -> ValueCode {
        if self.value.float_mode {
            return self.plan_float(v);
        }
        if let Some(m) = scaled_at(v, self.value.scale) {
            self.raw_streak = 0;
            return self.plan_scaled(m);
        }
        if let Some((scale, m)) = find_decimal(v) {
            self.raw_streak = 0;
            ValueCode::Rescaled { scale, m }
        } else if self.raw_streak == 0 {
            self.raw_streak = 1;
            ValueCode::RawOnce
        } else {
            self.raw_streak = 0;
            ValueCode::ToFloat
        }
    }

    /// A decimal value at the current scale: the current packing, a new
    /// packing, or one scale less when the extra digit is gone.
    fn plan_scaled(&mut self, m: i64) -> ValueCode {
        let s = &self.value;
        if s.scale > 0 && m % 10 == 0 {
            self.coarse_streak = self.coarse_streak.saturating_add(1);
        } else {
            self.coarse_streak = 0;
        }
        if self.coarse_streak == COARSE_AFTER {
            self.coarse_streak = 0;
            return ValueCode::Rescaled {
                scale: s.scale - 1,
                m: m / 10,
            };
        }
        let delta = m.wrapping_sub(s.scaled);
        let dod = delta.wrapping_sub(s.scaled_delta);
        self.block.add(delta, dod);
        let pending = self
            .pending
            .and_then(|p| p.payload(delta, dod).map(|u| (p, u)));
        let code = match (pending, s.packing.payload(delta, dod)) {
            (None, Some(payload)) => ValueCode::Packed { payload, m, delta },
            (pending, _) => {
                let (packing, payload) = pending.unwrap_or_else(|| {
                    let p = self.block.best();
                    let u = p
                        .payload(delta, dod)
                        .expect("best packing covers the block");
                    (p, u)
                });
                self.pending = None;
                ValueCode::Repacked {
                    packing,
                    payload,
                    m,
                    delta,
                }
            }
        };
        if self.block.samples == BLOCK {
            let after = match code {
                ValueCode::Repacked { packing, .. } => packing,
                _ => self.value.packing,
            };
            self.end_block(after);
        }
        code
    }

    /// Plans a narrower packing when the last block shows it would pay for
    /// its change code within one block.
    fn end_block(&mut self, current: Packing) {
        let best = self.block.best();
        let saved =
            u32::from(current.width).saturating_sub(u32::from(best.width)) * u32::from(BLOCK);
        self.pending = (saved > PACKING_CHANGE_BITS).then_some(best);
        self.block = BlockStats::default();
    }

    fn plan_float(&self, v: f64) -> ValueCode {
        if let Some((scale, m)) = find_decimal(v) {
            return ValueCode::Rescaled { scale, m };
        }
        let s = &self.value;
        let xor = v.to_bits() ^ s.prev_bits;
        if xor == 0 {
            return ValueCode::FloatSame;
        }
        let (w_lead, w_len) = (u32::from(s.xor_lead), u32::from(s.xor_len));
        if xor.leading_zeros() >= w_lead && xor.trailing_zeros() >= 64 - w_lead - w_len {
            ValueCode::FloatWindow { xor }
        } else {
            ValueCode::FloatNewWindow { xor }
        }
    }

    /// Writes a value code and applies it to the value state, exactly as the
    /// decoder will.
    fn emit(&mut self, code: ValueCode, v: f64) {
        let (w, s) = (&mut self.bits, &mut self.value);
        match code {
            // Code 0 and the payload in one write: payload < 2^width.
            ValueCode::Packed { payload, m, delta } => {
                w.write(payload, u32::from(s.packing.width) + 1);
                s.scaled = m;
                s.scaled_delta = delta;
            }
            ValueCode::Repacked {
                packing: p,
                payload,
                m,
                delta,
            } => {
                let code = (0b10 << 8)
                    | (u64::from(p.dod) << 7)
                    | (u64::from(p.signed) << 6)
                    | u64::from(p.width);
                w.write(code, PACKING_CHANGE_BITS);
                w.write(payload, u32::from(p.width));
                s.packing = p;
                s.scaled = m;
                s.scaled_delta = delta;
            }
            ValueCode::Rescaled { scale, m } => {
                // 110 in decimal mode, 111 in float mode.
                w.write(if s.float_mode { 0b111 } else { 0b110 }, 3);
                write_scale_change(w, s, scale, m);
            }
            ValueCode::RawOnce => {
                w.write(0b1110, 4);
                write_xor_full(w, s, v.to_bits());
            }
            ValueCode::ToFloat => {
                w.write(0b1111, 4);
                write_xor_full(w, s, v.to_bits());
                s.float_mode = true;
            }
            ValueCode::FloatSame => w.write(0, 1),
            ValueCode::FloatWindow { xor } => {
                let (lead, len) = (u32::from(s.xor_lead), u32::from(s.xor_len));
                w.write(0b10, 2);
                w.write(xor >> (64 - lead - len), len);
            }
            ValueCode::FloatNewWindow { xor } => {
                w.write(0b110, 3);
                write_xor_window(w, s, xor);
            }
        }
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// Whether no sample was pushed yet.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Timestamp of the first sample pushed.
    pub fn first_ts(&self) -> Option<i64> {
        // The first 64 bits of the body are the first timestamp.
        let raw = self.bits.buf.get(HEADER_BYTES..HEADER_BYTES + 8)?;
        Some(i64::from_be_bytes(raw.try_into().expect("8 bytes")))
    }

    /// Timestamp of the last sample pushed (not the largest: order is the store's business).
    pub fn last_ts(&self) -> Option<i64> {
        (self.count > 0).then_some(self.last_ts)
    }

    /// The chunk so far, header included: [`decode`] reads it at any moment.
    pub fn bytes(&self) -> &[u8] {
        &self.bits.buf
    }

    /// Heap memory held, capacity included, for memory accounting.
    pub fn heap_bytes(&self) -> usize {
        self.bits.buf.capacity()
    }

    /// Releases spare capacity, e.g. when a chunk is sealed.
    pub fn shrink_to_fit(&mut self) {
        self.bits.buf.shrink_to_fit();
    }
}

// ---------------------------------------------------------------------------
// Decoder

/// Decodes a chunk lazily; yields `Err` once and then ends if the bytes are bad.
pub fn decode(bytes: &[u8]) -> Result<ChunkIter<'_>> {
    if bytes.len() < HEADER_BYTES {
        return Err(Error::ShortHeader { len: bytes.len() });
    }
    if bytes[0] != FORMAT_VERSION {
        return Err(Error::UnknownVersion { version: bytes[0] });
    }
    let count = u32::from_le_bytes(bytes[1..HEADER_BYTES].try_into().expect("4 bytes"));
    let body = &bytes[HEADER_BYTES..];
    let body_bits = body.len() as u64 * 8;
    if u64::from(count) > max_samples(body_bits) {
        return Err(Error::CountTooLarge { count, body_bits });
    }
    Ok(ChunkIter {
        reader: BitReader::new(body),
        count,
        index: 0,
        last_ts: 0,
        ts_delta: 0,
        value: ValueState::new(),
        run_left: 0,
        failed: false,
    })
}

/// The most samples a body of `body_bits` can hold: the first sample takes at
/// least 65 bits, a 15-bit run (sample code, run code, length) stands for up
/// to 255 samples, and any other sample takes at least its 1-bit sample code.
fn max_samples(body_bits: u64) -> u64 {
    match body_bits.checked_sub(65) {
        None => 0,
        Some(rest) => {
            let run_bits = u64::from(1 + RUN_CODE.1 + RUN_LEN_BITS);
            1 + rest / run_bits * u64::from(RUN_MAX) + rest % run_bits
        }
    }
}

/// Decodes a whole chunk, appending its samples to `out`. On an error, `out`
/// keeps the samples decoded before it.
pub fn decode_into(bytes: &[u8], out: &mut Vec<(i64, f64)>) -> Result<()> {
    let mut iter = decode(bytes)?;
    let from = out.len();
    // Slots written in place: no capacity check per sample.
    out.resize(from + iter.count as usize, (0, 0.0));
    let slots = &mut out[from..];
    let mut i = 0;
    while i < slots.len() {
        if iter.run_left > 0 {
            let n = iter.repeat_into(&mut slots[i..]);
            if n > 0 {
                i += n;
                continue;
            }
        }
        let n = iter.common_into(&mut slots[i..]);
        if n > 0 {
            i += n;
            continue;
        }
        slots[i] = match iter.next_common() {
            Some(sample) => sample,
            None => match iter.next_any() {
                Ok(sample) => sample,
                Err(e) => {
                    out.truncate(from + i);
                    return Err(e);
                }
            },
        };
        i += 1;
    }
    Ok(())
}

/// Iterator over the samples of a chunk, see [`decode`].
pub struct ChunkIter<'a> {
    reader: BitReader<'a>,
    count: u32,
    index: u32,
    last_ts: i64,
    ts_delta: i64,
    value: ValueState,
    /// Samples of the current run still to yield.
    run_left: u32,
    failed: bool,
}

impl ChunkIter<'_> {
    /// Number of samples the chunk holds.
    pub fn sample_count(&self) -> usize {
        self.count as usize
    }

    fn truncated(&self) -> Error {
        Error::Truncated {
            index: self.index,
            count: self.count,
        }
    }

    fn corrupted(&self, reason: &'static str) -> Error {
        Error::Corrupted {
            index: self.index,
            reason,
        }
    }

    #[inline]
    fn next_sample(&mut self) -> Result<(i64, f64)> {
        match self.next_common() {
            Some(sample) => Ok(sample),
            None => self.next_any(),
        }
    }

    /// The common sample from one load: sample code 0 (the same interval,
    /// and the value at the current packing, or the same float again), not
    /// the first or last sample nor in a run, away from the chunk's last
    /// 8 bytes. `None` leaves the sample to [`Self::next_any`], which
    /// decodes it alike.
    #[inline(always)]
    fn next_common(&mut self) -> Option<(i64, f64)> {
        if self.index == 0 || self.run_left > 0 || self.index + 1 >= self.count {
            return None;
        }
        let word = self.reader.peek_within()?;
        if word >> 63 != 0 {
            return None;
        }
        let s = &mut self.value;
        let value = if s.float_mode {
            self.reader.pos += 1;
            f64::from_bits(s.prev_bits)
        } else {
            let width = u32::from(s.packing.width);
            // The word holds at least 57 real bits: the code and the payload.
            if width > 56 {
                return None;
            }
            // The code bit is 0, so the top 1 + width bits are the payload.
            let payload = word >> (63 - width);
            self.reader.pos += u64::from(1 + width);
            apply_payload(s, payload)
        };
        let ts = self.last_ts.wrapping_add(self.ts_delta);
        self.last_ts = ts;
        s.prev_bits = value.to_bits();
        self.index += 1;
        Some((ts, value))
    }

    #[inline(never)]
    fn next_any(&mut self) -> Result<(i64, f64)> {
        let (ts, value) = if self.index == 0 {
            let ts = self.reader.read(64).ok_or_else(|| self.truncated())? as i64;
            (ts, self.value_sample()?)
        } else if self.run_left > 0 {
            self.repeat_sample()
        } else if !self.reader.bit().ok_or_else(|| self.truncated())? {
            // Sample code 0: dod 0 and value code 0, already consumed.
            let ts = self.last_ts.wrapping_add(self.ts_delta);
            let value = self.value_code_zero().ok_or_else(|| self.truncated())?;
            (ts, value)
        } else {
            match read_ts_code(&mut self.reader).ok_or_else(|| self.truncated())? {
                TsCode::Dod(dod) => {
                    self.ts_delta = self.ts_delta.wrapping_add(dod);
                    (
                        self.last_ts.wrapping_add(self.ts_delta),
                        self.value_sample()?,
                    )
                }
                TsCode::Run(n) => {
                    if n == 0 || n > self.count - self.index {
                        return Err(self.corrupted("run length beyond the sample count"));
                    }
                    self.run_left = n;
                    self.repeat_sample()
                }
            }
        };
        self.last_ts = ts;
        self.value.prev_bits = value.to_bits();
        if self.index + 1 == self.count {
            self.check_padding()?;
        }
        self.index += 1;
        Ok((ts, value))
    }

    /// [`Self::next_common`]'s decimal samples in a row into `out`, as
    /// many as come and fit, but the chunk's last: the state in locals
    /// and the packing read once. Returns how many.
    fn common_into(&mut self, out: &mut [(i64, f64)]) -> usize {
        let s = &self.value;
        if self.index == 0 || self.run_left > 0 || s.float_mode || s.packing.width > 56 {
            return 0;
        }
        let limit = ((self.count - 1).saturating_sub(self.index) as usize).min(out.len());
        let Packing { dod, signed, width } = s.packing;
        // decimal_value, its test on the scale made once (in the loop it
        // cost 1.4 % of a one-metric sum's instructions).
        let (integer, pow) = (s.scale == 0, POW10[usize::from(s.scale)]);
        let (data, mut pos) = (self.reader.data, self.reader.pos);
        let (mut ts, step) = (self.last_ts, self.ts_delta);
        let (mut scaled, mut delta) = (s.scaled, s.scaled_delta);
        let mut n = 0;
        for slot in &mut out[..limit] {
            let byte = (pos / 8) as usize;
            let Some(bytes) = data.get(byte..byte + 8) else {
                break;
            };
            let word = u64::from_be_bytes(bytes.try_into().expect("8 bytes")) << (pos % 8);
            if word >> 63 != 0 {
                break;
            }
            // The code bit is 0, so the top 1 + width bits are the payload.
            let payload = word >> (63 - u32::from(width));
            pos += 1 + u64::from(width);
            let x = if signed {
                unzigzag(payload)
            } else {
                payload as i64
            };
            delta = if dod { delta.wrapping_add(x) } else { x };
            scaled = scaled.wrapping_add(delta);
            ts = ts.wrapping_add(step);
            let value = if integer {
                scaled as f64
            } else {
                scaled as f64 / pow
            };
            *slot = (ts, value);
            n += 1;
        }
        if n > 0 {
            self.reader.pos = pos;
            self.last_ts = ts;
            let s = &mut self.value;
            (s.scaled, s.scaled_delta) = (scaled, delta);
            s.prev_bits = out[n - 1].1.to_bits();
            self.index += n as u32;
        }
        n
    }

    /// The samples of the current run into `out`, as many as fit, but
    /// the chunk's last (whose padding [`Self::next_any`] checks): a
    /// constant series is mostly runs. Returns how many.
    fn repeat_into(&mut self, out: &mut [(i64, f64)]) -> usize {
        let last = self.count - 1 - self.index;
        let n = self.run_left.min(last).min(out.len() as u32);
        if n == 0 {
            return 0;
        }
        // The run's first sample (repeat_sample) left the value state as
        // a repeat leaves it.
        let value = f64::from_bits(self.value.prev_bits);
        let mut ts = self.last_ts;
        for slot in &mut out[..n as usize] {
            ts = ts.wrapping_add(self.ts_delta);
            *slot = (ts, value);
        }
        self.last_ts = ts;
        self.run_left -= n;
        self.index += n;
        n as usize
    }

    /// One sample of a run: the same interval and the same value again.
    fn repeat_sample(&mut self) -> (i64, f64) {
        self.run_left -= 1;
        apply_repeat(&mut self.value);
        (
            self.last_ts.wrapping_add(self.ts_delta),
            f64::from_bits(self.value.prev_bits),
        )
    }

    fn value_sample(&mut self) -> Result<f64> {
        match self.read_value() {
            Some(Ok(v)) => Ok(v),
            Some(Err(reason)) => Err(self.corrupted(reason)),
            None => Err(self.truncated()),
        }
    }

    /// The value whose code `0` was read: the current packing, or in float
    /// mode the same bits again.
    fn value_code_zero(&mut self) -> Option<f64> {
        let s = &mut self.value;
        if s.float_mode {
            return Some(f64::from_bits(s.prev_bits));
        }
        let u = self.reader.read(u32::from(s.packing.width))?;
        Some(apply_payload(s, u))
    }

    fn read_value(&mut self) -> Option<std::result::Result<f64, &'static str>> {
        if self.value.float_mode {
            return self.read_float_mode();
        }
        let r = &mut self.reader;
        let s = &mut self.value;
        match r.ones(4)? {
            0 => {
                let u = r.read(u32::from(s.packing.width))?;
                Some(Ok(apply_payload(s, u)))
            }
            1 => {
                let code = r.read(8)?;
                s.packing = Packing {
                    dod: code & 0x80 != 0,
                    signed: code & 0x40 != 0,
                    width: (code & 0x3f) as u8,
                };
                let u = r.read(u32::from(s.packing.width))?;
                Some(Ok(apply_payload(s, u)))
            }
            2 => read_scale_change(r, s),
            n => {
                let bits = match r.bit()? {
                    false => s.prev_bits,
                    true => match read_xor_window(r, s)? {
                        Ok(xor) => s.prev_bits ^ xor,
                        Err(reason) => return Some(Err(reason)),
                    },
                };
                s.float_mode = n == 4;
                Some(Ok(f64::from_bits(bits)))
            }
        }
    }

    fn read_float_mode(&mut self) -> Option<std::result::Result<f64, &'static str>> {
        let r = &mut self.reader;
        let s = &mut self.value;
        let xor = match r.ones(3)? {
            0 => 0,
            1 => {
                let (lead, len) = (u32::from(s.xor_lead), u32::from(s.xor_len));
                r.read(len)? << (64 - lead - len)
            }
            2 => match read_xor_window(r, s)? {
                Ok(xor) => xor,
                Err(reason) => return Some(Err(reason)),
            },
            _ => return read_scale_change(r, s),
        };
        Some(Ok(f64::from_bits(s.prev_bits ^ xor)))
    }

    /// The encoder pads the last byte with zeros and writes nothing after it.
    fn check_padding(&mut self) -> Result<()> {
        let left = self.reader.remaining();
        if left >= 8 {
            return Err(self.corrupted("bytes after the last sample"));
        }
        if self.reader.read(left as u32) != Some(0) {
            return Err(self.corrupted("non-zero padding after the last sample"));
        }
        Ok(())
    }
}

/// A repeated decimal is a zero delta: the next dod is relative to it.
fn apply_repeat(s: &mut ValueState) {
    if !s.float_mode {
        s.scaled_delta = 0;
    }
}

#[inline]
fn apply_payload(s: &mut ValueState, payload: u64) -> f64 {
    let delta = s.packing.delta(payload, s.scaled_delta);
    s.scaled = s.scaled.wrapping_add(delta);
    s.scaled_delta = delta;
    s.decimal_value()
}

fn read_scale_change(
    r: &mut BitReader,
    s: &mut ValueState,
) -> Option<std::result::Result<f64, &'static str>> {
    let scale = r.read(5)? as u8;
    let n = r.read(6)? as u32;
    let m = unzigzag(r.read(n)?);
    if scale > MAX_SCALE {
        return Some(Err("decimal scale above 22"));
    }
    s.float_mode = false;
    s.scale = scale;
    s.scaled = m;
    s.scaled_delta = 0;
    Some(Ok(s.decimal_value()))
}

impl Iterator for ChunkIter<'_> {
    type Item = Result<(i64, f64)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.index >= self.count {
            return None;
        }
        let sample = self.next_sample();
        self.failed = sample.is_err();
        Some(sample)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = if self.failed {
            0
        } else {
            (self.count - self.index) as usize
        };
        (0, Some(left))
    }
}

#[cfg(test)]
mod tests;
