//! A lookup's answer written straight in the protocol's wire format (`LookupResponse` of
//! `proto/engram/store/v1/store.proto`), so that its rows are gathered once, directly into
//! the bytes that are sent, instead of being copied into a message and serialised again.
//!
//! Protobuf readers accept fields in any order: the header fields come first and the rows
//! (the last field of the nested `Array`) end the message.

/// Field numbers of `LookupResponse` and of `Array`.
const OFFSET: u32 = 1;
const TOTAL_ROWS: u32 = 2;
const ROWS: u32 = 3;
const RESULT_SHAPE: u32 = 4;
const ARRAY_DTYPE: u32 = 1;
const ARRAY_SHAPE: u32 = 2;
const ARRAY_DATA: u32 = 3;

use crate::error::{Error, Result};

const VARINT: u32 = 0;
const LENGTH_DELIMITED: u32 = 2;

/// The fields of one chunk of a lookup's answer, besides the rows' bytes.
pub struct LookupChunk<'a> {
    pub offset: u64,
    pub total_rows: u64,
    pub dtype: &'a str,
    /// `[rows in this chunk, dim]`.
    pub shape: [u64; 2],
    /// The whole answer's shape, on the first chunk only (empty otherwise).
    pub result_shape: &'a [i64],
}

fn varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn tag(out: &mut Vec<u8>, field: u32, wire_type: u32) {
    varint(out, u64::from((field << 3) | wire_type));
}

fn packed(values: impl Iterator<Item = u64>) -> Vec<u8> {
    let mut out = Vec::new();
    for v in values {
        varint(&mut out, v);
    }
    out
}

fn bytes_field(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    tag(out, field, LENGTH_DELIMITED);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

impl LookupChunk<'_> {
    /// Everything of the message before the rows' `data_len` bytes, which end it.
    pub fn prefix(&self, data_len: usize) -> Vec<u8> {
        let mut array = Vec::new();
        bytes_field(&mut array, ARRAY_DTYPE, self.dtype.as_bytes());
        bytes_field(&mut array, ARRAY_SHAPE, &packed(self.shape.iter().copied()));
        tag(&mut array, ARRAY_DATA, LENGTH_DELIMITED);
        varint(&mut array, data_len as u64);

        let mut out = Vec::with_capacity(array.len() + 64);
        if self.offset != 0 {
            tag(&mut out, OFFSET, VARINT);
            varint(&mut out, self.offset);
        }
        if self.total_rows != 0 {
            tag(&mut out, TOTAL_ROWS, VARINT);
            varint(&mut out, self.total_rows);
        }
        if !self.result_shape.is_empty() {
            // int64 values: two's complement as a 64-bit varint (shapes are never negative).
            let shape = packed(self.result_shape.iter().map(|&d| d as u64));
            bytes_field(&mut out, RESULT_SHAPE, &shape);
        }
        tag(&mut out, ROWS, LENGTH_DELIMITED);
        varint(&mut out, (array.len() + data_len) as u64);
        out.extend_from_slice(&array);
        out
    }
}

/// A `LookupResponse` read back, its rows left where they are: `data` is the byte range of
/// the rows in the message (so a client can view them without copying).
#[derive(Debug, Default, PartialEq)]
pub struct ParsedChunk {
    pub offset: u64,
    pub total_rows: u64,
    pub dtype: String,
    pub shape: Vec<u64>,
    pub result_shape: Vec<i64>,
    pub in_shared_buffer: bool,
    pub data: std::ops::Range<usize>,
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *self.bytes.get(self.at).ok_or_else(truncated)?;
            self.at += 1;
            value |= u64::from(byte & 0x7F) << shift;
            if byte < 0x80 {
                return Ok(value);
            }
        }
        Err(Error::invalid("a varint longer than 10 bytes"))
    }

    fn slice(&mut self) -> Result<std::ops::Range<usize>> {
        let len = usize::try_from(self.varint()?).map_err(|_| truncated())?;
        let end = self.at.checked_add(len).ok_or_else(truncated)?;
        if end > self.bytes.len() {
            return Err(truncated());
        }
        let range = self.at..end;
        self.at = end;
        Ok(range)
    }

    /// Each field as (number, wire type, value: a varint or a byte range).
    fn fields(
        mut self,
        mut each: impl FnMut(u32, u64, std::ops::Range<usize>) -> Result<()>,
    ) -> Result<()> {
        while self.at < self.bytes.len() {
            let key = self.varint()?;
            let (field, wire_type) = ((key >> 3) as u32, (key & 7) as u32);
            match wire_type {
                VARINT => each(field, self.varint()?, 0..0)?,
                LENGTH_DELIMITED => {
                    let range = self.slice()?;
                    each(field, 0, range)?
                }
                1 | 5 => {
                    let width = if wire_type == 1 { 8 } else { 4 };
                    self.at += width;
                    if self.at > self.bytes.len() {
                        return Err(truncated());
                    }
                }
                other => return Err(Error::invalid(format!("unsupported wire type {other}"))),
            }
        }
        Ok(())
    }
}

fn truncated() -> Error {
    Error::invalid("a truncated LookupResponse")
}

fn packed_varints(bytes: &[u8]) -> Result<Vec<u64>> {
    let mut reader = Reader { bytes, at: 0 };
    let mut out = Vec::new();
    while reader.at < bytes.len() {
        out.push(reader.varint()?);
    }
    Ok(out)
}

/// Reads a `LookupResponse`, leaving its rows in place.
pub fn parse_lookup_chunk(bytes: &[u8]) -> Result<ParsedChunk> {
    let mut chunk = ParsedChunk::default();
    Reader { bytes, at: 0 }.fields(|field, value, range| {
        match field {
            OFFSET => chunk.offset = value,
            TOTAL_ROWS => chunk.total_rows = value,
            RESULT_SHAPE => {
                chunk.result_shape = packed_varints(&bytes[range])?
                    .into_iter()
                    .map(|v| v as i64)
                    .collect()
            }
            5 => chunk.in_shared_buffer = value != 0,
            ROWS => {
                let base = range.start;
                Reader {
                    bytes: &bytes[range],
                    at: 0,
                }
                .fields(|field, _, inner| {
                    let inner = inner.start + base..inner.end + base;
                    match field {
                        ARRAY_DTYPE => {
                            chunk.dtype = String::from_utf8_lossy(&bytes[inner]).into_owned()
                        }
                        ARRAY_SHAPE => chunk.shape = packed_varints(&bytes[inner])?,
                        ARRAY_DATA => chunk.data = inner,
                        _ => {}
                    }
                    Ok(())
                })?
            }
            _ => {}
        }
        Ok(())
    })?;
    Ok(chunk)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_are_little_endian_groups_of_seven_bits() {
        let mut out = Vec::new();
        varint(&mut out, 300);
        assert_eq!(out, [0xAC, 0x02]);
        out.clear();
        varint(&mut out, 0);
        assert_eq!(out, [0]);
    }

    #[test]
    fn a_chunk_prefix_ends_with_the_data_field_header() {
        let chunk = LookupChunk {
            offset: 0,
            total_rows: 2,
            dtype: "float32",
            shape: [2, 3],
            result_shape: &[2, 3],
        };
        let prefix = chunk.prefix(24);
        // total_rows = 2
        assert_eq!(&prefix[..2], &[0x10, 2]);
        // result_shape: field 4, 2 bytes, [2, 3]
        assert_eq!(&prefix[2..6], &[0x22, 2, 2, 3]);
        // rows: field 3, then the Array, whose data field (3) announces 24 bytes at the end
        assert_eq!(prefix[6], 0x1A);
        assert_eq!(&prefix[prefix.len() - 2..], &[0x1A, 24]);
        let array_len = prefix.len() - 8 + 24;
        assert_eq!(prefix[7] as usize, array_len);
    }

    #[test]
    fn an_encoded_chunk_parses_back_with_its_rows_in_place() {
        let chunk = LookupChunk {
            offset: 300,
            total_rows: 1000,
            dtype: "bfloat16",
            shape: [2, 3],
            result_shape: &[10, 100, 3],
        };
        let rows: Vec<u8> = (0..12).collect();
        let mut message = chunk.prefix(rows.len());
        message.extend_from_slice(&rows);
        let parsed = parse_lookup_chunk(&message).unwrap();
        assert_eq!(parsed.offset, 300);
        assert_eq!(parsed.total_rows, 1000);
        assert_eq!(parsed.dtype, "bfloat16");
        assert_eq!(parsed.shape, vec![2, 3]);
        assert_eq!(parsed.result_shape, vec![10, 100, 3]);
        assert_eq!(&message[parsed.data], &rows[..]);
        assert!(parse_lookup_chunk(&message[..message.len() - 1]).is_err());
    }
}
