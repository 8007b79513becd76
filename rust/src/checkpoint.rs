//! Row packs: the per-table files of a checkpoint.
//!
//! A pack holds exact copies (storage bytes) of some rows of a table and of their optimizer
//! state, with the table's step. A full checkpoint packs every stored row; an incremental one
//! only the rows changed since its parent, and restoring applies the chain of packs in order
//! onto fresh (all-virtual) tables, which reproduces the table bit for bit.
//!
//! ```text
//! magic "ENGRMPCK" | version u32 | dtype code u32 | num_rows u64 | dim u64 | state_dim u64
//! | step u64 | count u64 | keys [count] u64 | rows [count x dim] dtype
//! | state rows [count x state_dim] f32 | CRC-32 of everything before (u32)
//! ```
//! All little-endian. The trailing CRC covers the whole file, so a torn or corrupted pack is
//! refused before anything is applied.

use crate::codec::DType;
use crate::error::{Error, Result};
use crate::trainable::TrainableTable;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;

pub const PACK_MAGIC: [u8; 8] = *b"ENGRMPCK";
pub const PACK_VERSION: u32 = 1;
const HEADER_LEN: usize = 8 + 4 + 4 + 8 * 5;
/// Rows copied per batch while packing or applying, to bound memory.
const ROWS_PER_BATCH: usize = 65_536;

/// What a pack holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackSummary {
    pub rows: u64,
    pub step: u64,
    pub bytes: u64,
    pub crc32: u32,
}

/// A writer that checksums what it writes.
struct Checksummed<W: Write> {
    inner: W,
    crc: crc32fast::Hasher,
    bytes: u64,
}

impl<W: Write> Write for Checksummed<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Packs a table with its pushes paused: every stored row (`incremental == false`) or the
/// rows changed since the dirty marks were last cleared. Clearing them once the checkpoint
/// is published is the caller's part ([`TrainableTable::clear_dirty`]), and no push may
/// land in between.
pub fn pack_table(path: &Path, table: &TrainableTable, incremental: bool) -> Result<PackSummary> {
    let _paused = table.pause_pushes();
    let keys = if incremental {
        table.changed_stored_keys()?
    } else {
        table.written_keys()
    };
    write_pack(path, table, &keys)
}

/// Writes the rows `keys` (ascending, in range) of `table` to a new pack at `path`, durably
/// (fsync). The caller keeps pushes paused so that rows, state and step agree.
pub fn write_pack(path: &Path, table: &TrainableTable, keys: &[u64]) -> Result<PackSummary> {
    let io = |e| Error::io(path, e);
    let params = table.params();
    let state_dim = table.state().map_or(0, |s| s.dim());
    let step = table.step();
    let file = File::create_new(path).map_err(io)?;
    let mut out = Checksummed {
        inner: BufWriter::with_capacity(1 << 20, &file),
        crc: crc32fast::Hasher::new(),
        bytes: 0,
    };
    let mut header = Vec::with_capacity(HEADER_LEN);
    header.extend_from_slice(&PACK_MAGIC);
    header.extend_from_slice(&PACK_VERSION.to_le_bytes());
    header.extend_from_slice(&params.dtype().code().to_le_bytes());
    for v in [
        params.num_rows(),
        params.dim() as u64,
        state_dim as u64,
        step,
        keys.len() as u64,
    ] {
        header.extend_from_slice(&v.to_le_bytes());
    }
    out.write_all(&header).map_err(io)?;
    for key in keys {
        out.write_all(&key.to_le_bytes()).map_err(io)?;
    }
    for batch in keys.chunks(ROWS_PER_BATCH) {
        out.write_all(&params.read_raw_rows(batch)?).map_err(io)?;
    }
    if let Some(state) = table.state() {
        for batch in keys.chunks(ROWS_PER_BATCH) {
            out.write_all(&state.read_raw_rows(batch)?).map_err(io)?;
        }
    }
    let crc = out.crc.clone().finalize();
    out.write_all(&crc.to_le_bytes()).map_err(io)?;
    out.flush().map_err(io)?;
    let bytes = out.bytes;
    drop(out);
    file.sync_all().map_err(io)?;
    Ok(PackSummary {
        rows: keys.len() as u64,
        step,
        bytes,
        crc32: crc,
    })
}

/// Checks a pack's checksum and its fit to `table`, then stores its rows and state rows
/// exactly and sets the table's step. Returns what the pack held.
pub fn apply_pack(path: &Path, table: &TrainableTable) -> Result<PackSummary> {
    let summary = verify_pack(path)?;
    let io = |e| Error::io(path, e);
    let bad = |reason: String| Error::format(path, reason);
    let mut input = BufReader::with_capacity(1 << 20, File::open(path).map_err(io)?);
    let mut header = [0u8; HEADER_LEN];
    input.read_exact(&mut header).map_err(io)?;
    let u64_at = |o: usize| u64::from_le_bytes(header[o..o + 8].try_into().unwrap());
    let dtype = DType::from_code(u32::from_le_bytes(header[12..16].try_into().unwrap()));
    let params = table.params();
    let state_dim = table.state().map_or(0, |s| s.dim()) as u64;
    let shape = (dtype, u64_at(16), u64_at(24), u64_at(32));
    let expected = (
        Some(params.dtype()),
        params.num_rows(),
        params.dim() as u64,
        state_dim,
    );
    if shape != expected {
        return Err(bad(format!(
            "pack of (dtype, rows, dim, state dim) {shape:?} does not fit the table's {expected:?}"
        )));
    }
    let count = summary.rows as usize;
    let mut keys = vec![0u64; count];
    let mut buf = [0u8; 8];
    for key in keys.iter_mut() {
        input.read_exact(&mut buf).map_err(io)?;
        *key = u64::from_le_bytes(buf);
    }
    params
        .check_keys(&keys)
        .map_err(|e| bad(format!("bad key: {e}")))?;
    let row_bytes = params.dtype().row_bytes(params.dim());
    let mut rows = Vec::new();
    for batch in keys.chunks(ROWS_PER_BATCH) {
        rows.resize(batch.len() * row_bytes, 0);
        input.read_exact(&mut rows).map_err(io)?;
        params.write_raw_rows(batch, &rows)?;
    }
    if let Some(state) = table.state() {
        let state_row_bytes = state.dim() * 4;
        for batch in keys.chunks(ROWS_PER_BATCH) {
            rows.resize(batch.len() * state_row_bytes, 0);
            input.read_exact(&mut rows).map_err(io)?;
            state.write_raw_rows(batch, &rows)?;
        }
    }
    table.set_step(summary.step);
    Ok(summary)
}

/// Reads a whole pack and checks its magic, version and checksum.
pub fn verify_pack(path: &Path) -> Result<PackSummary> {
    let io = |e| Error::io(path, e);
    let bad = |reason: String| Error::format(path, reason);
    let len = std::fs::metadata(path).map_err(io)?.len();
    if len < (HEADER_LEN + 4) as u64 {
        return Err(bad(format!("pack is {len} bytes, too short")));
    }
    let mut input = BufReader::with_capacity(1 << 20, File::open(path).map_err(io)?);
    let mut header = [0u8; HEADER_LEN];
    input.read_exact(&mut header).map_err(io)?;
    if header[..8] != PACK_MAGIC {
        return Err(bad("not a row pack (bad magic)".into()));
    }
    let version = u32::from_le_bytes(header[8..12].try_into().unwrap());
    if version != PACK_VERSION {
        return Err(bad(format!("unsupported pack version {version}")));
    }
    let mut crc = crc32fast::Hasher::new();
    crc.update(&header);
    let mut remaining = len - HEADER_LEN as u64 - 4;
    let mut buf = vec![0u8; 1 << 20];
    while remaining > 0 {
        let n = remaining.min(buf.len() as u64) as usize;
        input.read_exact(&mut buf[..n]).map_err(io)?;
        crc.update(&buf[..n]);
        remaining -= n as u64;
    }
    let mut stored = [0u8; 4];
    input.read_exact(&mut stored).map_err(io)?;
    let computed = crc.finalize();
    if u32::from_le_bytes(stored) != computed {
        return Err(bad(format!(
            "pack checksum mismatch (stored {:#010x}, computed {computed:#010x})",
            u32::from_le_bytes(stored)
        )));
    }
    let u64_at = |o: usize| u64::from_le_bytes(header[o..o + 8].try_into().unwrap());
    Ok(PackSummary {
        rows: u64_at(48),
        step: u64_at(40),
        bytes: len,
        crc32: computed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::init::Initializer;
    use crate::optim::Optimizer;
    use crate::table::format::Header;

    fn table(dir: &Path, name: &str) -> TrainableTable {
        let header = Header {
            dtype: DType::BF16,
            num_rows: 500,
            dim: 6,
            init: Initializer::normal(0.1, 3).unwrap(),
            first_row: 0,
        };
        let adam = Optimizer::new("adam", 0.01, 1e-8, 0.9, 0.999, 0.0).unwrap();
        TrainableTable::create(dir.join(name), header, adam, false).unwrap()
    }

    fn snapshot(t: &TrainableTable) -> (Vec<u8>, Vec<u8>) {
        let all: Vec<u64> = (0..500).collect();
        (
            t.params().read_raw_rows(&all).unwrap(),
            t.state().unwrap().read_raw_rows(&all).unwrap(),
        )
    }

    #[test]
    fn full_then_incremental_chain_restores_bit_for_bit() {
        let dir = tempfile::tempdir().unwrap();
        let src = table(dir.path(), "src");
        src.push(&[1, 2, 3, 400], &[0.5; 24], None).unwrap();
        let full = dir.path().join("full.pack");
        let s1 = write_pack(&full, &src, &src.written_keys()).unwrap();
        assert_eq!((s1.rows, s1.step), (4, 1));
        src.clear_dirty();
        src.push(&[3, 7], &[-1.0; 12], None).unwrap();
        let delta = dir.path().join("delta.pack");
        let s2 = write_pack(&delta, &src, &src.dirty_keys()).unwrap();
        assert_eq!((s2.rows, s2.step), (2, 2));
        assert!(s2.bytes < s1.bytes);

        let dst = table(dir.path(), "dst");
        apply_pack(&full, &dst).unwrap();
        apply_pack(&delta, &dst).unwrap();
        assert_eq!(snapshot(&dst), snapshot(&src));
        assert_eq!(dst.step(), 2);
        assert_eq!(dst.written_keys(), src.written_keys());
    }

    #[test]
    fn an_incremental_pack_leaves_out_a_first_write_that_a_crash_undid() {
        let dir = tempfile::tempdir().unwrap();
        let src = table(dir.path(), "src");
        src.push(&[1, 2], &[0.5; 12], None).unwrap();
        let full = dir.path().join("full.pack");
        pack_table(&full, &src, false).unwrap();
        src.clear_dirty();
        // Row 9's first write, put back as start-up puts back a push cut short by a crash
        // (from the undo log): the row is never-written again, its dirty mark stays.
        let params_before = src.params().read_raw_rows(&[9]).unwrap();
        let state_before = src.state().unwrap().read_raw_rows(&[9]).unwrap();
        src.push(&[9], &[1.0; 6], None).unwrap();
        src.params().restore_row(9, &params_before, false).unwrap();
        src.state()
            .unwrap()
            .restore_row(9, &state_before, false)
            .unwrap();
        src.push(&[2], &[1.0; 6], None).unwrap();
        assert_eq!(src.dirty_keys(), vec![2, 9]);

        let delta = dir.path().join("delta.pack");
        assert_eq!(pack_table(&delta, &src, true).unwrap().rows, 1);
        let dst = table(dir.path(), "dst");
        apply_pack(&full, &dst).unwrap();
        apply_pack(&delta, &dst).unwrap();
        assert_eq!(snapshot(&dst), snapshot(&src));
        assert_eq!(dst.written_keys(), vec![1, 2], "row 9 stays never-written");
    }

    #[test]
    fn corrupt_or_mismatched_packs_are_refused_before_applying() {
        let dir = tempfile::tempdir().unwrap();
        let src = table(dir.path(), "src");
        src.push(&[5], &[1.0; 6], None).unwrap();
        let pack = dir.path().join("p.pack");
        write_pack(&pack, &src, &[5]).unwrap();
        assert!(
            write_pack(&pack, &src, &[5]).is_err(),
            "packs are never overwritten"
        );

        let mut bytes = std::fs::read(&pack).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 1;
        let corrupt = dir.path().join("corrupt.pack");
        std::fs::write(&corrupt, &bytes).unwrap();
        let dst = table(dir.path(), "dst");
        let err = apply_pack(&corrupt, &dst).unwrap_err().to_string();
        assert!(err.contains("checksum mismatch"), "{err}");
        assert_eq!(dst.params().written_count(), 0);

        let other = TrainableTable::create(
            dir.path().join("other"),
            Header {
                dtype: DType::F32,
                num_rows: 500,
                dim: 6,
                init: Initializer::Zeros,
                first_row: 0,
            },
            Optimizer::new("sgd", 0.1, 0.0, 0.0, 0.0, 0.0).unwrap(),
            false,
        )
        .unwrap();
        let err = apply_pack(&pack, &other).unwrap_err().to_string();
        assert!(err.contains("does not fit"), "{err}");
    }
}
