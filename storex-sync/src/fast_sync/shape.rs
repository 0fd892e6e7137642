//! The shape of a MessagePack value from a peer, checked before it is decoded: how deeply it
//! nests, how many values it holds, and that it ends where its bytes end.
//!
//! A frame's size is bounded by its transport, but not what it decodes to: a byte on the
//! wire (a `nil` in a JSON array, say) becomes a value of tens of bytes in memory, and every
//! level of nesting a call of the decoder. Walking the encoding first, without allocating,
//! bounds both before anything is built.

/// How deeply a value from a peer may nest: JSON as deep as storex stores it (128 levels, as
/// serde_json parses), inside an object's map and a value's variant.
pub(crate) const MAX_DEPTH: usize = 130;

/// How many values (each scalar, string, array and map counts one) a frame, or the objects
/// of one batch, may decode to: a bound on the memory they take once decoded (a few hundred
/// megabytes at most). Every value takes at least a byte, so a batch of at most this many
/// bytes never holds more; the sender cuts its batches there.
pub(crate) const MAX_VALUES: u64 = 4_000_000;

/// Checks that `bytes` hold exactly one MessagePack value, nesting at most [`MAX_DEPTH`]
/// deep, and takes its values from `budget`; says what is wrong otherwise.
pub(crate) fn check(bytes: &[u8], budget: &mut u64) -> Result<(), String> {
    let mut reader = Reader { bytes, at: 0 };
    // Values still to read in each container open, the outermost first.
    let mut open: Vec<u64> = vec![1];
    while let Some(left) = open.last_mut() {
        if *left == 0 {
            open.pop();
            continue;
        }
        *left -= 1;
        *budget = budget
            .checked_sub(1)
            .ok_or_else(|| format!("more than {MAX_VALUES} values"))?;
        let items = reader.value()?;
        if items > 0 {
            // Each item takes at least a byte: a count beyond what is left cannot be true.
            if items > reader.left() {
                return Err(format!(
                    "a container of {items} items in {} bytes",
                    reader.left()
                ));
            }
            if open.len() > MAX_DEPTH {
                return Err(format!("values nested more than {MAX_DEPTH} deep"));
            }
            open.push(items);
        }
    }
    match reader.left() {
        0 => Ok(()),
        left => Err(format!("{left} bytes after the value")),
    }
}

/// A cursor over MessagePack bytes.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn left(&self) -> u64 {
        (self.bytes.len() - self.at) as u64
    }

    /// The next `n` bytes, as a big-endian number (n ≤ 8).
    fn number(&mut self, n: usize) -> Result<u64, String> {
        let end = self
            .at
            .checked_add(n)
            .filter(|end| *end <= self.bytes.len());
        let end = end.ok_or("truncated")?;
        let value = self.bytes[self.at..end]
            .iter()
            .fold(0u64, |value, byte| (value << 8) | u64::from(*byte));
        self.at = end;
        Ok(value)
    }

    /// Passes over `n` bytes.
    fn skip(&mut self, n: u64) -> Result<(), String> {
        if n > self.left() {
            return Err("truncated".into());
        }
        // At most the bytes left, so it fits a usize.
        self.at += n as usize;
        Ok(())
    }

    /// Reads one value's header and passes over its payload; returns how many values it
    /// contains (a map's keys and values both count).
    fn value(&mut self) -> Result<u64, String> {
        let marker = self.number(1)?;
        let (payload, items) = match marker {
            // Positive and negative fixint, nil, false, true.
            0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => (0, 0),
            0x80..=0x8f => (0, 2 * (marker & 0x0f)),
            0x90..=0x9f => (0, marker & 0x0f),
            0xa0..=0xbf => (marker & 0x1f, 0),
            // bin and str of 8, 16 and 32-bit lengths.
            0xc4 | 0xd9 => (self.number(1)?, 0),
            0xc5 | 0xda => (self.number(2)?, 0),
            0xc6 | 0xdb => (self.number(4)?, 0),
            // ext of 8, 16 and 32-bit lengths, then its type byte.
            0xc7 => (self.number(1)? + 1, 0),
            0xc8 => (self.number(2)? + 1, 0),
            0xc9 => (self.number(4)? + 1, 0),
            0xca => (4, 0),
            0xcb => (8, 0),
            0xcc | 0xd0 => (1, 0),
            0xcd | 0xd1 => (2, 0),
            0xce | 0xd2 => (4, 0),
            0xcf | 0xd3 => (8, 0),
            // fixext 1, 2, 4, 8 and 16, with their type byte.
            0xd4 => (2, 0),
            0xd5 => (3, 0),
            0xd6 => (5, 0),
            0xd7 => (9, 0),
            0xd8 => (17, 0),
            0xdc => (0, self.number(2)?),
            0xdd => (0, self.number(4)?),
            0xde => (0, 2 * self.number(2)?),
            0xdf => (0, 2 * self.number(4)?),
            _ => return Err(format!("byte {marker:#04x} begins no value")),
        };
        self.skip(payload)?;
        Ok(items)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checked(bytes: &[u8]) -> Result<u64, String> {
        let mut budget = MAX_VALUES;
        check(bytes, &mut budget).map(|()| MAX_VALUES - budget)
    }

    #[test]
    fn values_are_counted_and_must_end_with_their_bytes() {
        let encoded = rmp_serde::to_vec_named(
            &storex_core::serde_json::json!({"a": [1, null, "x"], "b": 2.5}),
        )
        .expect("encode");
        // The map, two keys, the array and its three items, 2.5.
        assert_eq!(checked(&encoded), Ok(8));
        let mut longer = encoded.clone();
        longer.push(0xc0);
        assert_eq!(checked(&longer), Err("1 bytes after the value".into()));
        for cut in 0..encoded.len() {
            assert!(checked(&encoded[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn deep_nesting_is_refused() {
        let mut deep = vec![0x91; MAX_DEPTH]; // arrays of one item, each in the one before
        deep.push(0xc0);
        assert_eq!(checked(&deep), Ok(MAX_DEPTH as u64 + 1));
        let mut deeper = vec![0x91; MAX_DEPTH + 1];
        deeper.push(0xc0);
        assert!(checked(&deeper).is_err_and(|e| e.contains("nested more than")));
    }

    #[test]
    fn a_count_beyond_the_bytes_and_a_spent_budget_are_refused() {
        // An array claiming 2^32 - 1 items in 4 bytes.
        let claim = [0xdd, 0xff, 0xff, 0xff, 0xff, 0xc0, 0xc0, 0xc0, 0xc0];
        assert!(checked(&claim).is_err_and(|e| e.contains("items in 4 bytes")));
        // A million nils: a byte each on the wire.
        let mut nils = vec![0xdd, 0x00, 0x0f, 0x42, 0x40];
        nils.extend(std::iter::repeat_n(0xc0, 1_000_000));
        let mut budget = 1_000_000;
        assert!(check(&nils, &mut budget).is_err_and(|e| e.contains("more than")));
        let mut budget = 1_000_001;
        assert_eq!(check(&nils, &mut budget), Ok(()));
        assert_eq!(budget, 0);
    }

    #[test]
    fn the_unused_marker_is_refused() {
        assert!(checked(&[0xc1]).is_err_and(|e| e.contains("0xc1")));
    }
}
