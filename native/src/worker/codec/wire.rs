//! The protobuf wire format, read as upb reads it (upb is the decoder behind Python's protobuf,
//! whose acceptance the worker's answers depend on: what upb refuses is a malformed request).
//!
//! upb's rules, which differ from prost's and are the reason this reader exists:
//! * a varint has at most 10 bytes; bits past the 64th are dropped, not refused;
//! * a tag has at most 5 bytes and fits in 32 bits; field number 0 is refused;
//! * a known field that arrives with another wire type is an unknown field, skipped (prost
//!   refuses it); unknown groups are skipped, their end tag must match; an end-group tag
//!   anywhere else, and wire types 6 and 7, are refused;
//! * a length is below 2^31 - 1 and within the enclosing message;
//! * at most [`MAX_DEPTH`] nested messages or groups;
//! * `string` fields (map keys included) must be UTF-8; packed fixed-width fields must hold
//!   whole values.
//!
//! Nothing is allocated here: a reader is a window `[pos, end)` on the body.

/// The bytes are not a message upb would accept (why is `explain`'s business).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Malformed;

pub type Result<T> = std::result::Result<T, Malformed>;

/// upb's default nesting limit (`kUpb_WireFormat_DefaultDepthLimit`), which Python uses.
pub const MAX_DEPTH: i32 = 100;

/// The value of one field, as its wire type says.
pub enum Value<'a> {
    Varint(u64),
    Fixed64(u64),
    Fixed32(u32),
    /// Length-delimited: a reader on the field's bytes (a submessage is not entered yet).
    Delimited(Reader<'a>),
    /// A group, already skipped (no field Shoal reads is a group).
    Group,
}

/// A window on a message's bytes. `depth` is how many more levels of nesting upb allows.
#[derive(Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    end: usize,
    depth: i32,
}

impl<'a> Reader<'a> {
    /// A reader on a whole top-level message.
    pub fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader {
            buf,
            pos: 0,
            end: buf.len(),
            depth: MAX_DEPTH,
        }
    }

    /// Offsets of the unread bytes in the body.
    pub fn range(&self) -> std::ops::Range<usize> {
        self.pos..self.end
    }

    /// The unread bytes.
    pub fn bytes(&self) -> &'a [u8] {
        self.buf.get(self.pos..self.end).unwrap_or_default()
    }

    pub fn len(&self) -> usize {
        self.end - self.pos
    }

    pub fn is_empty(&self) -> bool {
        self.pos >= self.end
    }

    /// The bytes as a `string` field's value.
    pub fn utf8(&self) -> Result<&'a str> {
        std::str::from_utf8(self.bytes()).map_err(|_| Malformed)
    }

    /// This field's bytes as a submessage: one level deeper.
    pub fn enter(mut self) -> Result<Reader<'a>> {
        self.depth -= 1;
        if self.depth < 0 {
            return Err(Malformed);
        }
        Ok(self)
    }

    fn byte(&mut self) -> Result<u8> {
        if self.pos >= self.end {
            return Err(Malformed);
        }
        let b = self.buf.get(self.pos).copied().ok_or(Malformed)?;
        self.pos += 1;
        Ok(b)
    }

    /// A varint of at most 10 bytes; bits past the 64th are dropped (upb does not refuse them).
    pub fn varint(&mut self) -> Result<u64> {
        let mut value = 0u64;
        for i in 0..10 {
            let b = self.byte()?;
            value |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                return Ok(value);
            }
        }
        Err(Malformed)
    }

    /// A tag: (field number, wire type). At most 5 bytes and 32 bits; field 0 is refused.
    fn tag(&mut self) -> Result<(u32, u8)> {
        let mut value = 0u64;
        for i in 0..5 {
            let b = self.byte()?;
            value |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                let tag = u32::try_from(value).map_err(|_| Malformed)?;
                if tag >> 3 == 0 {
                    return Err(Malformed);
                }
                return Ok((tag >> 3, (tag & 7) as u8));
            }
        }
        Err(Malformed)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.len() < n {
            return Err(Malformed);
        }
        let out = self.buf.get(self.pos..self.pos + n).ok_or(Malformed)?;
        self.pos += n;
        Ok(out)
    }

    pub fn fixed32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn fixed64(&mut self) -> Result<u64> {
        let b = self.take(8)?;
        let mut le = [0u8; 8];
        le.copy_from_slice(b);
        Ok(u64::from_le_bytes(le))
    }

    /// A length-delimited value: its length must be below 2^31 - 1 and fit in what is left.
    fn delimited(&mut self) -> Result<Reader<'a>> {
        let size = self.varint()?;
        if size >= i32::MAX as u64 || size > self.len() as u64 {
            return Err(Malformed);
        }
        let start = self.pos;
        self.pos += size as usize;
        Ok(Reader {
            buf: self.buf,
            pos: start,
            end: self.pos,
            depth: self.depth,
        })
    }

    /// The next field, `None` at the end of the message. An end-group tag is refused: the
    /// messages Shoal reads are never groups (groups are skipped by `skip_group`).
    pub fn field(&mut self) -> Result<Option<(u32, Value<'a>)>> {
        if self.is_empty() {
            return Ok(None);
        }
        let (number, wire) = self.tag()?;
        let value = match wire {
            0 => Value::Varint(self.varint()?),
            1 => Value::Fixed64(self.fixed64()?),
            2 => Value::Delimited(self.delimited()?),
            3 => {
                self.skip_group(number)?;
                Value::Group
            }
            5 => Value::Fixed32(self.fixed32()?),
            _ => return Err(Malformed),
        };
        Ok(Some((number, value)))
    }

    /// Skips a group (every field in it unknown) up to its end tag, which must carry `number`.
    fn skip_group(&mut self, number: u32) -> Result<()> {
        self.depth -= 1;
        if self.depth < 0 {
            return Err(Malformed);
        }
        loop {
            if self.is_empty() {
                return Err(Malformed);
            }
            let (n, wire) = self.tag()?;
            match wire {
                0 => {
                    self.varint()?;
                }
                1 => {
                    self.take(8)?;
                }
                2 => {
                    self.delimited()?;
                }
                3 => self.skip_group(n)?,
                4 if n == number => break,
                5 => {
                    self.take(4)?;
                }
                _ => return Err(Malformed),
            }
        }
        self.depth += 1;
        Ok(())
    }

    /// Counts the varints of a packed field (all of its bytes must be whole varints).
    pub fn packed_varints(mut self) -> Result<u64> {
        let mut n = 0;
        while !self.is_empty() {
            self.varint()?;
            n += 1;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(buf: &[u8]) -> Result<Vec<u32>> {
        let mut r = Reader::new(buf);
        let mut out = vec![];
        while let Some((n, _)) = r.field()? {
            out.push(n);
        }
        Ok(out)
    }

    #[test]
    fn varints_as_upb_reads_them() {
        let mut r = Reader::new(&[0x96, 0x01]);
        assert_eq!(r.varint(), Ok(150));
        // Ten bytes, the last one carrying bits past the 64th: accepted, the bits dropped.
        let ten = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f];
        assert_eq!(Reader::new(&ten).varint(), Ok(u64::MAX));
        // Eleven bytes, or a varint cut short: refused.
        let mut eleven = [0x80u8; 11];
        eleven[10] = 0;
        assert_eq!(Reader::new(&eleven).varint(), Err(Malformed));
        assert_eq!(Reader::new(&[0x80]).varint(), Err(Malformed));
    }

    #[test]
    fn tags_have_at_most_five_bytes_and_a_field_number() {
        // Field 1, varint, the tag padded to five bytes: accepted; to six: refused.
        assert_eq!(fields(&[0x88, 0x80, 0x80, 0x80, 0x00, 0x01]), Ok(vec![1]));
        assert_eq!(
            fields(&[0x88, 0x80, 0x80, 0x80, 0x80, 0x00, 0x01]),
            Err(Malformed)
        );
        // A tag above 32 bits, field number 0, wire types 4, 6 and 7: refused.
        assert_eq!(
            fields(&[0xf8, 0xff, 0xff, 0xff, 0x7f, 0x01]),
            Err(Malformed)
        );
        assert_eq!(fields(&[0x00, 0x01]), Err(Malformed));
        assert_eq!(fields(&[0x0c]), Err(Malformed));
        assert_eq!(fields(&[0x0e, 0x01]), Err(Malformed));
        assert_eq!(fields(&[0x0f, 0x01]), Err(Malformed));
    }

    #[test]
    fn lengths_stay_within_the_message() {
        assert_eq!(
            fields(&[0x0a, 0x02, 0x61, 0x62, 0x10, 0x01]),
            Ok(vec![1, 2])
        );
        assert_eq!(fields(&[0x0a, 0x03, 0x61, 0x62]), Err(Malformed));
        // A claimed length of 2^31 - 1 is refused before anything is read.
        assert_eq!(
            fields(&[0x0a, 0xff, 0xff, 0xff, 0xff, 0x07]),
            Err(Malformed)
        );
        assert_eq!(fields(&[0x0d, 0x01, 0x02, 0x03]), Err(Malformed));
        assert_eq!(
            fields(&[0x09, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07]),
            Err(Malformed)
        );
    }

    #[test]
    fn groups_are_skipped_and_must_close_with_their_own_number() {
        // Group 3 holding a varint and group 4, then field 1.
        let ok = [0x1b, 0x08, 0x01, 0x23, 0x24, 0x1c, 0x08, 0x05];
        assert_eq!(fields(&ok), Ok(vec![3, 1]));
        assert_eq!(fields(&[0x1b, 0x08, 0x01, 0x24]), Err(Malformed));
        assert_eq!(fields(&[0x1b, 0x08, 0x01]), Err(Malformed));
        assert_eq!(fields(&[0x1b]), Err(Malformed));
    }

    #[test]
    fn nesting_is_limited_as_upb_limits_it() {
        let nested = |depth: usize| {
            let mut buf = vec![0x0b; depth];
            buf.extend(std::iter::repeat_n(0x0c, depth));
            buf
        };
        assert_eq!(fields(&nested(100)), Ok(vec![1]));
        assert_eq!(fields(&nested(101)), Err(Malformed));
        // Each submessage entered costs one level too.
        let sub = Reader::new(&[]);
        let mut r = sub.clone();
        for _ in 0..100 {
            r = r.enter().expect("within the limit");
        }
        assert!(r.enter().is_err());
    }

    #[test]
    fn packed_varints_must_be_whole() {
        assert_eq!(Reader::new(&[0x01, 0x96, 0x01]).packed_varints(), Ok(2));
        assert_eq!(Reader::new(&[0x01, 0x96]).packed_varints(), Err(Malformed));
    }
}
