//! Row dtypes and conversions. Rows are stored little-endian; float32 is the arithmetic
//! type (optimizers and initializers work in it), bfloat16 and float16 halve the storage,
//! and the quantized dtypes (`fp8_e4m3`, `int8`: see [`crate::quant`]) serve imported
//! tables in a quarter of it. Conversions round to nearest even, as PyTorch and numpy do.
//! Float dtypes convert any run of values; a quantized row carries its group scales after
//! its values, so quantized conversions take one whole row at a time.

use crate::error::{Error, Result};
use crate::quant;
use half::{bf16, f16};
use rayon::prelude::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    BF16,
    F16,
    Fp8E4M3,
    Int8,
}

impl DType {
    pub const ALL: [DType; 5] = [
        DType::F32,
        DType::BF16,
        DType::F16,
        DType::Fp8E4M3,
        DType::Int8,
    ];
    pub const FLOATS: [DType; 3] = [DType::F32, DType::BF16, DType::F16];

    pub fn is_quantized(self) -> bool {
        matches!(self, DType::Fp8E4M3 | DType::Int8)
    }

    /// Bytes of one row of `dim` values (for quantized dtypes, values then group scales).
    pub fn row_bytes(self, dim: usize) -> usize {
        match self {
            DType::F32 => dim * 4,
            DType::BF16 | DType::F16 => dim * 2,
            DType::Fp8E4M3 => quant::packed_bytes(dim, 1),
            DType::Int8 => quant::packed_bytes(dim, 4),
        }
    }

    /// Values per scale: 0 for float dtypes.
    pub fn group_size(self) -> usize {
        if self.is_quantized() {
            quant::GROUP
        } else {
            0
        }
    }

    /// Fails unless rows of `dim` values can have this dtype (whole groups when quantized).
    pub fn check_dim(self, dim: u64) -> Result<()> {
        let group = self.group_size() as u64;
        if group != 0 && !dim.is_multiple_of(group) {
            return Err(Error::invalid(format!(
                "{} rows hold whole groups of {group} values: dim must be a multiple of \
                 {group}, got {dim}",
                self.name()
            )));
        }
        Ok(())
    }

    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "float32",
            DType::BF16 => "bfloat16",
            DType::F16 => "float16",
            DType::Fp8E4M3 => "fp8_e4m3",
            DType::Int8 => "int8",
        }
    }

    pub fn parse(name: &str) -> Result<Self> {
        DType::ALL
            .into_iter()
            .find(|d| d.name() == name)
            .ok_or_else(|| {
                Error::invalid(format!(
                    "dtype must be one of float32, bfloat16, float16, fp8_e4m3, int8; got \
                     {name:?}"
                ))
            })
    }

    /// A float dtype (what gradients travel as).
    pub fn parse_float(name: &str) -> Result<Self> {
        DType::FLOATS
            .into_iter()
            .find(|d| d.name() == name)
            .ok_or_else(|| {
                Error::invalid(format!(
                    "dtype must be one of float32, bfloat16, float16; got {name:?}"
                ))
            })
    }

    /// The code stored in table file headers.
    pub fn code(self) -> u32 {
        match self {
            DType::F32 => 1,
            DType::BF16 => 2,
            DType::F16 => 3,
            DType::Fp8E4M3 => 4,
            DType::Int8 => 5,
        }
    }

    pub fn from_code(code: u32) -> Option<Self> {
        DType::ALL.into_iter().find(|d| d.code() == code)
    }
}

/// Encodes float32 values as `dtype` bytes (`dst.len() == dtype.row_bytes(src.len())`);
/// a quantized dtype takes exactly one row.
pub fn encode_f32(dtype: DType, src: &[f32], dst: &mut [u8]) {
    debug_assert_eq!(dst.len(), dtype.row_bytes(src.len()));
    match dtype {
        DType::F32 => {
            for (d, s) in dst.chunks_exact_mut(4).zip(src) {
                d.copy_from_slice(&s.to_le_bytes());
            }
        }
        DType::BF16 => {
            for (d, s) in dst.chunks_exact_mut(2).zip(src) {
                d.copy_from_slice(&bf16::from_f32(*s).to_le_bytes());
            }
        }
        DType::F16 => {
            for (d, s) in dst.chunks_exact_mut(2).zip(src) {
                d.copy_from_slice(&f16::from_f32(*s).to_le_bytes());
            }
        }
        DType::Fp8E4M3 => quant::f32_to_fp8_row(src, dst),
        DType::Int8 => quant::f32_to_int8_row(src, dst),
    }
}

/// Decodes `dtype` bytes into float32 values (`src.len() == dtype.row_bytes(dst.len())`);
/// a quantized dtype takes exactly one row.
pub fn decode_to_f32(dtype: DType, src: &[u8], dst: &mut [f32]) {
    debug_assert_eq!(src.len(), dtype.row_bytes(dst.len()));
    match dtype {
        DType::F32 => {
            for (d, s) in dst.iter_mut().zip(src.chunks_exact(4)) {
                *d = f32::from_le_bytes([s[0], s[1], s[2], s[3]]);
            }
        }
        DType::BF16 => {
            for (d, s) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *d = bf16::from_le_bytes([s[0], s[1]]).to_f32();
            }
        }
        DType::F16 => {
            for (d, s) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *d = f16::from_le_bytes([s[0], s[1]]).to_f32();
            }
        }
        DType::Fp8E4M3 => quant::fp8_row_to_f32(src, dst),
        DType::Int8 => quant::int8_row_to_f32(src, dst),
    }
}

/// Whole rows of `dim` values stored as `dtype` (a quantized row: its values, then its
/// scales) as float32, which holds every one exactly: rows spread over threads.
pub fn rows_to_f32(dtype: DType, dim: usize, src: &[u8], dst: &mut [f32]) -> Result<()> {
    dtype.check_dim(dim as u64)?;
    let row = dtype.row_bytes(dim);
    if row == 0 || !src.len().is_multiple_of(row) || dst.len() != src.len() / row * dim {
        return Err(Error::invalid(format!(
            "{} bytes are not whole {} rows of {dim} values for {} float32 values",
            src.len(),
            dtype.name(),
            dst.len()
        )));
    }
    src.par_chunks(row)
        .zip(dst.par_chunks_mut(dim.max(1)))
        .with_min_len(256)
        .for_each(|(stored, values)| decode_to_f32(dtype, stored, values));
    Ok(())
}

/// Converts one row between dtypes through `scratch` (one float32 per value); a plain copy
/// when they agree. Every float dtype and quantized value is exact in float32.
pub fn convert_row(
    src_dtype: DType,
    src: &[u8],
    dst_dtype: DType,
    dst: &mut [u8],
    scratch: &mut [f32],
) {
    if src_dtype == dst_dtype {
        dst.copy_from_slice(src);
        return;
    }
    if (src_dtype, dst_dtype) == (DType::Fp8E4M3, DType::BF16) {
        // What serving engines read: one pass, no float32 row in between.
        quant::fp8_row_to_bf16(src, dst);
        return;
    }
    decode_to_f32(src_dtype, src, scratch);
    encode_f32(dst_dtype, scratch, dst);
}

/// Unsigned 64-bit keys packed little-endian in `bytes` (a wire payload).
pub fn decode_keys(bytes: &[u8], name: &str) -> Result<Vec<u64>> {
    if !bytes.len().is_multiple_of(8) {
        return Err(Error::invalid(format!(
            "{name} holds {} bytes, not a whole number of 8-byte keys",
            bytes.len()
        )));
    }
    Ok(bytes
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
        .collect())
}

/// Row keys packed little-endian as `dtype`: "uint64", or "int64" (the type numpy and torch
/// index with), whose values must not be negative.
pub fn decode_keys_of(bytes: &[u8], dtype: &str) -> Result<Vec<u64>> {
    let keys = decode_keys(bytes, "keys")?;
    match dtype {
        "uint64" => Ok(keys),
        "int64" => match keys.iter().position(|&k| (k as i64) < 0) {
            None => Ok(keys),
            Some(i) => Err(Error::invalid(format!(
                "keys[{i}] = {} is negative",
                keys[i] as i64
            ))),
        },
        other => Err(Error::invalid(format!(
            "keys must have dtype uint64 or int64, got {other:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_keys_must_not_be_negative() {
        let bytes: Vec<u8> = [3i64, -5].iter().flat_map(|k| k.to_le_bytes()).collect();
        assert_eq!(decode_keys_of(&bytes[..8], "int64").unwrap(), vec![3]);
        let error = decode_keys_of(&bytes, "int64").unwrap_err().to_string();
        assert!(error.contains("keys[1] = -5 is negative"), "{error}");
        assert_eq!(decode_keys_of(&bytes, "uint64").unwrap()[1], (-5i64) as u64);
        assert!(decode_keys_of(&bytes, "float32").is_err());
    }

    #[test]
    fn keys_decode_or_name_the_bad_length() {
        assert_eq!(
            decode_keys(&[1, 0, 0, 0, 0, 0, 0, 0], "keys").unwrap(),
            vec![1]
        );
        assert!(decode_keys(&[1, 2, 3], "keys")
            .unwrap_err()
            .to_string()
            .contains("keys holds 3 bytes"));
    }

    #[test]
    fn names_and_codes_round_trip() {
        for d in DType::ALL {
            assert_eq!(DType::parse(d.name()).unwrap(), d);
            assert_eq!(DType::from_code(d.code()), Some(d));
        }
        assert!(DType::parse("float64").is_err());
        assert_eq!(DType::from_code(0), None);
    }

    #[test]
    fn float32_round_trips_exactly() {
        let values = [0.0f32, -0.0, 1.5, -3.25e-7, f32::MAX, f32::MIN_POSITIVE];
        let mut bytes = vec![0u8; values.len() * 4];
        encode_f32(DType::F32, &values, &mut bytes);
        let mut back = [0f32; 6];
        decode_to_f32(DType::F32, &bytes, &mut back);
        assert_eq!(values, back);
    }

    #[test]
    fn half_types_round_to_nearest_even() {
        // 1 + 2^-8 is exactly half-way between two bfloat16 values: ties go to even (1.0).
        let values = [1.0 + 2f32.powi(-8), 1.0 + 3.0 * 2f32.powi(-8), 65504.0];
        let mut bytes = vec![0u8; 6];
        let mut back = [0f32; 3];
        encode_f32(DType::BF16, &values, &mut bytes);
        decode_to_f32(DType::BF16, &bytes, &mut back);
        assert_eq!(back, [1.0, 1.0 + 4.0 * 2f32.powi(-8), 65536.0]);
        encode_f32(DType::F16, &values, &mut bytes);
        decode_to_f32(DType::F16, &bytes, &mut back);
        // float16 has 10 mantissa bits: both values are exact.
        assert_eq!(back, [values[0], values[1], 65504.0]);
    }

    #[test]
    fn whole_quantized_rows_decode_to_float32_row_by_row() {
        let dim = 64;
        let values: Vec<f32> = (0..3 * dim).map(|i| (i as f32 - 90.0) * 0.37).collect();
        let row = DType::Fp8E4M3.row_bytes(dim);
        let mut packed = vec![0u8; 3 * row];
        for (v, r) in values.chunks(dim).zip(packed.chunks_mut(row)) {
            quant::f32_to_fp8_row(v, r);
        }
        let mut all = vec![0f32; 3 * dim];
        rows_to_f32(DType::Fp8E4M3, dim, &packed, &mut all).unwrap();
        for (r, got) in packed.chunks(row).zip(all.chunks(dim)) {
            let mut one = vec![0f32; dim];
            quant::fp8_row_to_f32(r, &mut one);
            assert_eq!(got, &one[..]);
        }
        assert!(rows_to_f32(DType::Fp8E4M3, dim, &packed[..row + 1], &mut all).is_err());
        assert!(rows_to_f32(DType::Fp8E4M3, 33, &packed, &mut all).is_err());
    }

    #[test]
    fn convert_between_every_pair_agrees_with_float32_path() {
        let values: Vec<f32> = (0..608).map(|i| (i as f32 - 300.0) * 0.37).collect();
        let mut scratch = vec![0f32; values.len()];
        for src in DType::ALL {
            let mut src_bytes = vec![0u8; src.row_bytes(values.len())];
            encode_f32(src, &values, &mut src_bytes);
            let mut exact = vec![0f32; values.len()];
            decode_to_f32(src, &src_bytes, &mut exact);
            for dst in DType::ALL {
                let mut dst_bytes = vec![0u8; dst.row_bytes(values.len())];
                convert_row(src, &src_bytes, dst, &mut dst_bytes, &mut scratch);
                let mut expected = vec![0u8; dst.row_bytes(values.len())];
                if src == dst {
                    // Stored rows are copied, never requantized (requantizing dequantized
                    // values may pick a finer scale).
                    expected.copy_from_slice(&src_bytes);
                } else {
                    encode_f32(dst, &exact, &mut expected);
                }
                assert_eq!(dst_bytes, expected, "{src:?} -> {dst:?}");
            }
        }
    }
}
