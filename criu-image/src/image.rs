//! An image file: magic words, then entries of a u32 length and that many bytes of protobuf.

use crate::proto::Message;
use crate::{FormatError, IMG_COMMON_MAGIC, IMG_SERVICE_MAGIC};

/// An image file whose magic was checked; its entries are read as they are iterated.
#[derive(Debug, Clone, Copy)]
pub struct Image<'a> {
    bytes: &'a [u8],
    /// Bytes of magic before the first entry (4, or 8 with a set magic).
    header_len: usize,
}

/// One entry of an image file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry<'a> {
    /// Where the entry's body starts in the file.
    pub offset: usize,
    pub body: &'a [u8],
}

impl<'a> Entry<'a> {
    /// The entry as a protobuf message.
    pub fn message(&self) -> Result<Message<'a>, FormatError> {
        Message::parse(self.body).map_err(|what| FormatError::Protobuf { at: self.offset, what })
    }

    /// A length-delimited field of this entry as a message of its own.
    pub fn nested(&self, number: u32) -> Result<Option<Message<'a>>, FormatError> {
        let at = self.offset;
        self.message()?.bytes(number).map(|b| Message::parse(b).map_err(|what| FormatError::Protobuf { at, what })).transpose()
    }
}

fn read_u32(bytes: &[u8], at: usize) -> Result<u32, FormatError> {
    let b = bytes.get(at..at.saturating_add(4)).ok_or(FormatError::Truncated(at))?;
    Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

impl<'a> Image<'a> {
    /// Checks that `bytes` is an image of kind `magic` (after an optional set magic).
    pub fn parse(bytes: &'a [u8], magic: u32) -> Result<Self, FormatError> {
        let first = read_u32(bytes, 0)?;
        let (found, header_len) = if first == IMG_COMMON_MAGIC || first == IMG_SERVICE_MAGIC { (read_u32(bytes, 4)?, 8) } else { (first, 4) };
        if found != magic {
            return Err(FormatError::BadMagic { expected: magic, found });
        }
        Ok(Image { bytes, header_len })
    }

    pub fn entries(&self) -> Entries<'a> {
        Entries { bytes: self.bytes, at: self.header_len }
    }

    /// The first entry (the head of a pagemap, the only one of an inventory).
    pub fn first_entry(&self) -> Result<Entry<'a>, FormatError> {
        self.entries().next().unwrap_or(Err(FormatError::NoEntries))
    }

    /// The magic words and the first `n` entries, byte for byte as they are in the file.
    pub fn leading(&self, n: usize) -> Result<&'a [u8], FormatError> {
        let mut end = self.header_len;
        for entry in self.entries().take(n) {
            let entry = entry?;
            end = entry.offset + entry.body.len();
        }
        Ok(&self.bytes[..end])
    }
}

/// The entries of an [`Image`], in file order; ends after the first error.
#[derive(Debug, Clone)]
pub struct Entries<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Iterator for Entries<'a> {
    type Item = Result<Entry<'a>, FormatError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.at >= self.bytes.len() {
            return None;
        }
        let entry = read_u32(self.bytes, self.at).and_then(|len| {
            let offset = self.at + 4;
            let body = self.bytes.get(offset..offset.saturating_add(len as usize)).ok_or(FormatError::Truncated(offset))?;
            Ok(Entry { offset, body })
        });
        self.at = match &entry {
            Ok(e) => e.offset + e.body.len(),
            Err(_) => self.bytes.len(),
        };
        Some(entry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{push_entry, INVENTORY_MAGIC, PAGEMAP_MAGIC};

    #[test]
    fn entries_follow_either_header() {
        for header in [vec![IMG_COMMON_MAGIC, INVENTORY_MAGIC], vec![INVENTORY_MAGIC]] {
            let mut bytes: Vec<u8> = header.iter().flat_map(|m| m.to_le_bytes()).collect();
            push_entry(&mut bytes, &[(1, 2)]);
            push_entry(&mut bytes, &[(3, 4)]);
            let image = Image::parse(&bytes, INVENTORY_MAGIC).unwrap();
            let entries: Vec<_> = image.entries().map(|e| e.unwrap().message().unwrap().fields().collect::<Vec<_>>()).collect();
            assert_eq!(entries.len(), 2);
            assert_eq!(image.first_entry().unwrap().message().unwrap().varint(1), Some(2));
            assert_eq!(image.leading(1).unwrap(), &bytes[..header.len() * 4 + 6]);
            assert_eq!(image.leading(0).unwrap(), &bytes[..header.len() * 4]);
            assert_eq!(Image::parse(&bytes, PAGEMAP_MAGIC).unwrap_err(), FormatError::BadMagic { expected: PAGEMAP_MAGIC, found: INVENTORY_MAGIC });
        }
    }

    #[test]
    fn torn_entries_are_errors() {
        let mut bytes = [IMG_COMMON_MAGIC, INVENTORY_MAGIC].iter().flat_map(|m| m.to_le_bytes()).collect::<Vec<u8>>();
        assert_eq!(Image::parse(&bytes, INVENTORY_MAGIC).unwrap().first_entry(), Err(FormatError::NoEntries));
        bytes.extend([9, 0, 0, 0, 1]);
        let image = Image::parse(&bytes, INVENTORY_MAGIC).unwrap();
        assert_eq!(image.entries().collect::<Vec<_>>(), vec![Err(FormatError::Truncated(12))]);
        assert_eq!(Image::parse(&bytes[..6], INVENTORY_MAGIC).unwrap_err(), FormatError::Truncated(4));
        assert_eq!(Image::parse(&[], INVENTORY_MAGIC).unwrap_err(), FormatError::Truncated(0));
    }
}
