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
}
