//! Which rows of an Engram layer one engine reader holds, and the key in its file of each
//! hash id an engine asks for (see `client/engram_reader.py`).
//!
//! An engine hands over a step's ids as `[T, heads]` global ids (head offsets included) or
//! per-head local ids; a reader holds a range of whole heads, or a range of global rows,
//! and answers every other id, and every masked position, with a zero row. Building those
//! keys in numpy cost a decode step more than its gather; here it is one pass.

use super::NO_ROW;
use crate::codec::{self, DType};
use crate::error::{Error, Result};
use crate::quant::GROUP;
use std::ops::Range;

/// One reader's share of a layer.
#[derive(Debug, Clone)]
pub struct EngineRows {
    /// The global row each head starts at, and the layer's end (`heads + 1` values).
    head_offsets: Vec<u64>,
    /// The id columns (heads) read, in order.
    columns: Range<usize>,
    /// The global rows the file holds: `rows.start` is its row 0.
    rows: Range<u64>,
    /// Whether ids are per-head local ids (the head's offset is added).
    local_ids: bool,
}

impl EngineRows {
    /// A reader of the heads `columns` (the file holding exactly their rows), or, with
    /// `rows`, of those global rows (the file holding exactly them) for every head.
    pub fn new(
        head_sizes: &[u64],
        columns: Option<Range<usize>>,
        rows: Option<Range<u64>>,
        local_ids: bool,
    ) -> Result<Self> {
        let heads = head_sizes.len();
        let mut head_offsets = Vec::with_capacity(heads + 1);
        let mut total = 0u64;
        head_offsets.push(0);
        for &size in head_sizes {
            total = total
                .checked_add(size)
                .ok_or_else(|| Error::invalid("head sizes overflow 64 bits"))?;
            head_offsets.push(total);
        }
        if heads == 0 {
            return Err(Error::invalid("a layer has at least one head"));
        }
        let (columns, rows) = match (columns, rows) {
            (Some(_), Some(_)) => return Err(Error::invalid("give heads= or rows=, not both")),
            (Some(columns), None) => {
                if columns.is_empty() || columns.end > heads {
                    return Err(Error::invalid(format!(
                        "heads must be a non-empty range within 0..{heads}, got {}..{}",
                        columns.start, columns.end
                    )));
                }
                let rows = head_offsets[columns.start]..head_offsets[columns.end];
                (columns, rows)
            }
            (None, Some(rows)) => {
                if rows.is_empty() || rows.end > total {
                    return Err(Error::invalid(format!(
                        "rows must be a non-empty range within 0..{total}, got {}..{}",
                        rows.start, rows.end
                    )));
                }
                (0..heads, rows)
            }
            (None, None) => (0..heads, 0..total),
        };
        Ok(EngineRows {
            head_offsets,
            columns,
            rows,
            local_ids,
        })
    }

    /// How many rows the reader's file must hold.
    pub fn file_rows(&self) -> u64 {
        self.rows.end - self.rows.start
    }

    /// How many id columns an engine hands over (the layer's heads).
    pub fn heads(&self) -> usize {
        self.head_offsets.len() - 1
    }

    /// The global row the reader's file starts at.
    pub fn first_row(&self) -> u64 {
        self.rows.start
    }

    /// How many heads each position reads (the `heads` of `out[T, heads, D]`).
    pub fn columns_read(&self) -> usize {
        self.columns.len()
    }

    /// The file key of each read `(t, head)` of `ids` (`[T, heads]`, row-major), [`NO_ROW`]
    /// where the file holds none or `mask[t]` is false.
    pub fn keys(&self, ids: &[i64], mask: Option<&[bool]>) -> Result<Vec<u64>> {
        let heads = self.heads();
        if !ids.len().is_multiple_of(heads) {
            return Err(Error::invalid(format!(
                "ids hold {} values, not a whole number of rows of {heads} heads",
                ids.len()
            )));
        }
        let positions = ids.len() / heads;
        if let Some(mask) = mask {
            if mask.len() != positions {
                return Err(Error::invalid(format!(
                    "token_mask holds {} values for {positions} positions",
                    mask.len()
                )));
            }
        }
        let mut keys = Vec::with_capacity(positions * self.columns.len());
        for (t, row) in ids.chunks_exact(heads).enumerate() {
            if mask.is_some_and(|mask| !mask[t]) {
                keys.extend(std::iter::repeat_n(NO_ROW, self.columns.len()));
                continue;
            }
            for column in self.columns.clone() {
                keys.push(self.key(column, row[column]));
            }
        }
        Ok(keys)
    }

    fn key(&self, column: usize, id: i64) -> u64 {
        let Ok(id) = u64::try_from(id) else {
            return NO_ROW;
        };
        let global = match self.local_ids {
            // A local id past its head's size is not a row of that head.
            true if id >= self.head_offsets[column + 1] - self.head_offsets[column] => {
                return NO_ROW
            }
            true => self.head_offsets[column] + id,
            false => id,
        };
        if self.rows.contains(&global) {
            global - self.rows.start
        } else {
            NO_ROW
        }
    }
}

/// Zeroes each group of an output row (`group_bytes` of it per 32 values) whose E8M0 scale
/// byte is 0: vLLM's decoding of that byte, where torch's reads 2^-127.
pub(crate) fn zero_groups_of_zero_scales(row: &mut [u8], scales: &[u8], group_bytes: usize) {
    for (group, &scale) in row.chunks_exact_mut(group_bytes).zip(scales) {
        if scale == 0 {
            group.fill(0);
        }
    }
}

/// Refuses an engine's output dtype that is not a float dtype.
pub(crate) fn check_engine_dtype(out_dtype: DType) -> Result<()> {
    if out_dtype.is_quantized() {
        return Err(Error::invalid("an engine's rows are read as a float dtype"));
    }
    Ok(())
}

/// An engine's rows from rows fetched as stored (`stored`, `dim` values a row; a daemon's
/// answer): `out` gets, for each of `keys`, a zero row where the key is [`NO_ROW`], and
/// otherwise the next row of `fetched` as `out_dtype`, FP8 groups with a 0 scale byte as
/// zeros with `zero_byte_scales` (see [`super::Table::gather_engine_rows`]).
pub fn decode_engine_rows(
    keys: &[u64],
    stored: DType,
    dim: usize,
    fetched: &[u8],
    out_dtype: DType,
    out: &mut [u8],
    zero_byte_scales: bool,
) -> Result<()> {
    check_engine_dtype(out_dtype)?;
    stored.check_dim(dim as u64)?;
    let (stored_row, out_row) = (stored.row_bytes(dim), out_dtype.row_bytes(dim));
    let present = keys.iter().filter(|&&k| k != NO_ROW).count();
    if fetched.len() != present * stored_row || out.len() != keys.len() * out_row {
        return Err(Error::invalid(format!(
            "{} keys ({present} of them rows) need {} fetched bytes and {} out bytes, got {} \
             and {}",
            keys.len(),
            present * stored_row,
            keys.len() * out_row,
            fetched.len(),
            out.len()
        )));
    }
    let zero_groups = zero_byte_scales && stored == DType::Fp8E4M3;
    let group_out = out_dtype.row_bytes(GROUP);
    let mut scratch = vec![0f32; dim];
    let mut rows = fetched.chunks_exact(stored_row);
    for (dst, &key) in out.chunks_exact_mut(out_row).zip(keys) {
        if key == NO_ROW {
            dst.fill(0);
            continue;
        }
        let Some(row) = rows.next() else {
            unreachable!("counted above")
        };
        codec::convert_row(stored, row, out_dtype, dst, &mut scratch);
        if zero_groups {
            zero_groups_of_zero_scales(dst, &row[dim..], group_out);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIZES: [u64; 3] = [5, 7, 11];

    #[test]
    fn a_whole_layer_keeps_global_ids_and_zeroes_the_rest() {
        let rows = EngineRows::new(&SIZES, None, None, false).unwrap();
        assert_eq!(rows.file_rows(), 23);
        let keys = rows.keys(&[0, 5, 12, 4, 22, 23, -1, 7, 30], None).unwrap();
        assert_eq!(keys, [0, 5, 12, 4, 22, NO_ROW, NO_ROW, 7, NO_ROW]);
    }

    #[test]
    fn a_range_of_heads_reads_its_columns_only() {
        let rows = EngineRows::new(&SIZES, Some(1..3), None, false).unwrap();
        assert_eq!((rows.file_rows(), rows.columns_read()), (18, 2));
        // Head 1 holds global rows 5..12, head 2 rows 12..23: the file starts at row 5.
        let keys = rows.keys(&[0, 5, 12, 4, 11, 22], None).unwrap();
        assert_eq!(keys, [0, 7, 6, 17]);
        // An id of another head's range in a column reads that row as vLLM's would.
        assert_eq!(rows.keys(&[0, 12, 5], None).unwrap(), [7, 0]);
    }

    #[test]
    fn a_row_range_answers_the_ids_it_holds() {
        let rows = EngineRows::new(&SIZES, None, Some(4..10), false).unwrap();
        let keys = rows.keys(&[4, 9, 10, 3, 5, 6], None).unwrap();
        assert_eq!(keys, [0, 5, NO_ROW, NO_ROW, 1, 2]);
    }

    #[test]
    fn local_ids_take_their_heads_offsets() {
        let rows = EngineRows::new(&SIZES, Some(1..3), None, true).unwrap();
        // Local 6 is head 1's last row; local 7 is past it; local 10 is head 2's last.
        assert_eq!(
            rows.keys(&[0, 6, 10, 0, 7, 0], None).unwrap(),
            [6, 17, NO_ROW, 7]
        );
    }

    #[test]
    fn masked_positions_read_no_row() {
        let rows = EngineRows::new(&SIZES, None, None, false).unwrap();
        let keys = rows
            .keys(&[0, 5, 12, 1, 6, 13], Some(&[false, true]))
            .unwrap();
        assert_eq!(keys, [NO_ROW, NO_ROW, NO_ROW, 1, 6, 13]);
    }

    #[test]
    fn fetched_rows_decode_in_order_around_zero_rows() {
        let dim = 32;
        // One FP8 row: codes of 1.0 (0x38) under a scale of 2 (byte 128); one under scale 0.
        let mut fetched = vec![0x38u8; dim];
        fetched.push(128);
        fetched.extend(std::iter::repeat_n(0x38u8, dim));
        fetched.push(0);
        let keys = [7, NO_ROW, 3];
        for (zero_rule, second) in [(false, 2f32.powi(-127)), (true, 0.0)] {
            let mut out = vec![0xFFu8; 3 * dim * 4];
            decode_engine_rows(
                &keys,
                DType::Fp8E4M3,
                dim,
                &fetched,
                DType::F32,
                &mut out,
                zero_rule,
            )
            .unwrap();
            let values: Vec<f32> = out
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect();
            assert!(values[..dim].iter().all(|&v| v == 2.0));
            assert!(values[dim..2 * dim].iter().all(|&v| v == 0.0));
            assert!(values[2 * dim..].iter().all(|&v| v == second));
        }
        let mut out = vec![0u8; 2 * dim * 4];
        let short = decode_engine_rows(
            &[1, 2],
            DType::Fp8E4M3,
            dim,
            &fetched[..dim + 1],
            DType::F32,
            &mut out,
            false,
        );
        assert!(short.is_err());
    }

    #[test]
    fn bad_shapes_and_ranges_are_refused() {
        let rows = EngineRows::new(&SIZES, None, None, false).unwrap();
        assert!(rows.keys(&[0, 1], None).is_err());
        assert!(rows.keys(&[0, 5, 12], Some(&[true, true])).is_err());
        assert!(EngineRows::new(&SIZES, Some(2..4), None, false).is_err());
        assert!(EngineRows::new(&SIZES, Some(1..1), None, false).is_err());
        assert!(EngineRows::new(&SIZES, None, Some(20..24), false).is_err());
        assert!(EngineRows::new(&SIZES, Some(0..1), Some(0..1), false).is_err());
        assert!(EngineRows::new(&[], None, None, false).is_err());
        assert!(EngineRows::new(&[u64::MAX, 1], None, None, false).is_err());
    }
}
