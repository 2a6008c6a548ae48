//! Series identity: resource + metric + sorted tags, and its canonical byte form used for interning.
//!
//! The canonical key is what the index hashes and what batches carry, so an
//! ingest lookup hashes a slice of the batch without building a string:
//!
//! ```text
//! u16 resource_len, resource, u16 metric_len, metric, u8 tag_count,
//! tag_count x (u16 name_len, name, u16 value_len, value)
//! ```
//!
//! All integers little-endian, all strings UTF-8, tag names strictly
//! increasing (so one series has exactly one encoding).

use crate::error::{Error, Result};
use crate::source::{Labels, METRIC_LABEL, RESOURCE_LABEL};

/// Longest resource, metric, tag name or tag value, in bytes.
pub const STRING_BYTES_MAX: usize = 4096;
/// Most tags on one series.
pub const TAGS_MAX: usize = 32;

/// An owned series identity. Tags are sorted by name, names unique.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SeriesKey {
    pub resource: String,
    pub metric: String,
    tags: Vec<(String, String)>,
}

impl SeriesKey {
    /// Builds a key; tags in any order, a later tag with the same name wins.
    pub fn new(resource: &str, metric: &str, tags: &[(&str, &str)]) -> Result<SeriesKey> {
        let mut owned: Vec<(String, String)> = tags
            .iter()
            .rev()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        owned.sort_by(|a, b| a.0.cmp(&b.0));
        owned.dedup_by(|later, earlier| later.0 == earlier.0);
        let key = SeriesKey {
            resource: resource.to_string(),
            metric: metric.to_string(),
            tags: owned,
        };
        key.validate()?;
        Ok(key)
    }

    fn validate(&self) -> Result<()> {
        check_string(&self.resource, "resource")?;
        check_string(&self.metric, "metric")?;
        if self.tags.len() > TAGS_MAX {
            return Err(Error::InvalidKey("too many tags"));
        }
        for (n, v) in &self.tags {
            check_string(n, "tag name")?;
            check_string(v, "tag value")?;
            if n.is_empty() || n == METRIC_LABEL || n == RESOURCE_LABEL {
                return Err(Error::InvalidKey("tag name is empty or reserved"));
            }
        }
        Ok(())
    }

    pub fn tags(&self) -> impl ExactSizeIterator<Item = (&str, &str)> {
        self.tags.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// Appends the canonical encoding to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        encode_parts(&self.resource, &self.metric, self.tags(), out);
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.encode_into(&mut out);
        out
    }

    pub fn encoded_len(&self) -> usize {
        5 + self.resource.len()
            + self.metric.len()
            + self
                .tags
                .iter()
                .map(|(n, v)| 4 + n.len() + v.len())
                .sum::<usize>()
    }

    /// The Prometheus labels of this series.
    pub fn labels(&self) -> Labels {
        KeyRef::parse(&self.to_bytes())
            .map(|k| k.labels())
            .unwrap_or_default()
    }
}

fn check_string(s: &str, what: &'static str) -> Result<()> {
    if s.len() > STRING_BYTES_MAX {
        return Err(Error::InvalidKey(what));
    }
    Ok(())
}

/// Encodes a key from borrowed parts; `tags` must be sorted by name, names
/// unique and every string at most [`STRING_BYTES_MAX`] (checked in debug).
pub fn encode_parts<'a>(
    resource: &str,
    metric: &str,
    tags: impl ExactSizeIterator<Item = (&'a str, &'a str)>,
    out: &mut Vec<u8>,
) {
    put_str(out, resource);
    put_str(out, metric);
    debug_assert!(tags.len() <= TAGS_MAX);
    out.push(tags.len() as u8);
    for (n, v) in tags {
        put_str(out, n);
        put_str(out, v);
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    debug_assert!(s.len() <= STRING_BYTES_MAX);
    out.extend_from_slice(&(s.len() as u16).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// A borrowed, validated view of a canonical key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyRef<'a> {
    pub resource: &'a str,
    pub metric: &'a str,
    tag_bytes: &'a [u8],
    tag_count: u8,
}

/// Length of the key at the start of `bytes`, walking only the length
/// fields (no UTF-8 or order checks: for bytes already validated).
#[inline]
pub fn key_len(bytes: &[u8]) -> Option<usize> {
    let len_at = |pos: usize| -> Option<usize> {
        let b = bytes.get(pos..pos + 2)?;
        Some(u16::from_le_bytes([b[0], b[1]]) as usize)
    };
    let mut pos = 0;
    pos += 2 + len_at(pos)?;
    pos += 2 + len_at(pos)?;
    let tags = *bytes.get(pos)?;
    pos += 1;
    for _ in 0..usize::from(tags) * 2 {
        pos += 2 + len_at(pos)?;
    }
    (pos <= bytes.len()).then_some(pos)
}

/// Validates the key at the start of `bytes` as [`KeyRef::parse_prefix`]
/// does and returns its length. The ingest path: an all-ASCII key (the
/// common case) is checked with one pass over its bytes instead of a UTF-8
/// check per string.
pub fn validate_prefix(bytes: &[u8]) -> Option<usize> {
    let len = key_len(bytes)?;
    let key = &bytes[..len];
    if !key.is_ascii() {
        return KeyRef::parse_prefix(bytes).ok().map(|(_, n)| n);
    }
    let string = |pos: usize| -> Option<(&[u8], usize)> {
        let n = u16::from_le_bytes([key[pos], key[pos + 1]]) as usize;
        (n <= STRING_BYTES_MAX).then(|| (&key[pos + 2..pos + 2 + n], pos + 2 + n))
    };
    let (_, pos) = string(0)?;
    let (_, pos) = string(pos)?;
    let tags = key[pos] as usize;
    if tags > TAGS_MAX {
        return None;
    }
    let (mut pos, mut prev): (usize, Option<&[u8]>) = (pos + 1, None);
    for _ in 0..tags {
        let (name, next) = string(pos)?;
        let (_, next) = string(next)?;
        if name.is_empty() || name == METRIC_LABEL.as_bytes() || name == RESOURCE_LABEL.as_bytes() {
            return None;
        }
        if prev.is_some_and(|p| p >= name) {
            return None;
        }
        prev = Some(name);
        pos = next;
    }
    Some(len)
}

impl<'a> KeyRef<'a> {
    /// The key of a series with empty resource and metric and no tags.
    pub const EMPTY: KeyRef<'static> = KeyRef {
        resource: "",
        metric: "",
        tag_bytes: &[],
        tag_count: 0,
    };

    /// Parses exactly one key that fills `bytes`.
    pub fn parse(bytes: &'a [u8]) -> Result<KeyRef<'a>> {
        let (key, used) = KeyRef::parse_prefix(bytes)?;
        if used != bytes.len() {
            return Err(Error::InvalidKey("trailing bytes after series key"));
        }
        Ok(key)
    }

    /// Parses one key at the start of `bytes`; returns it and its length.
    pub fn parse_prefix(bytes: &'a [u8]) -> Result<(KeyRef<'a>, usize)> {
        let mut r = Reader { bytes, pos: 0 };
        let resource = r.str()?;
        let metric = r.str()?;
        let tag_count = r.u8()?;
        if tag_count as usize > TAGS_MAX {
            return Err(Error::InvalidKey("too many tags"));
        }
        let tags_start = r.pos;
        let mut prev: Option<&str> = None;
        for _ in 0..tag_count {
            let name = r.str()?;
            r.str()?;
            if name.is_empty() || name == METRIC_LABEL || name == RESOURCE_LABEL {
                return Err(Error::InvalidKey("tag name is empty or reserved"));
            }
            if prev.is_some_and(|p| p >= name) {
                return Err(Error::InvalidKey("tag names not strictly increasing"));
            }
            prev = Some(name);
        }
        let key = KeyRef {
            resource,
            metric,
            tag_bytes: &bytes[tags_start..r.pos],
            tag_count,
        };
        Ok((key, r.pos))
    }

    /// The tags in name order.
    pub fn tags(&self) -> TagIter<'a> {
        TagIter {
            r: Reader {
                bytes: self.tag_bytes,
                pos: 0,
            },
            left: self.tag_count,
        }
    }

    pub fn to_owned_key(&self) -> SeriesKey {
        SeriesKey {
            resource: self.resource.to_string(),
            metric: self.metric.to_string(),
            tags: self
                .tags()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
        }
    }

    /// The label value for `name` (`__name__`, `resource` or a tag).
    pub fn label(&self, name: &str) -> Option<&'a str> {
        match name {
            METRIC_LABEL => Some(self.metric),
            RESOURCE_LABEL => Some(self.resource),
            _ => self.tags().find(|(n, _)| *n == name).map(|(_, v)| v),
        }
    }

    pub fn labels(&self) -> Labels {
        let mut pairs = Vec::with_capacity(2 + self.tag_count as usize);
        pairs.push((METRIC_LABEL.to_string(), self.metric.to_string()));
        pairs.push((RESOURCE_LABEL.to_string(), self.resource.to_string()));
        pairs.extend(self.tags().map(|(n, v)| (n.to_string(), v.to_string())));
        Labels::new(pairs)
    }
}

/// Iterates the tags of a validated key.
pub struct TagIter<'a> {
    r: Reader<'a>,
    left: u8,
}

impl<'a> Iterator for TagIter<'a> {
    type Item = (&'a str, &'a str);
    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        // The bytes were validated by `KeyRef::parse_prefix`; a failure here
        // ends the iteration instead of panicking.
        let name = self.r.str().ok()?;
        let value = self.r.str().ok()?;
        Some((name, value))
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn u8(&mut self) -> Result<u8> {
        let b = *self
            .bytes
            .get(self.pos)
            .ok_or(Error::InvalidKey("truncated"))?;
        self.pos += 1;
        Ok(b)
    }

    fn str(&mut self) -> Result<&'a str> {
        let Some(len_bytes) = self.bytes.get(self.pos..self.pos + 2) else {
            return Err(Error::InvalidKey("truncated"));
        };
        let len = u16::from_le_bytes([len_bytes[0], len_bytes[1]]) as usize;
        if len > STRING_BYTES_MAX {
            return Err(Error::InvalidKey("string too long"));
        }
        let start = self.pos + 2;
        let Some(raw) = self.bytes.get(start..start + len) else {
            return Err(Error::InvalidKey("truncated"));
        };
        let s = std::str::from_utf8(raw).map_err(|_| Error::InvalidKey("not utf-8"))?;
        self.pos = start + len;
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(
        resource: &str,
        metric: &str,
        tags: &[(&str, &str)],
        expected_labels: &[(&str, &str)],
    ) {
        let key = SeriesKey::new(resource, metric, tags).unwrap();
        let bytes = key.to_bytes();
        assert_eq!(bytes.len(), key.encoded_len());
        assert_eq!(key_len(&bytes), Some(bytes.len()));
        let view = KeyRef::parse(&bytes).unwrap();
        assert_eq!(view.to_owned_key(), key);
        let labels = view.labels();
        let got: Vec<(&str, &str)> = labels.iter().collect();
        assert_eq!(got, expected_labels);
    }

    #[test]
    fn keys_round_trip_and_give_labels() {
        check(
            "vm1",
            "cpu",
            &[],
            &[("__name__", "cpu"), ("resource", "vm1")],
        );
        check(
            "vm1",
            "cpu",
            &[("z", "1"), ("a", "2"), ("z", "3")],
            &[
                ("__name__", "cpu"),
                ("a", "2"),
                ("resource", "vm1"),
                ("z", "3"),
            ],
        );
        check("", "", &[], &[("__name__", ""), ("resource", "")]);
    }

    #[test]
    fn bad_keys_are_errors() {
        assert!(SeriesKey::new("r", "m", &[("resource", "x")]).is_err());
        assert!(SeriesKey::new("r", "m", &[("", "x")]).is_err());
        assert!(SeriesKey::new(&"x".repeat(STRING_BYTES_MAX + 1), "m", &[]).is_err());
        let mut unsorted = Vec::new();
        encode_parts(
            "r",
            "m",
            [("b", "1"), ("a", "2")].into_iter(),
            &mut unsorted,
        );
        assert!(KeyRef::parse(&unsorted).is_err());
        let good = SeriesKey::new("r", "m", &[("a", "1")]).unwrap().to_bytes();
        for cut in 0..good.len() {
            assert!(KeyRef::parse(&good[..cut]).is_err(), "cut at {cut}");
        }
        assert_eq!(validate_prefix(&unsorted), None);
        assert_eq!(validate_prefix(&good), Some(good.len()));
    }

    #[test]
    fn many_tags_in_garbage_do_not_overflow() {
        // Found by batch::tests::mutated_batches_never_panic: 200 tags * 2
        // overflowed a u8 in `key_len`.
        assert_eq!(key_len(&[0, 0, 0, 0, 200]), None);
        assert_eq!(validate_prefix(&[0, 0, 0, 0, 200]), None);
    }

    proptest::proptest! {
        #[test]
        fn fast_validation_agrees_with_parsing(bytes in proptest::collection::vec(
            proptest::prop_oneof![0u8..4, 0x5Fu8..0x62, proptest::prelude::any::<u8>()], 0..24)) {
            let parsed = KeyRef::parse_prefix(&bytes).ok().map(|(_, n)| n);
            proptest::prop_assert_eq!(validate_prefix(&bytes), parsed);
        }
    }
}
