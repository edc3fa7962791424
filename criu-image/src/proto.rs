//! The protobuf subset of CRIU images: messages of varints, length-delimited fields (nested
//! messages, bytes) and fixed-width numbers.

/// One field value of a protobuf message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value<'a> {
    Varint(u64),
    Fixed64(u64),
    Fixed32(u32),
    Bytes(&'a [u8]),
}

/// A protobuf message whose fields all parse (checked once by [`Message::parse`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Message<'a>(&'a [u8]);

impl<'a> Message<'a> {
    /// Checks that `body` is a sequence of well-formed fields (what is wrong if not; callers
    /// say where: [`crate::Entry::message`]).
    pub(crate) fn parse(body: &'a [u8]) -> Result<Self, &'static str> {
        Fields(body).try_for_each(|f| f.map(drop))?;
        Ok(Message(body))
    }

    /// Every field in order, as (field number, value).
    pub fn fields(&self) -> impl Iterator<Item = (u32, Value<'a>)> + 'a {
        // Parsed once already, so no field fails here.
        Fields(self.0).map_while(Result::ok)
    }

    /// Varint field `number`; protobuf: the last occurrence of a scalar field wins.
    pub fn varint(&self, number: u32) -> Option<u64> {
        self.fields().filter_map(|(n, v)| if let (true, Value::Varint(x)) = (n == number, v) { Some(x) } else { None }).last()
    }

    /// The first length-delimited field `number` (a nested message, bytes or a string).
    pub fn bytes(&self, number: u32) -> Option<&'a [u8]> {
        self.fields().find_map(|(n, v)| if let (true, Value::Bytes(b)) = (n == number, v) { Some(b) } else { None })
    }
}

/// Iterates over the fields of a message body; ends after the first error.
struct Fields<'a>(&'a [u8]);

impl<'a> Iterator for Fields<'a> {
    type Item = Result<(u32, Value<'a>), &'static str>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.0.is_empty() {
            return None;
        }
        let field = self.field();
        if field.is_err() {
            self.0 = &[];
        }
        Some(field)
    }
}

impl<'a> Fields<'a> {
    fn field(&mut self) -> Result<(u32, Value<'a>), &'static str> {
        let key = take_varint(&mut self.0).ok_or("bad field key")?;
        let number = u32::try_from(key >> 3).map_err(|_| "bad field key")?;
        let value = match key & 7 {
            0 => Value::Varint(take_varint(&mut self.0).ok_or("bad varint")?),
            1 => Value::Fixed64(u64::from_le_bytes(self.take(8)?.try_into().map_err(|_| "bad fixed64")?)),
            5 => Value::Fixed32(u32::from_le_bytes(self.take(4)?.try_into().map_err(|_| "bad fixed32")?)),
            2 => {
                let len = take_varint(&mut self.0).ok_or("bad length")?;
                Value::Bytes(self.take(usize::try_from(len).unwrap_or(usize::MAX))?)
            }
            _ => return Err("unsupported wire type"),
        };
        Ok((number, value))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], &'static str> {
        if self.0.len() < n {
            return Err("field runs past its entry");
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
}

/// Reads one varint (at most 10 bytes) off the front of `buf`.
fn take_varint(buf: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for i in 0..10 {
        let (&b, rest) = buf.split_first()?;
        *buf = rest;
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// Appends `value` as a protobuf varint.
pub fn push_varint(out: &mut Vec<u8>, mut value: u64) {
    loop {
        let b = (value & 0x7f) as u8;
        value >>= 7;
        out.push(if value == 0 { b } else { b | 0x80 });
        if value == 0 {
            break;
        }
    }
}

/// Appends one image entry (u32 length, then the message) holding the varint `fields`
/// (field number, value) in order.
pub fn push_entry(out: &mut Vec<u8>, fields: &[(u32, u64)]) {
    let mut body = Vec::with_capacity(4 * fields.len());
    for &(number, value) in fields {
        push_varint(&mut body, u64::from(number) << 3);
        push_varint(&mut body, value);
    }
    out.extend((body.len() as u32).to_le_bytes());
    out.extend(body);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip() {
        for v in [0, 1, 127, 128, 300, u32::MAX as u64, u64::MAX] {
            let mut out = Vec::new();
            push_varint(&mut out, v);
            let mut buf = &out[..];
            assert_eq!(take_varint(&mut buf), Some(v));
            assert!(buf.is_empty());
        }
        assert_eq!(take_varint(&mut &[0x80u8; 11][..]), None, "longer than 10 bytes");
        assert_eq!(take_varint(&mut &[0x80u8][..]), None, "cut short");
    }

    #[test]
    fn reads_every_wire_type() {
        // 1: varint 150, 2: bytes "ab", 3: fixed64 7, 4: fixed32 9, 1 again: varint 5.
        let mut body = vec![0x08, 0x96, 0x01, 0x12, 2, b'a', b'b', 0x19];
        body.extend(7u64.to_le_bytes());
        body.push(0x25);
        body.extend(9u32.to_le_bytes());
        body.extend([0x08, 5]);
        let m = Message::parse(&body).unwrap();
        assert_eq!(m.varint(1), Some(5), "the last occurrence wins");
        assert_eq!(m.bytes(2), Some(&b"ab"[..]));
        assert_eq!(m.varint(2), None);
        assert_eq!(m.fields().nth(2), Some((3, Value::Fixed64(7))));
        assert_eq!(m.fields().nth(3), Some((4, Value::Fixed32(9))));
        assert_eq!(Message::parse(&[0x12, 5, 1]), Err("field runs past its entry"));
        assert_eq!(Message::parse(&[0x0b]), Err("unsupported wire type"));
    }

    #[test]
    fn entries_encode_varint_fields() {
        let mut out = Vec::new();
        push_entry(&mut out, &[(1, 300), (20, 1)]);
        assert_eq!(out, [6, 0, 0, 0, 0x08, 0xac, 0x02, 0xa0, 0x01, 1]);
    }
}
