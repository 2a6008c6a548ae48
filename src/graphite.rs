//! Graphite plaintext protocol: splitting a TCP byte stream into lines and parsing `path value timestamp`.
//!
//! Sans-IO: the listener feeds bytes in and gets samples or counted errors out.
//! A bad line never poisons its neighbours: every line is parsed on its own.

use std::fmt;

use num_traits::{PrimInt, WrappingSub};

/// Settings of the Graphite parser.
#[derive(Clone, Debug)]
pub struct GraphiteConfig {
    /// How many leading path components name the resource.
    pub resource_depth: usize,
    /// Longest accepted line, in bytes, without its line end.
    pub line_bytes_max: usize,
}

impl Default for GraphiteConfig {
    fn default() -> Self {
        GraphiteConfig {
            resource_depth: 2,
            line_bytes_max: 16 * 1024,
        }
    }
}

/// One parsed line. Borrowed from the input: no allocation on the hot path.
#[derive(Clone, Debug, PartialEq)]
pub struct Line<'a> {
    pub resource: &'a str,
    pub metric: &'a str,
    /// Tags other than `resource`, in input order.
    pub tags: Vec<(&'a str, &'a str)>,
    pub timestamp_ms: i64,
    pub value: f64,
}

/// Why a line was rejected. Each variant is counted separately.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LineError {
    TooLong,
    NotUtf8,
    MissingValue,
    BadValue,
    BadTimestamp,
    BadTag,
    NoResource,
    TooManyFields,
}

impl LineError {
    pub const ALL: [LineError; 8] = [
        LineError::TooLong,
        LineError::NotUtf8,
        LineError::MissingValue,
        LineError::BadValue,
        LineError::BadTimestamp,
        LineError::BadTag,
        LineError::NoResource,
        LineError::TooManyFields,
    ];

    /// A short stable name, used as a metric label.
    pub fn name(self) -> &'static str {
        match self {
            LineError::TooLong => "too_long",
            LineError::NotUtf8 => "not_utf8",
            LineError::MissingValue => "missing_value",
            LineError::BadValue => "bad_value",
            LineError::BadTimestamp => "bad_timestamp",
            LineError::BadTag => "bad_tag",
            LineError::NoResource => "no_resource",
            LineError::TooManyFields => "too_many_fields",
        }
    }
}

impl fmt::Display for LineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            LineError::TooLong => "line longer than the limit",
            LineError::NotUtf8 => "line is not UTF-8",
            LineError::MissingValue => "missing value: expected `path value [timestamp]`",
            LineError::BadValue => "value is not a number",
            LineError::BadTimestamp => "timestamp is not a number of seconds",
            LineError::BadTag => "tag is not `name=value`",
            LineError::NoResource => "path has one component and no `;resource=` tag",
            LineError::TooManyFields => "more than three fields",
        };
        f.write_str(text)
    }
}

/// Parses one line (without its line end). `now_ms` is used when the
/// timestamp is missing or negative, as Graphite's carbon does.
pub fn parse_line<'a>(
    line: &'a [u8],
    config: &GraphiteConfig,
    now_ms: i64,
) -> Result<Line<'a>, LineError> {
    if line.len() > config.line_bytes_max {
        return Err(LineError::TooLong);
    }
    let line = std::str::from_utf8(line).map_err(|_| LineError::NotUtf8)?;
    parse_text(line, config, now_ms)
}

/// [`parse_line`] of a line known to be UTF-8 ([`LineSplitter`] checks a
/// whole read at once).
pub fn parse_text<'a>(
    line: &'a str,
    config: &GraphiteConfig,
    now_ms: i64,
) -> Result<Line<'a>, LineError> {
    match parse_plain(line, config) {
        Some(parsed) => Ok(parsed),
        None => parse_any(line, config, now_ms),
    }
}

/// The line nearly every collector sends, in one pass: `path value seconds`
/// with single spaces, a printable ASCII path (tags or not), a plain decimal
/// value and whole seconds, in a line of at most 128 bytes. `None` hands the
/// line to [`parse_any`], which takes every form and names the errors; on
/// the lines this accepts the two agree (a proptest checks it).
fn parse_plain<'a>(line: &'a str, config: &GraphiteConfig) -> Option<Line<'a>> {
    let bytes = line.as_bytes();
    if bytes.len() > config.line_bytes_max {
        return None;
    }
    match bytes.len() {
        0..=64 => parse_marked(line, Marks::<u64>::of(bytes), config),
        65..=128 => parse_marked(line, Marks::<u128>::of(bytes), config),
        _ => None,
    }
}

fn parse_marked<'a, B: Bits>(
    line: &'a str,
    marks: Marks<B>,
    config: &GraphiteConfig,
) -> Option<Line<'a>> {
    let bytes = line.as_bytes();
    let path_end = marks.spaces.trailing_zeros() as usize;
    let later_spaces = marks.spaces & marks.spaces.wrapping_sub(&B::one());
    if later_spaces.is_zero() || !(later_spaces & later_spaces.wrapping_sub(&B::one())).is_zero() {
        return None;
    }
    let value_end = later_spaces.trailing_zeros() as usize;
    let in_path = bits_below::<B>(path_end);
    if !(marks.unprintable & in_path).is_zero() {
        return None;
    }
    let value = plain_decimal(&bytes[path_end + 1..value_end])?;
    let timestamp_ms = plain_seconds(&bytes[value_end + 1..])?.checked_mul(1000)?;
    let path = &line[..path_end];
    let (resource, metric, tags) = if (marks.semicolons & in_path).is_zero() {
        let (resource, metric) = cut_path(path, marks.dots & in_path, config.resource_depth)?;
        (resource, metric, Vec::new())
    } else {
        split_key(path, config.resource_depth).ok()?
    };
    Some(Line {
        resource,
        metric,
        tags,
        timestamp_ms,
        value,
    })
}

/// [`split_path`] of an untagged path whose dots are already found: the
/// `depth`-th dot, or the last one when there are fewer.
#[inline]
fn cut_path<B: Bits>(path: &str, dots: B, depth: usize) -> Option<(&str, &str)> {
    if dots.is_zero() {
        return None;
    }
    let mut nth = dots;
    for _ in 1..depth {
        nth = nth & nth.wrapping_sub(&B::one());
    }
    let cut = if depth > 0 && !nth.is_zero() {
        nth.trailing_zeros()
    } else {
        B::WIDTH - 1 - dots.leading_zeros()
    } as usize;
    let (resource, metric) = (&path[..cut], &path[cut + 1..]);
    (!resource.is_empty() && !metric.is_empty()).then_some((resource, metric))
}

/// The integers [`Marks`] are kept in: `u64` for lines of up to 64 bytes,
/// where every operation is one instruction, `u128` for up to 128.
trait Bits: PrimInt + WrappingSub + From<u16> + Default {
    const WIDTH: u32;
}

impl Bits for u64 {
    const WIDTH: u32 = 64;
}

impl Bits for u128 {
    const WIDTH: u32 = 128;
}

/// The bits of positions `0..n`, `n` at most the width.
fn bits_below<B: Bits>(n: usize) -> B {
    if n >= B::WIDTH as usize {
        B::max_value()
    } else {
        (B::one() << n) - B::one()
    }
}

/// Where the bytes that give a line its shape are, one bit per byte (bit `i`
/// for byte `i`): found sixteen bytes at a time, so the parser never walks
/// the path byte by byte.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Marks<B> {
    spaces: B,
    dots: B,
    semicolons: B,
    /// Anything but printable ASCII: spaces, tabs, control bytes and every
    /// byte of a multi-byte character.
    unprintable: B,
}

impl<B: Bits> Marks<B> {
    /// The marks of `line`, at most [`Bits::WIDTH`] bytes long.
    fn of(line: &[u8]) -> Marks<B> {
        let len = line.len();
        debug_assert!(len <= B::WIDTH as usize);
        if len < 16 {
            let mut padded = [b'x'; 16];
            padded[..len].copy_from_slice(line);
            let mut marks = Marks::default();
            marks.or_at(chunk_marks(&padded), 0);
            return marks.below(len);
        }
        let mut marks = Marks::default();
        // Bounds known at compile time: the loop is unrolled and every shift
        // is by a constant.
        for chunk in 0..B::WIDTH as usize / 16 {
            let at = 16 * chunk;
            let Some(bytes) = line.get(at..at + 16) else {
                break;
            };
            marks.or_at(chunk_marks(bytes.try_into().expect("16 bytes")), at);
        }
        if len % 16 != 0 {
            // The last sixteen bytes again: the bytes seen twice give the
            // same bits twice, so or-ing them in is harmless.
            let from = len - 16;
            marks.or_at(
                chunk_marks(line[from..].try_into().expect("16 bytes")),
                from,
            );
        }
        marks
    }

    fn or_at(&mut self, chunk: Marks<u16>, at: usize) {
        let put = |bits: u16| <B as From<u16>>::from(bits) << at;
        self.spaces = self.spaces | put(chunk.spaces);
        self.dots = self.dots | put(chunk.dots);
        self.semicolons = self.semicolons | put(chunk.semicolons);
        self.unprintable = self.unprintable | put(chunk.unprintable);
    }

    /// Only the bits of the first `len` bytes.
    fn below(self, len: usize) -> Marks<B> {
        let keep = bits_below::<B>(len);
        Marks {
            spaces: self.spaces & keep,
            dots: self.dots & keep,
            semicolons: self.semicolons & keep,
            unprintable: self.unprintable & keep,
        }
    }
}

/// The marks of sixteen bytes.
fn chunk_marks(chunk: &[u8; 16]) -> Marks<u16> {
    Marks {
        spaces: byte_bits(chunk, b' '),
        dots: byte_bits(chunk, b'.'),
        semicolons: byte_bits(chunk, b';'),
        unprintable: unprintable_bits(chunk),
    }
}

/// Bit `i` set where byte `i` of `chunk` is `needle`.
#[inline(always)]
fn byte_bits(chunk: &[u8; 16], needle: u8) -> u16 {
    #[cfg(target_arch = "x86_64")]
    {
        use safe_arch::*;
        let equal = cmp_eq_mask_i8_m128i(
            load_unaligned_m128i(chunk),
            set_splat_i8_m128i(needle as i8),
        );
        move_mask_i8_m128i(equal) as u16
    }
    #[cfg(not(target_arch = "x86_64"))]
    bits_where(chunk, |b| b == needle)
}

/// Bit `i` set where byte `i` of `chunk` is not printable ASCII.
#[inline(always)]
fn unprintable_bits(chunk: &[u8; 16]) -> u16 {
    #[cfg(target_arch = "x86_64")]
    {
        use safe_arch::*;
        // Printable ASCII is 0x21..=0x7E; as signed bytes, everything from
        // 0x80 up is negative and so below 0x21 too.
        let bytes = load_unaligned_m128i(chunk);
        let printable = bitand_m128i(
            cmp_gt_mask_i8_m128i(bytes, set_splat_i8_m128i(0x20)),
            cmp_lt_mask_i8_m128i(bytes, set_splat_i8_m128i(0x7F)),
        );
        !(move_mask_i8_m128i(printable) as u16)
    }
    #[cfg(not(target_arch = "x86_64"))]
    bits_where(chunk, |b| !(b'!'..=b'~').contains(&b))
}

/// A byte at a time: off x86-64, and as the tests' reference.
#[cfg_attr(target_arch = "x86_64", allow(dead_code))]
fn bits_where(chunk: &[u8; 16], set: impl Fn(u8) -> bool) -> u16 {
    chunk
        .iter()
        .enumerate()
        .fold(0, |bits, (i, &b)| bits | u16::from(set(b)) << i)
}

const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

/// `-?[0-9]+(\.[0-9]+)?` with a mantissa below 2^53 and at most 22
/// decimals: the mantissa and the power of ten are exact doubles, so one
/// division is the correctly rounded value, as `f64::from_str` gives.
fn plain_decimal(text: &[u8]) -> Option<f64> {
    let (negative, digits) = match text.split_first()? {
        (b'-', rest) => (true, rest),
        _ => (false, text),
    };
    let (mut mantissa, mut count, mut point) = (0u64, 0usize, None);
    for (i, &b) in digits.iter().enumerate() {
        match b {
            b'0'..=b'9' if count < 19 => {
                mantissa = mantissa * 10 + u64::from(b - b'0');
                count += 1;
            }
            b'.' if point.is_none() && i > 0 && i + 1 < digits.len() => point = Some(i + 1),
            _ => return None,
        }
    }
    let decimals = point.map_or(0, |p| digits.len() - p);
    if count == 0 || mantissa > 1 << 53 || decimals >= POW10.len() {
        return None;
    }
    let value = mantissa as f64 / POW10[decimals];
    Some(if negative { -value } else { value })
}

/// `[0-9]{1,18}`: whole seconds that cannot overflow an i64. Eight digits
/// at a time while there are eight (a timestamp has ten), then one by one.
fn plain_seconds(text: &[u8]) -> Option<i64> {
    if text.is_empty() || text.len() > 18 {
        return None;
    }
    let mut acc = 0i64;
    let mut rest = text;
    while let Some((eight, tail)) = rest.split_first_chunk::<8>() {
        acc = acc * 100_000_000 + eight_digits(*eight)? as i64;
        rest = tail;
    }
    rest.iter().try_fold(acc, |acc, &b| {
        b.is_ascii_digit().then(|| acc * 10 + i64::from(b - b'0'))
    })
}

/// The value of eight ASCII digits, most significant first.
fn eight_digits(bytes: [u8; 8]) -> Option<u64> {
    const HIGH: u64 = 0xF0F0_F0F0_F0F0_F0F0;
    const ZEROS: u64 = 0x3030_3030_3030_3030;
    let x = u64::from_le_bytes(bytes);
    // A digit's high nibble is 3, and still 3 with 6 added (no carries:
    // every byte is at most 0x3F once the first test passed).
    if x & HIGH != ZEROS || x.wrapping_add(0x0606_0606_0606_0606) & HIGH != ZEROS {
        return None;
    }
    // The first digit is the lowest byte: pairs, then fours, then eight.
    let d = x - ZEROS;
    let d = (d * 10 + (d >> 8)) & 0x00FF_00FF_00FF_00FF;
    let d = (d * 100 + (d >> 16)) & 0x0000_FFFF_0000_FFFF;
    Some((d * 10_000 + (d >> 32)) & 0xFFFF_FFFF)
}

/// Any line: fields split on runs of ASCII whitespace, tags, and every value
/// and timestamp form Rust's parsers take.
fn parse_any<'a>(
    line: &'a str,
    config: &GraphiteConfig,
    now_ms: i64,
) -> Result<Line<'a>, LineError> {
    if line.len() > config.line_bytes_max {
        return Err(LineError::TooLong);
    }
    let mut fields = line.split_ascii_whitespace();
    let path = fields.next().ok_or(LineError::MissingValue)?;
    let value = parse_value(fields.next().ok_or(LineError::MissingValue)?)?;
    let timestamp_ms = match fields.next() {
        None => now_ms,
        Some(ts) => parse_timestamp(ts)?.unwrap_or(now_ms),
    };
    if fields.next().is_some() {
        return Err(LineError::TooManyFields);
    }
    let (resource, metric, tags) = split_key(path, config.resource_depth)?;
    Ok(Line {
        resource,
        metric,
        tags,
        timestamp_ms,
        value,
    })
}

/// Tags other than `resource`, in input order.
type Tags<'a> = Vec<(&'a str, &'a str)>;

/// A path with its optional `;name=value` tags: resource, metric and the
/// other tags. A `resource` tag names the resource and leaves the whole
/// name as the metric; without one, the name is split by [`split_path`].
fn split_key(path: &str, depth: usize) -> Result<(&str, &str, Tags<'_>), LineError> {
    let (name, mut tag_text) = match split_at_byte(path, b';') {
        Some((name, tags)) => (name, Some(tags)),
        None => (path, None),
    };
    let mut resource_tag = None;
    let mut tags = Vec::new();
    while let Some(text) = tag_text {
        let tag = match split_at_byte(text, b';') {
            Some((tag, rest)) => {
                tag_text = Some(rest);
                tag
            }
            None => {
                tag_text = None;
                text
            }
        };
        let (k, v) = split_at_byte(tag, b'=').ok_or(LineError::BadTag)?;
        if k.is_empty() || v.is_empty() {
            return Err(LineError::BadTag);
        }
        if k == "resource" {
            resource_tag = Some(v);
        } else {
            tags.push((k, v));
        }
    }
    let (resource, metric) = match resource_tag {
        Some(resource) => (resource, name),
        None => split_path(name, depth)?,
    };
    if metric.is_empty() || resource.is_empty() {
        return Err(LineError::NoResource);
    }
    Ok((resource, metric, tags))
}

/// The text before and after the first `b` (ASCII). `find_byte` rather than
/// `str::split_once`: a path is short, and tags are split on every line of a
/// tagged load.
fn split_at_byte(s: &str, b: u8) -> Option<(&str, &str)> {
    find_byte(b, s.as_bytes()).map(|i| (&s[..i], &s[i + 1..]))
}

/// `collectd.web01.load.shortterm` at depth 2 is resource `collectd.web01`,
/// metric `load.shortterm`. A path with `depth` components or fewer keeps its
/// last component as the metric and the rest as the resource.
fn split_path(path: &str, depth: usize) -> Result<(&str, &str), LineError> {
    let bytes = path.as_bytes();
    let mut cut = None;
    let mut from = 0;
    for _ in 0..depth {
        cut = find_byte(b'.', &bytes[from..]).map(|i| from + i);
        match cut {
            Some(at) => from = at + 1,
            None => break,
        }
    }
    let cut = cut
        .or_else(|| path.rfind('.'))
        .ok_or(LineError::NoResource)?;
    Ok((&path[..cut], &path[cut + 1..]))
}

fn parse_value(text: &str) -> Result<f64, LineError> {
    // Rust's parser takes "NaN", "inf", "infinity" in any case, and nothing
    // else that is not a number.
    text.parse::<f64>().map_err(|_| LineError::BadValue)
}

/// Seconds since the epoch, integer or decimal. `Ok(None)` for the negative
/// values (`-1`) that senders use to mean "now".
fn parse_timestamp(text: &str) -> Result<Option<i64>, LineError> {
    if let Ok(secs) = text.parse::<i64>() {
        if secs < 0 {
            return Ok(None);
        }
        return secs
            .checked_mul(1000)
            .map(Some)
            .ok_or(LineError::BadTimestamp);
    }
    let secs: f64 = text.parse().map_err(|_| LineError::BadTimestamp)?;
    if !secs.is_finite() {
        return Err(LineError::BadTimestamp);
    }
    if secs < 0.0 {
        return Ok(None);
    }
    let ms = (secs * 1000.0).round();
    if ms >= i64::MAX as f64 {
        return Err(LineError::BadTimestamp);
    }
    Ok(Some(ms as i64))
}

/// Splits a byte stream into lines across reads. A line longer than the
/// limit is skipped up to its line end and reported once as too long; a half
/// line at close is reported by [`LineSplitter::finish`].
#[derive(Debug, Default)]
pub struct LineSplitter {
    pending: Vec<u8>,
    skipping: bool,
}

/// What the splitter found: a whole line, or one line dropped for length.
#[derive(Debug, PartialEq, Eq)]
pub enum Piece<'a> {
    Line(&'a str),
    /// A whole line that is not UTF-8.
    NotUtf8(&'a [u8]),
    TooLong,
    /// A blank line: not an error, but counted.
    Empty,
}

impl LineSplitter {
    /// Feeds `input` and calls `on_piece` for every complete line (line end
    /// `\n` or `\r\n` removed).
    pub fn feed(
        &mut self,
        input: &[u8],
        line_bytes_max: usize,
        mut on_piece: impl FnMut(Piece<'_>),
    ) {
        // One UTF-8 check for the whole read: a check per line cost a sixth
        // of the parse. Lines past an invalid byte are checked one by one.
        let text = match std::str::from_utf8(input) {
            Ok(text) => text,
            Err(e) => std::str::from_utf8(&input[..e.valid_up_to()]).unwrap_or_default(),
        };
        let mut newlines = Newlines::of(input);
        let mut at = 0;
        while at < input.len() {
            let Some(end) = newlines.next() else {
                self.hold(&input[at..], line_bytes_max, &mut on_piece);
                return;
            };
            let start = at;
            at = end + 1;
            if self.skipping {
                self.skipping = false;
                continue;
            }
            if self.pending.is_empty() {
                emit(
                    &input[start..end],
                    text.get(start..end),
                    line_bytes_max,
                    &mut on_piece,
                );
            } else {
                self.pending.extend_from_slice(&input[start..end]);
                let line = std::mem::take(&mut self.pending);
                emit(&line, None, line_bytes_max, &mut on_piece);
                self.pending = line;
                self.pending.clear();
            }
        }
    }

    fn hold(&mut self, tail: &[u8], line_bytes_max: usize, on_piece: &mut impl FnMut(Piece<'_>)) {
        if self.skipping {
            return;
        }
        // +1 leaves room for the `\r` of a line exactly at the limit.
        if self.pending.len() + tail.len() > line_bytes_max + 1 {
            self.pending.clear();
            self.skipping = true;
            on_piece(Piece::TooLong);
        } else {
            self.pending.extend_from_slice(tail);
        }
    }

    /// The connection closed: a half line left over is returned so that the
    /// caller counts it (it may be a complete sample whose `\n` was lost).
    pub fn finish(&mut self) -> Option<Vec<u8>> {
        self.skipping = false;
        let rest = std::mem::take(&mut self.pending);
        let trimmed = trim_line_end(&rest);
        (!trimmed.is_empty()).then(|| trimmed.to_vec())
    }
}

/// Where the `\n`s of a read are, found 64 bytes at a time: a line end
/// costs a few instructions instead of a scan of its line.
struct Newlines<'a> {
    input: &'a [u8],
    /// Where the block `bits` stand for starts, and where the next one does.
    block: usize,
    next_block: usize,
    /// One bit per `\n` of the block not returned yet.
    bits: u64,
}

impl<'a> Newlines<'a> {
    fn of(input: &'a [u8]) -> Newlines<'a> {
        Newlines {
            input,
            block: 0,
            next_block: 0,
            bits: 0,
        }
    }

    /// Moves to the next block; false at the end of the input. Out of line:
    /// the common call, a line end in the current block, stays a few
    /// instructions.
    #[inline(never)]
    fn refill(&mut self) -> bool {
        if self.next_block >= self.input.len() {
            return false;
        }
        self.block = self.next_block;
        self.next_block += 64;
        let block = &self.input[self.block..self.input.len().min(self.next_block)];
        self.bits = match block.try_into() {
            Ok(whole) => newline_bits(whole),
            Err(_) => {
                let mut padded = [0; 64];
                padded[..block.len()].copy_from_slice(block);
                newline_bits(&padded)
            }
        };
        true
    }
}

impl Iterator for Newlines<'_> {
    type Item = usize;

    #[inline]
    fn next(&mut self) -> Option<usize> {
        while self.bits == 0 {
            if !self.refill() {
                return None;
            }
        }
        let at = self.block + self.bits.trailing_zeros() as usize;
        self.bits &= self.bits - 1;
        Some(at)
    }
}

fn newline_bits(block: &[u8; 64]) -> u64 {
    block
        .chunks_exact(16)
        .enumerate()
        .fold(0, |bits, (i, chunk)| {
            let chunk = chunk.try_into().expect("16 bytes");
            bits | u64::from(byte_bits(chunk, b'\n')) << (16 * i)
        })
}

/// Reports one line: `text` is `line` as a string when the caller already
/// knows it to be UTF-8.
fn emit(
    line: &[u8],
    text: Option<&str>,
    line_bytes_max: usize,
    on_piece: &mut impl FnMut(Piece<'_>),
) {
    let line = trim_line_end(line);
    if line.iter().all(u8::is_ascii_whitespace) {
        on_piece(Piece::Empty);
        return;
    }
    if line.len() > line_bytes_max {
        on_piece(Piece::TooLong);
        return;
    }
    let text = text.and_then(|t| t.get(..line.len()));
    match text.map_or_else(|| std::str::from_utf8(line).ok(), Some) {
        Some(text) => on_piece(Piece::Line(text)),
        None => on_piece(Piece::NotUtf8(line)),
    }
}

#[inline]
fn trim_line_end(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// The first `needle` in `haystack`, eight bytes per step. Graphite lines
/// and their fields are tens of bytes, where this beats a SIMD `memchr`'s
/// setup and a byte loop alike.
pub fn find_byte(needle: u8, haystack: &[u8]) -> Option<usize> {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    let pattern = u64::from_ne_bytes([needle; 8]);
    let mut words = haystack.chunks_exact(8);
    let mut at = 0;
    for word in &mut words {
        let x = u64::from_le_bytes(word.try_into().expect("8 bytes")) ^ pattern;
        // A high bit set in every byte of `x` that is zero (and, through
        // borrows, maybe in bytes after it): the lowest one is the first match.
        let zero = x.wrapping_sub(ONES) & !x & HIGHS;
        if zero != 0 {
            return Some(at + (zero.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    let tail = words.remainder();
    tail.iter().position(|&b| b == needle).map(|i| at + i)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000_000;

    /// `(resource, metric, tags, timestamp_ms, value)`.
    type Expected<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], i64, f64);

    fn check(line: &str, expected: Result<Expected<'_>, LineError>) {
        let got = parse_line(line.as_bytes(), &GraphiteConfig::default(), NOW);
        match (got, expected) {
            (Ok(l), Ok((resource, metric, tags, ts, value))) => {
                assert_eq!(
                    (l.resource, l.metric, l.tags.as_slice(), l.timestamp_ms),
                    (resource, metric, tags, ts),
                    "{line}"
                );
                assert!(
                    l.value.to_bits() == value.to_bits() || (l.value.is_nan() && value.is_nan()),
                    "{line}: {}",
                    l.value
                );
            }
            (Err(e), Err(want)) => assert_eq!(e, want, "{line}"),
            (got, want) => panic!("{line}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn parses_lines() {
        check(
            "collectd.web01.load.shortterm 0.5 1700000000",
            Ok(("collectd.web01", "load.shortterm", &[], NOW, 0.5)),
        );
        check(
            "web01.load 2 1700000000",
            Ok(("web01", "load", &[], NOW, 2.0)),
        );
        check(
            "a.b.c 1 1700000000.25",
            Ok(("a.b", "c", &[], NOW + 250, 1.0)),
        );
        check("a.b.c nan 1700000000", Ok(("a.b", "c", &[], NOW, f64::NAN)));
        check("a.b.c NaN 1700000000", Ok(("a.b", "c", &[], NOW, f64::NAN)));
        check(
            "a.b.c -Inf 1700000000",
            Ok(("a.b", "c", &[], NOW, f64::NEG_INFINITY)),
        );
        check("a.b.c 1e3", Ok(("a.b", "c", &[], NOW, 1000.0)));
        check("a.b.c 1 -1", Ok(("a.b", "c", &[], NOW, 1.0)));
        check("  a.b.c\t7   1700000000  ", Ok(("a.b", "c", &[], NOW, 7.0)));
        check(
            "cpu.usage;resource=vm1;dc=eu 3 1700000000",
            Ok(("vm1", "cpu.usage", &[("dc", "eu")], NOW, 3.0)),
        );
        check(
            "h.cpu;core=0 3 1700000000",
            Ok(("h", "cpu", &[("core", "0")], NOW, 3.0)),
        );
        check("a.b.c", Err(LineError::MissingValue));
        check("a.b.c abc 1700000000", Err(LineError::BadValue));
        check("a.b.c 1 yesterday", Err(LineError::BadTimestamp));
        check("a.b.c 1 1700000000 extra", Err(LineError::TooManyFields));
        check("load 1 1700000000", Err(LineError::NoResource));
        check("a.b;tag 1 1700000000", Err(LineError::BadTag));
        check("a.b;=x 1 1700000000", Err(LineError::BadTag));
        check("a.b.c 1 99999999999999999", Err(LineError::BadTimestamp));
    }

    #[test]
    fn rejects_non_utf8_and_long_lines() {
        let config = GraphiteConfig {
            line_bytes_max: 10,
            ..Default::default()
        };
        assert_eq!(
            parse_line(b"a.b.c 1 \xff", &config, NOW),
            Err(LineError::NotUtf8)
        );
        assert_eq!(
            parse_line(b"a.b.c 1 1700000000", &config, NOW),
            Err(LineError::TooLong)
        );
    }

    #[test]
    fn plain_and_general_parsers_agree_on_edges() {
        let config = GraphiteConfig::default();
        for line in [
            "a.b.c 0.1 1700000000",
            "a.b.c -0 1700000000",
            "a.b.c -0.000 1700000000",
            "a.b.c 9007199254740993 1700000000",
            "a.b.c 123456789.0123456789 1700000000",
            "a.b.c 1.2345678901234567890123 1700000000",
            "a.b.c 5. 1700000000",
            "a.b.c .5 1700000000",
            "a.b.c 1 0",
            "a.b.c 1 999999999999999999",
            ".b.c 1 1",
            "a.b. 1 1",
            "a. 1 1",
            "a..c 1 1",
            "abc 1 1",
            "m;resource=r 1.5 1700000000",
            "m.x;resource=r;b=c=d 1 1",
            "m;resource=r;resource=s 1 1",
            "m;resource= 1 1",
            "m;=r 1 1",
            "a.b.c; 1 1",
        ] {
            let any = parse_any(line, &config, NOW);
            if let Some(plain) = parse_plain(line, &config) {
                assert_eq!(Ok(plain), any, "{line}");
            }
            check_same(line, &config);
        }
    }

    /// The common forms, tagged or not, take the one-pass parser (the
    /// general one gives the same answers, only slower).
    #[test]
    fn common_lines_take_the_one_pass_parser() {
        let config = GraphiteConfig::default();
        for line in [
            "dc1.vm7.cpu.usage 12.5 1700000000",
            "metric5;resource=vm123 -0.25 1700000000",
            "cpu.steal;resource=vm7;core=3 1 1700000000",
        ] {
            assert!(parse_plain(line, &config).is_some(), "{line}");
        }
    }

    fn check_same(line: &str, config: &GraphiteConfig) {
        let got = parse_text(line, config, NOW);
        let want = parse_any(line, config, NOW);
        match (&got, &want) {
            (Ok(g), Ok(w)) => {
                assert_eq!(
                    (
                        g.resource,
                        g.metric,
                        &g.tags,
                        g.timestamp_ms,
                        g.value.to_bits()
                    ),
                    (
                        w.resource,
                        w.metric,
                        &w.tags,
                        w.timestamp_ms,
                        w.value.to_bits()
                    ),
                    "{line}"
                );
            }
            _ => assert_eq!(got, want, "{line}"),
        }
    }

    proptest::proptest! {
        #[test]
        fn find_byte_finds_the_first(hay in proptest::collection::vec(0u8..4, 0..40), needle in 0u8..5) {
            proptest::prop_assert_eq!(find_byte(needle, &hay), hay.iter().position(|&b| b == needle));
        }

        #[test]
        fn marks_found_sixteen_bytes_at_a_time_are_those_found_one_by_one(
            line in proptest::collection::vec(proptest::prop_oneof![
                proptest::sample::select(b" .;!~\t\x7f\x20\x21".to_vec()),
                proptest::num::u8::ANY,
            ], 0..=128),
        ) {
            let mut want = Marks::<u128>::default();
            for (at, chunk) in line.chunks(16).enumerate() {
                let mut padded = [b'x'; 16];
                padded[..chunk.len()].copy_from_slice(chunk);
                let marks = Marks {
                    spaces: bits_where(&padded, |b| b == b' '),
                    dots: bits_where(&padded, |b| b == b'.'),
                    semicolons: bits_where(&padded, |b| b == b';'),
                    unprintable: bits_where(&padded, |b| !(b'!'..=b'~').contains(&b)),
                };
                want.or_at(marks, at * 16);
            }
            let want = want.below(line.len());
            proptest::prop_assert_eq!(Marks::<u128>::of(&line), want);
            if line.len() <= 64 {
                let narrow = Marks::<u64>::of(&line);
                let as_u128 = |b: u64| u128::from(b);
                proptest::prop_assert_eq!(
                    Marks {
                        spaces: as_u128(narrow.spaces),
                        dots: as_u128(narrow.dots),
                        semicolons: as_u128(narrow.semicolons),
                        unprintable: as_u128(narrow.unprintable),
                    },
                    want
                );
            }
        }

        #[test]
        fn newlines_found_a_block_at_a_time_are_all_of_them(
            input in proptest::collection::vec(proptest::prop_oneof![
                proptest::sample::select(b"\nab".to_vec()),
                proptest::num::u8::ANY,
            ], 0..300),
        ) {
            let want: Vec<usize> = (0..input.len()).filter(|&i| input[i] == b'\n').collect();
            proptest::prop_assert_eq!(Newlines::of(&input).collect::<Vec<_>>(), want);
        }

        #[test]
        fn whole_seconds_read_eight_digits_at_a_time_as_one_by_one(
            text in proptest::prop_oneof!["[0-9]{0,20}", "[0-9/:]{0,20}", "[0-9]{7,9}[^0-9][0-9]{0,9}"],
        ) {
            let want = match text.len() {
                1..=18 if text.bytes().all(|b| b.is_ascii_digit()) => text.parse().ok(),
                _ => None,
            };
            proptest::prop_assert_eq!(plain_seconds(text.as_bytes()), want);
        }

        #[test]
        fn the_plain_parser_agrees_with_the_general_one(
            path in proptest::prop_oneof!["[a-c.;=]{0,8}", "[a-c.;=~\t\u{e9}]{8,140}"],
            value in proptest::prop_oneof!["-?[0-9]{1,22}(\\.[0-9]{0,24})?", "[-+.0-9eE]{0,6}"],
            ts in proptest::prop_oneof!["[0-9]{1,20}", "[-+. 0-9]{0,4}"],
            depth in 0usize..4,
        ) {
            let config = GraphiteConfig { resource_depth: depth, ..Default::default() };
            check_same(&format!("{path} {value} {ts}"), &config);
        }
    }

    fn split(chunks: &[&[u8]], max: usize) -> (Vec<String>, Option<Vec<u8>>) {
        let mut s = LineSplitter::default();
        let mut out = Vec::new();
        for c in chunks {
            s.feed(c, max, |p| match p {
                Piece::Line(l) => out.push(l.to_owned()),
                Piece::NotUtf8(l) => {
                    out.push(format!("<not utf-8: {}>", String::from_utf8_lossy(l)))
                }
                Piece::TooLong => out.push("<too long>".into()),
                Piece::Empty => out.push("<empty>".into()),
            });
        }
        (out, s.finish())
    }

    #[test]
    fn checks_utf8_a_read_at_a_time_and_past_a_bad_byte_a_line_at_a_time() {
        let (lines, _) = split(&[b"a 1\n\xff 2\nb\xc3\xa9 3\n"], 100);
        assert_eq!(lines, ["a 1", "<not utf-8: \u{fffd} 2>", "b\u{e9} 3"]);
        // A character cut by the end of a read.
        let (lines, _) = split(&[b"a 1\nb\xc3", b"\xa9 2\n"], 100);
        assert_eq!(lines, ["a 1", "b\u{e9} 2"]);
        let (lines, _) = split(&[b"a\xc3", b"\xa9 1\nb 2\n"], 100);
        assert_eq!(lines, ["a\u{e9} 1", "b 2"]);
    }

    #[test]
    fn splits_across_reads_with_crlf_and_limits() {
        let (lines, rest) = split(&[b"a 1\r\nb ", b"2\n\n\r\nc", b" 3\nd"], 100);
        assert_eq!(lines, ["a 1", "b 2", "<empty>", "<empty>", "c 3"]);
        assert_eq!(rest.as_deref(), Some(&b"d"[..]));

        let long = vec![b'x'; 50];
        let (lines, rest) = split(&[b"ok 1\n", &long, &long, b"\nafter 2\n"], 20);
        assert_eq!(lines, ["ok 1", "<too long>", "after 2"]);
        assert_eq!(rest, None);

        // A long line inside one read is reported too.
        let mut input = long.clone();
        input.extend_from_slice(b"\nnext 1\n");
        let (lines, _) = split(&[&input], 20);
        assert_eq!(lines, ["<too long>", "next 1"]);
    }
}
