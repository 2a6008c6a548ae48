//! LEB128 varints and zigzag, shared by the chunk file index and the store's
//! batch format.

/// Maps signed to unsigned so that small magnitudes stay small.
#[inline]
pub fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

/// Inverse of [`zigzag`].
#[inline]
pub fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// Appends `v` as a LEB128 varint (1 to 10 bytes).
#[inline]
pub fn put(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Writes `v` as a LEB128 varint at the start of `out` and returns its
/// length. Up to 56 bits (8 bytes, every timestamp delta), the mirror of
/// [`get`]: the 7-bit groups are spread in three steps and stored with one
/// 8-byte write, whose bytes past the varint the caller overwrites or drops.
///
/// Panics if `out` is shorter than 10 bytes.
#[inline]
pub fn write(out: &mut [u8], v: u64) -> usize {
    let out = &mut out[..10];
    if v < 0x80 {
        out[0] = v as u8;
        return 1;
    }
    if v >= 1 << 56 {
        let mut v = v;
        let mut n = 0;
        while v >= 0x80 {
            out[n] = (v as u8) | 0x80;
            v >>= 7;
            n += 1;
        }
        out[n] = v as u8;
        return n + 1;
    }
    let x = (v & 0x0000_0000_0fff_ffff) | ((v & 0x00ff_ffff_f000_0000) << 4);
    let x = (x & 0x0000_3fff_0000_3fff) | ((x & 0x0fff_c000_0fff_c000) << 2);
    let x = (x & 0x007f_007f_007f_007f) | ((x & 0x3f80_3f80_3f80_3f80) << 1);
    let len = (64 - (v | 1).leading_zeros()).div_ceil(7) as usize;
    // Continuation bits on every byte but the last.
    let more = 0x8080_8080_8080_8080 & (u64::MAX >> (64 - 8 * len) >> 8);
    out[..8].copy_from_slice(&(x | more).to_le_bytes());
    len
}

/// The varint at the start of `bytes` and its length; `None` when it is
/// cut short or longer than a u64.
///
/// A varint of up to 8 bytes (56 bits: every timestamp delta and count of
/// a batch) is read from one load, its 7-bit groups gathered in three steps;
/// longer ones, and the last 7 bytes of a slice, byte by byte. One byte (a
/// batch's sample count, most of its deltas) takes one compare.
#[inline]
pub fn get(bytes: &[u8]) -> Option<(u64, usize)> {
    if let Some(&b) = bytes.first().filter(|&&b| b < 0x80) {
        return Some((u64::from(b), 1));
    }
    if let Some(word) = bytes.get(..8) {
        let word = u64::from_le_bytes(word.try_into().expect("8 bytes"));
        let ends = !word & 0x8080_8080_8080_8080;
        if ends != 0 {
            let len = ends.trailing_zeros() / 8 + 1;
            let x = (word & (u64::MAX >> (64 - 8 * len))) & 0x7f7f_7f7f_7f7f_7f7f;
            let x = (x & 0x007f_007f_007f_007f) | ((x & 0x7f00_7f00_7f00_7f00) >> 1);
            let x = (x & 0x0000_3fff_0000_3fff) | ((x & 0x3fff_0000_3fff_0000) >> 2);
            let x = (x & 0x0000_0000_0fff_ffff) | ((x & 0x0fff_ffff_0000_0000) >> 4);
            return Some((x, len as usize));
        }
    }
    get_bytewise(bytes)
}

fn get_bytewise(bytes: &[u8]) -> Option<(u64, usize)> {
    let mut v = 0u64;
    for (i, &b) in bytes.iter().enumerate().take(10) {
        if i == 9 && b > 1 {
            return None;
        }
        v |= ((b & 0x7f) as u64) << (7 * i);
        if b < 0x80 {
            return Some((v, i + 1));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn varints_read_from_one_load_as_byte_by_byte(
            v in prop_oneof![any::<u64>(), 0u64..0x80, 0u64..1 << 14, (0u64..1 << 56).prop_map(|v| v | 1 << 48)],
            junk in any::<[u8; 12]>(),
            raw in any::<[u8; 12]>(),
        ) {
            let mut bytes = Vec::new();
            put(&mut bytes, v);
            let used = bytes.len();
            bytes.extend_from_slice(&junk);
            prop_assert_eq!(get(&bytes), Some((v, used)));
            prop_assert_eq!(get(&bytes[..used]), Some((v, used)));
            prop_assert_eq!(get(&raw), get_bytewise(&raw));
        }

        #[test]
        fn varints_written_at_once_as_appended_byte_by_byte(
            v in prop_oneof![any::<u64>(), 0u64..0x80, 0u64..1 << 14, (0u64..1 << 56).prop_map(|v| v | 1 << 48)],
            shift in 0u32..64,
        ) {
            for v in [v, v >> shift] {
                let mut appended = Vec::new();
                put(&mut appended, v);
                let mut written = [0xAA; 10];
                let n = write(&mut written, v);
                prop_assert_eq!(&written[..n], &appended[..]);
            }
        }

        #[test]
        fn zigzag_round_trips(v in any::<i64>()) {
            prop_assert_eq!(unzigzag(zigzag(v)), v);
            prop_assert!(zigzag(v) <= v.unsigned_abs().saturating_mul(2));
        }
    }
}
