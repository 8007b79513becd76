//! The table file format, version 1.
//!
//! ```text
//! offset 0     header (HEADER_LEN bytes reserved)
//! data_offset  row data: num_rows x dim elements of dtype, little-endian, row-major
//! bitmap_off   written bitmap: bit (r % 8) of byte (r / 8) is set once row r is stored
//! dirty_off    dirty bitmap, same shape: set when row r is stored, cleared by checkpoints
//! ```
//! Header fields, little-endian: magic `ENGRMTBL` (8 bytes), format version u32, dtype code
//! u32, num_rows u64, dim u64, initializer code u32, group size u32, initializer parameter
//! f64 (normal: std; constant: the value), init seed u64, data_offset u64, bitmap_offset u64,
//! file length u64, dirty_offset u64, first_row u64, then the CRC-32 of all of the above
//! (u32).
//! Dtype codes: 1 float32, 2 bfloat16, 3 float16 (row = dim values), 4 fp8_e4m3, 5 int8
//! (quantized: row = dim one-byte values, then one scale per group of `group size` values,
//! an E8M0 byte or a float32; see `quant.rs`). The group size is 0 for float dtypes and 32
//! for quantized ones; a row's size in bytes follows from dtype, dim and group size.
//! Data and bitmap start on page boundaries. The file is created sparse, so neither time nor
//! disk grows with the table size until rows are written. A row whose bit is clear has never
//! been stored and reads as its initializer's value.

use crate::codec::DType;
use crate::error::{Error, Result};
use crate::init::Initializer;
use std::path::Path;

pub const MAGIC: [u8; 8] = *b"ENGRMTBL";
pub const FORMAT_VERSION: u32 = 1;
pub const HEADER_LEN: u64 = 4096;
const PAGE: u64 = 4096;
/// Bytes of the header covered by the checksum; the CRC-32 follows them.
const CHECKSUMMED_LEN: usize = 96;

const INIT_ZEROS: u32 = 0;
const INIT_NORMAL: u32 = 1;
const INIT_CONSTANT: u32 = 2;

#[derive(Clone, Debug, PartialEq)]
pub struct Header {
    pub dtype: DType,
    pub num_rows: u64,
    pub dim: u64,
    pub init: Initializer,
    /// The global index of this file's row 0, which the initializer draws from: the shards of
    /// a table split across daemons hold the same initial values as one whole table would.
    pub first_row: u64,
}

/// Where each region lives, derived from the shape alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub row_bytes: u64,
    pub data_offset: u64,
    pub bitmap_offset: u64,
    pub dirty_offset: u64,
    pub file_len: u64,
}

fn round_up(value: u64, to: u64) -> Option<u64> {
    value.checked_add(to - 1).map(|v| v / to * to)
}

impl Header {
    pub fn layout(&self) -> Result<Layout> {
        if self.num_rows.checked_add(self.first_row).is_none() {
            return Err(Error::invalid(format!(
                "first_row {} + num_rows {} overflows",
                self.first_row, self.num_rows
            )));
        }
        let overflow = || {
            Error::invalid(format!(
                "table of {} rows x {} {} does not fit a 64-bit file",
                self.num_rows,
                self.dim,
                self.dtype.name()
            ))
        };
        let dim = usize::try_from(self.dim).map_err(|_| overflow())?;
        let row_bytes = dim
            .checked_mul(4)
            .map(|_| self.dtype.row_bytes(dim) as u64)
            .ok_or_else(overflow)?;
        let data_bytes = self.num_rows.checked_mul(row_bytes).ok_or_else(overflow)?;
        let bitmap_offset = HEADER_LEN
            .checked_add(data_bytes)
            .and_then(|end| round_up(end, PAGE))
            .ok_or_else(overflow)?;
        let bitmap_len = round_up(self.num_rows.div_ceil(8), PAGE).ok_or_else(overflow)?;
        let dirty_offset = bitmap_offset.checked_add(bitmap_len).ok_or_else(overflow)?;
        let file_len = dirty_offset.checked_add(bitmap_len).ok_or_else(overflow)?;
        // mmap lengths are usize, and file sizes and offsets the kernel's signed off_t.
        usize::try_from(file_len).map_err(|_| overflow())?;
        i64::try_from(file_len).map_err(|_| overflow())?;
        Ok(Layout {
            row_bytes,
            data_offset: HEADER_LEN,
            bitmap_offset,
            dirty_offset,
            file_len,
        })
    }

    pub fn validate(&self) -> Result<Layout> {
        if self.num_rows == 0 {
            return Err(Error::invalid("num_rows must be positive, got 0"));
        }
        if self.dim == 0 {
            return Err(Error::invalid("dim must be positive, got 0"));
        }
        self.dtype.check_dim(self.dim)?;
        self.layout()
    }

    pub fn encode(&self) -> Vec<u8> {
        let layout = self
            .layout()
            .expect("encode is only called on validated headers");
        let (init_kind, param, seed) = match self.init {
            Initializer::Zeros => (INIT_ZEROS, 0.0, 0),
            Initializer::Normal { std, seed } => (INIT_NORMAL, std, seed),
            Initializer::Constant(value) => (INIT_CONSTANT, f64::from(value), 0),
        };
        let mut buf = Vec::with_capacity(HEADER_LEN as usize);
        buf.extend_from_slice(&MAGIC);
        buf.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        buf.extend_from_slice(&self.dtype.code().to_le_bytes());
        buf.extend_from_slice(&self.num_rows.to_le_bytes());
        buf.extend_from_slice(&self.dim.to_le_bytes());
        buf.extend_from_slice(&init_kind.to_le_bytes());
        buf.extend_from_slice(&(self.dtype.group_size() as u32).to_le_bytes());
        buf.extend_from_slice(&param.to_le_bytes());
        buf.extend_from_slice(&seed.to_le_bytes());
        buf.extend_from_slice(&layout.data_offset.to_le_bytes());
        buf.extend_from_slice(&layout.bitmap_offset.to_le_bytes());
        buf.extend_from_slice(&layout.file_len.to_le_bytes());
        buf.extend_from_slice(&layout.dirty_offset.to_le_bytes());
        buf.extend_from_slice(&self.first_row.to_le_bytes());
        debug_assert_eq!(buf.len(), CHECKSUMMED_LEN);
        let crc = crc32fast::hash(&buf);
        buf.extend_from_slice(&crc.to_le_bytes());
        buf.resize(HEADER_LEN as usize, 0);
        buf
    }

    /// Parses and checks a header read from `path`, whose actual length is `file_len`.
    pub fn decode(path: &Path, bytes: &[u8], file_len: u64) -> Result<(Header, Layout)> {
        let bad = |reason: String| Error::format(path, reason);
        if bytes.len() < CHECKSUMMED_LEN + 4 {
            return Err(bad(format!(
                "file is {} bytes, too short for a table header",
                bytes.len()
            )));
        }
        if bytes[..8] != MAGIC {
            return Err(bad("not an Engram Store table (bad magic)".into()));
        }
        let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().unwrap());
        let u64_at = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().unwrap());
        let version = u32_at(8);
        if version != FORMAT_VERSION {
            return Err(bad(format!(
                "unsupported table format version {version} (this build reads version {FORMAT_VERSION})"
            )));
        }
        let stored_crc = u32_at(CHECKSUMMED_LEN);
        let crc = crc32fast::hash(&bytes[..CHECKSUMMED_LEN]);
        if crc != stored_crc {
            return Err(bad(format!(
                "header checksum mismatch (stored {stored_crc:#010x}, computed {crc:#010x})"
            )));
        }
        let dtype = DType::from_code(u32_at(12))
            .ok_or_else(|| bad(format!("unknown dtype code {}", u32_at(12))))?;
        if u32_at(36) as usize != dtype.group_size() {
            return Err(bad(format!(
                "group size {} does not match dtype {} (expected {})",
                u32_at(36),
                dtype.name(),
                dtype.group_size()
            )));
        }
        let param = f64::from_le_bytes(bytes[40..48].try_into().unwrap());
        let init = match u32_at(32) {
            INIT_ZEROS => Initializer::Zeros,
            INIT_NORMAL => Initializer::normal(param, u64_at(48))
                .map_err(|e| bad(format!("bad initializer: {e}")))?,
            INIT_CONSTANT => Initializer::Constant(param as f32),
            other => return Err(bad(format!("unknown initializer code {other}"))),
        };
        let header = Header {
            dtype,
            num_rows: u64_at(16),
            dim: u64_at(24),
            init,
            first_row: u64_at(88),
        };
        let layout = header
            .validate()
            .map_err(|e| bad(format!("bad shape: {e}")))?;
        let recorded = (u64_at(56), u64_at(64), u64_at(72), u64_at(80));
        let expected = (
            layout.data_offset,
            layout.bitmap_offset,
            layout.file_len,
            layout.dirty_offset,
        );
        if recorded != expected {
            return Err(bad(format!(
                "recorded layout {recorded:?} disagrees with the shape {}x{}",
                header.num_rows, header.dim
            )));
        }
        if file_len != layout.file_len {
            return Err(bad(format!(
                "file is {file_len} bytes but a {}x{} {} table needs {} (truncated or extended)",
                header.num_rows,
                header.dim,
                dtype.name(),
                layout.file_len
            )));
        }
        Ok((header, layout))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Header {
        Header {
            dtype: DType::BF16,
            num_rows: 1000,
            dim: 48,
            init: Initializer::normal(0.02, 9).unwrap(),
            first_row: 123,
        }
    }

    #[test]
    fn encode_decode_round_trip() {
        let h = header();
        let layout = h.validate().unwrap();
        let bytes = h.encode();
        assert_eq!(bytes.len() as u64, HEADER_LEN);
        let (back, back_layout) = Header::decode(Path::new("t"), &bytes, layout.file_len).unwrap();
        assert_eq!(back, h);
        assert_eq!(back_layout, layout);
    }

    #[test]
    fn layout_is_page_aligned_and_covers_the_rows() {
        let layout = header().validate().unwrap();
        assert_eq!(layout.row_bytes, 96);
        assert_eq!(layout.bitmap_offset % PAGE, 0);
        assert!(layout.bitmap_offset >= HEADER_LEN + 96 * 1000);
        assert_eq!(layout.dirty_offset, layout.bitmap_offset + PAGE);
        assert_eq!(layout.file_len, layout.dirty_offset + PAGE);
    }

    #[test]
    fn every_corruption_is_detected() {
        let h = header();
        let len = h.validate().unwrap().file_len;
        let good = h.encode();
        let check = |bytes: &[u8], file_len: u64, needle: &str| {
            let err = Header::decode(Path::new("t"), bytes, file_len)
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{err} lacks {needle}");
        };
        let mut bad_magic = good.clone();
        bad_magic[0] ^= 1;
        check(&bad_magic, len, "bad magic");
        let mut bad_version = good.clone();
        bad_version[8] = 2;
        check(&bad_version, len, "version 2");
        for offset in [12usize, 16, 24, 40, 52, 60, 84, 90] {
            let mut flipped = good.clone();
            flipped[offset] ^= 0x10;
            check(&flipped, len, "checksum mismatch");
        }
        check(&good, len - 4096, "truncated");
        check(&good, len + 1, "truncated or extended");
        check(&good[..20], len, "too short");
    }

    #[test]
    fn impossible_shapes_are_rejected() {
        let mut h = header();
        h.num_rows = 0;
        assert!(h.validate().is_err());
        h.num_rows = u64::MAX / 2;
        assert!(h
            .validate()
            .unwrap_err()
            .to_string()
            .contains("does not fit"));
        // 2^63 bytes of rows: fits a u64 but not the kernel's signed file offsets.
        h.num_rows = 1 << 53;
        h.dim = 512;
        assert!(h
            .validate()
            .unwrap_err()
            .to_string()
            .contains("does not fit"));
        h.num_rows = 10;
        h.dim = 0;
        assert!(h.validate().is_err());
    }
}
