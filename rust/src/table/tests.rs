use super::*;
use crate::init::Initializer;
use std::io::{Seek, SeekFrom, Write};

fn header(dtype: DType, num_rows: u64, dim: u64) -> Header {
    Header {
        dtype,
        num_rows,
        dim,
        init: Initializer::normal(0.1, 5).unwrap(),
        first_row: 0,
    }
}

fn new_table(dir: &tempfile::TempDir, dtype: DType, rows: u64, dim: u64) -> Table {
    Table::create(dir.path().join("t.engram"), header(dtype, rows, dim)).unwrap()
}

#[test]
fn creation_is_constant_in_time_and_disk() {
    let dir = tempfile::tempdir().unwrap();
    // 100 billion float32 parameters: 400 GB of logical size.
    let t = Table::create(
        dir.path().join("huge.engram"),
        header(DType::F32, 1_562_500_000, 64),
    )
    .unwrap();
    assert!(t.file_len() > 400_000_000_000);
    let meta = std::fs::metadata(t.path()).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert!(
        meta.blocks() * 512 < 1 << 20,
        "{} bytes allocated",
        meta.blocks() * 512
    );
    let last = t.num_rows() - 1;
    let rows = t.gather(&[0, last]).unwrap();
    let mut expected = vec![0f32; 64];
    t.initializer().fill_row(last, &mut expected);
    assert_eq!(&rows[64..], &expected[..]);
    t.write_rows(&[last], &vec![1.5; 64]).unwrap();
    assert_eq!(t.gather(&[last]).unwrap(), vec![1.5; 64]);
}

#[test]
fn virtual_rows_read_their_initial_value_in_every_dtype() {
    let dir = tempfile::tempdir().unwrap();
    for (i, dtype) in DType::ALL.into_iter().enumerate() {
        // Quantized rows hold whole groups of 32 values.
        let dim = if dtype.is_quantized() { 64 } else { 7 };
        let t = Table::create(
            dir.path().join(format!("{i}")),
            header(dtype, 100, dim as u64),
        )
        .unwrap();
        let got = t.gather(&[3, 99, 3]).unwrap();
        let mut expected = vec![0f32; dim];
        t.initial_row(3, &mut expected);
        assert_eq!(&got[..dim], &expected[..]);
        assert_eq!(&got[2 * dim..], &expected[..]);
        // Storing a virtual row's own value changes nothing it reads.
        t.write_rows(&[3], &expected).unwrap();
        assert_eq!(t.gather(&[3]).unwrap(), expected);
        assert_eq!(t.written(&[3, 99]).unwrap(), vec![true, false]);
    }
}

#[test]
fn scatter_add_accumulates_duplicates_and_matches_a_dense_model() {
    let dir = tempfile::tempdir().unwrap();
    let (rows, dim) = (10_000u64, 5usize);
    let t = new_table(&dir, DType::F32, rows, dim as u64);
    let mut dense = t.gather(&(0..rows).collect::<Vec<_>>()).unwrap();
    // Enough distinct rows to take the parallel path, each repeated; a stride scatters
    // neighbouring rows (which share bitmap bytes) over different tasks.
    let keys: Vec<u64> = (0..40_000u64).map(|i| (i * 7919) % rows).collect();
    let values: Vec<f32> = (0..keys.len() * dim)
        .map(|i| (i % 13) as f32 * 0.25)
        .collect();
    t.scatter_add(&keys, &values).unwrap();
    for (i, &k) in keys.iter().enumerate() {
        for d in 0..dim {
            dense[k as usize * dim + d] += values[i * dim + d];
        }
    }
    let got = t.gather(&(0..rows).collect::<Vec<_>>()).unwrap();
    for (g, e) in got.iter().zip(&dense) {
        assert!((g - e).abs() <= 1e-3 * e.abs().max(1.0), "{g} vs {e}");
    }
    assert_eq!(t.written_count(), rows);
    assert_eq!(t.dirty_keys(), (0..rows).collect::<Vec<_>>());
}

#[test]
fn half_precision_rows_update_through_float32_in_parallel() {
    for dtype in [DType::BF16, DType::F16] {
        let dir = tempfile::tempdir().unwrap();
        let (rows, dim) = (6000u64, 3usize);
        let t = new_table(&dir, dtype, rows, dim as u64);
        let keys: Vec<u64> = (0..rows).map(|i| (i * 4001) % rows).collect();
        let before = t.gather(&keys).unwrap();
        let values: Vec<f32> = (0..keys.len() * dim).map(|i| (i % 4) as f32).collect();
        t.scatter_add(&keys, &values).unwrap();
        // Each row: decoded, added in float32, rounded once to the storage dtype.
        let sums: Vec<f32> = before.iter().zip(&values).map(|(b, v)| b + v).collect();
        let mut stored = vec![0u8; dtype.row_bytes(sums.len())];
        codec::encode_f32(dtype, &sums, &mut stored);
        let mut expected = vec![0f32; sums.len()];
        codec::decode_to_f32(dtype, &stored, &mut expected);
        assert_eq!(t.gather(&keys).unwrap(), expected, "{dtype:?}");
        assert_eq!(t.written_count(), rows);
    }
}

#[test]
fn write_rows_last_duplicate_wins() {
    let dir = tempfile::tempdir().unwrap();
    let t = new_table(&dir, DType::F32, 10, 2);
    t.write_rows(&[4, 4, 5], &[1.0, 1.0, 2.0, 2.0, 3.0, 3.0])
        .unwrap();
    assert_eq!(t.gather(&[4, 5]).unwrap(), vec![2.0, 2.0, 3.0, 3.0]);
}

#[test]
fn gather_converts_to_any_output_dtype() {
    let dir = tempfile::tempdir().unwrap();
    let t = new_table(&dir, DType::BF16, 4, 3);
    t.write_rows(&[1], &[1.0, -2.5, 0.3]).unwrap();
    let mut f16_out = vec![0u8; 2 * 3 * 2];
    t.gather_into(&[1, 2], DType::F16, &mut f16_out).unwrap();
    let mut decoded = vec![0f32; 6];
    codec::decode_to_f32(DType::F16, &f16_out, &mut decoded);
    let as_f32 = t.gather(&[1, 2]).unwrap();
    let mut expected = vec![0u8; 12];
    codec::encode_f32(DType::F16, &as_f32, &mut expected);
    assert_eq!(f16_out, expected);
    assert_eq!(decoded[1], -2.5);
}

#[test]
fn a_float_table_is_read_quantized_only_in_whole_groups() {
    let dir = tempfile::tempdir().unwrap();
    let narrow = new_table(&dir, DType::F32, 4, 4);
    for dtype in [DType::Fp8E4M3, DType::Int8] {
        let mut out = vec![7u8; dtype.row_bytes(4)];
        let err = narrow.gather_into(&[1], dtype, &mut out).unwrap_err();
        assert!(
            err.to_string()
                .contains("dim must be a multiple of 32, got 4"),
            "{err}"
        );
        assert_eq!(out, vec![7u8; dtype.row_bytes(4)]);
    }
    let wide_dir = tempfile::tempdir().unwrap();
    let wide = new_table(&wide_dir, DType::F32, 4, 64);
    let mut out = vec![0u8; DType::Fp8E4M3.row_bytes(64)];
    wide.gather_into(&[1], DType::Fp8E4M3, &mut out).unwrap();
}

#[test]
fn out_of_range_keys_fail_before_anything_changes() {
    let dir = tempfile::tempdir().unwrap();
    let t = new_table(&dir, DType::F32, 10, 2);
    let err = t.scatter_add(&[1, 10, 11], &[1.0; 6]).unwrap_err();
    assert!(matches!(err, Error::OutOfRange(_)));
    assert!(err.to_string().contains("keys[1] = 10"), "{err}");
    assert_eq!(t.written_count(), 0);
    let mut out = vec![7u8; 3 * 8];
    assert!(t.gather_into(&[0, 2, 99], DType::F32, &mut out).is_err());
    assert_eq!(out, vec![7u8; 24]);
    assert!(t.write_rows(&[1], &[1.0; 3]).is_err());
    assert!(keys_from_i64(&[0, -3])
        .unwrap_err()
        .to_string()
        .contains("keys[1] = -3"));
}

#[test]
fn flushed_rows_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.engram");
    let values: Vec<f32> = (0..30).map(|i| i as f32 / 7.0).collect();
    {
        let t = Table::create(&path, header(DType::F16, 50, 3)).unwrap();
        t.write_rows(&(0..10).collect::<Vec<_>>(), &values).unwrap();
        t.flush().unwrap();
    }
    let t = Table::open(&path).unwrap();
    assert_eq!(t.header(), &header(DType::F16, 50, 3));
    let got = t.gather(&(0..10).collect::<Vec<_>>()).unwrap();
    let mut stored = vec![0u8; 60];
    codec::encode_f32(DType::F16, &values, &mut stored);
    let mut expected = vec![0f32; 30];
    codec::decode_to_f32(DType::F16, &stored, &mut expected);
    assert_eq!(got, expected);
    assert_eq!(t.written_count(), 10);
}

#[test]
fn corrupt_or_foreign_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.engram");
    drop(Table::create(&path, header(DType::F32, 50, 3)).unwrap());
    let msg = |p: &Path| Table::open(p).unwrap_err().to_string();

    let mut f = OpenOptions::new().write(true).open(&path).unwrap();
    f.seek(SeekFrom::Start(20)).unwrap();
    f.write_all(&[0xFF]).unwrap();
    drop(f);
    assert!(msg(&path).contains("checksum"), "{}", msg(&path));

    let truncated = dir.path().join("short.engram");
    drop(Table::create(&truncated, header(DType::F32, 50, 3)).unwrap());
    let f = OpenOptions::new().write(true).open(&truncated).unwrap();
    f.set_len(5000).unwrap();
    assert!(msg(&truncated).contains("truncated"));

    let foreign = dir.path().join("foreign");
    std::fs::write(&foreign, vec![b'x'; 8192]).unwrap();
    assert!(msg(&foreign).contains("bad magic"));

    let empty = dir.path().join("empty");
    std::fs::write(&empty, b"").unwrap();
    assert!(msg(&empty).contains("too short"));

    assert!(matches!(
        Table::open(dir.path().join("missing")).unwrap_err(),
        Error::Io { .. }
    ));
    assert!(
        Table::create(&path, header(DType::F32, 5, 1)).is_err(),
        "create must not clobber"
    );
}

#[test]
fn readers_never_see_a_half_written_row() {
    let dir = tempfile::tempdir().unwrap();
    let dim = 256;
    let t = new_table(&dir, DType::F32, 64, dim);
    t.write_rows(&(0..64).collect::<Vec<_>>(), &vec![0.0; 64 * dim as usize])
        .unwrap();
    std::thread::scope(|s| {
        s.spawn(|| {
            for step in 1..200 {
                let keys: Vec<u64> = (0..64).collect();
                t.write_rows(&keys, &vec![step as f32; 64 * dim as usize])
                    .unwrap();
            }
        });
        for _ in 0..200 {
            let rows = t.gather(&[5, 40]).unwrap();
            for row in rows.chunks(dim as usize) {
                assert!(row.iter().all(|&v| v == row[0]), "torn row");
            }
        }
    });
}

#[test]
fn shards_with_first_row_read_like_the_whole_table() {
    let dir = tempfile::tempdir().unwrap();
    let whole = Table::create(dir.path().join("whole"), header(DType::F32, 100, 5)).unwrap();
    let second_half = Table::create(
        dir.path().join("half"),
        Header {
            num_rows: 50,
            first_row: 50,
            ..header(DType::F32, 100, 5)
        },
    )
    .unwrap();
    assert_eq!(
        second_half.gather(&[0, 49]).unwrap(),
        whole.gather(&[50, 99]).unwrap()
    );
}

/// The kernel's flags of this process's mapping of `path` (`VmFlags` in /proc/self/smaps).
#[cfg(target_os = "linux")]
fn vm_flags(path: &Path) -> Vec<String> {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let real = std::fs::canonicalize(path).unwrap();
    let name = real.to_str().unwrap();
    let mut in_mapping = false;
    for line in smaps.lines() {
        if line.contains('-') && line.split_whitespace().count() >= 5 {
            in_mapping = line.ends_with(name);
        } else if in_mapping {
            if let Some(flags) = line.strip_prefix("VmFlags:") {
                return flags.split_whitespace().map(str::to_string).collect();
            }
        }
    }
    panic!("{name} is not mapped")
}

#[cfg(target_os = "linux")]
#[test]
fn access_hints_reach_the_kernel() {
    let dir = tempfile::tempdir().unwrap();
    let t = new_table(&dir, DType::F32, 1000, 4);
    let path = dir.path().join("t.engram");
    t.set_access(Access::Sparse);
    let flags = vm_flags(&path);
    assert!(
        flags.contains(&"rr".to_string()),
        "no random-read flag: {flags:?}"
    );
    assert!(
        !flags.contains(&"hg".to_string()),
        "still huge pages: {flags:?}"
    );
    t.set_access(Access::Dense);
    let flags = vm_flags(&path);
    assert!(
        !flags.contains(&"rr".to_string()),
        "still random-read: {flags:?}"
    );
}

#[test]
fn written_counts_and_dirty_rows_are_kept_without_scanning_and_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let t = new_table(&dir, DType::F32, 200_000, 1);
    assert_eq!(t.written_count(), 0);
    t.write_rows(&[5, 70_000, 199_999, 5], &[1.0; 4]).unwrap();
    assert_eq!(t.written_count(), 3);
    assert_eq!(t.dirty_keys(), vec![5, 70_000, 199_999]);
    t.clear_dirty();
    assert!(t.dirty_keys().is_empty());
    t.write_rows(&[100_000, 5], &[2.0; 2]).unwrap();
    assert_eq!(t.dirty_keys(), vec![5, 100_000]);
    assert_eq!(t.written_keys(), vec![5, 70_000, 100_000, 199_999]);
    t.restore_row(100_000, &0f32.to_le_bytes(), false).unwrap();
    assert_eq!(t.written_count(), 3);
    t.flush().unwrap();
    let path = t.path().to_path_buf();
    drop(t);
    let t = Table::open(&path).unwrap();
    assert_eq!(t.written_count(), 3);
    assert_eq!(t.written_keys(), vec![5, 70_000, 199_999]);
    assert_eq!(
        t.dirty_keys(),
        vec![5, 100_000],
        "dirty marks stay until a checkpoint"
    );
}

#[test]
fn verify_finds_changed_rows_and_flipped_written_marks_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    for dtype in [DType::F32, DType::BF16] {
        let path = dir.path().join(format!("{}.engram", dtype.name()));
        let t = Table::create(&path, header(dtype, 1000, 6)).unwrap();
        t.write_rows(&[3, 200, 999], &[1.5; 18]).unwrap();
        t.scatter_add(&[3, 500], &[0.25; 12]).unwrap();
        t.restore_row(500, &t.read_raw_rows(&[500]).unwrap(), false)
            .unwrap();
        assert!(t.verify().is_empty(), "updates keep the checksums");
        t.flush().unwrap();
        drop(t);
        let t = Table::open(&path).unwrap();
        assert!(t.verify().is_empty());
        let (row_offset, bitmap_offset) = (t.row_range(200).start, t.layout.bitmap_offset);
        drop(t);

        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .read(true)
            .open(&path)
            .unwrap();
        let mut flip = |offset: u64, mask: u8| {
            use std::io::Read;
            let mut byte = [0u8];
            file.seek(SeekFrom::Start(offset)).unwrap();
            file.read_exact(&mut byte).unwrap();
            file.seek(SeekFrom::Start(offset)).unwrap();
            file.write_all(&[byte[0] ^ mask]).unwrap();
        };
        flip(row_offset as u64 + 1, 0x04); // a bit of row 200
        flip(bitmap_offset + 700 / 8, 1 << (700 % 8)); // row 700 now reads as written
        let t = Table::open(&path).unwrap();
        assert_eq!(t.verify(), vec![192, 640], "{}", dtype.name());
    }
}

#[test]
fn a_table_can_be_kept_without_checksums() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.engram");
    let t = Table::create_with(&path, header(DType::F32, 300, 2), false).unwrap();
    t.write_rows(&[1, 250], &[2.0; 4]).unwrap();
    assert!(!t.has_row_checksums() && t.verify().is_empty());
    drop(t);
    assert!(!checksums::BlockSums::path_for(&path).exists());
    let t = Table::open(&path).unwrap();
    assert!(!t.has_row_checksums());
    assert_eq!(t.gather(&[250]).unwrap(), vec![2.0; 2]);
}

#[test]
fn tables_beyond_memory_are_read_sparsely() {
    assert_eq!(Access::for_file_of(4096), Access::Dense);
    assert_eq!(Access::for_file_of(u64::MAX), Access::Sparse);
}

#[test]
fn an_engines_gather_zeroes_missing_rows_and_follows_the_scale_rule() {
    let dir = tempfile::tempdir().unwrap();
    let t = new_table(&dir, DType::Fp8E4M3, 4, 64);
    // Row 1: codes of 1.0 (0x38) in both groups, scale bytes 127 (1.0) and 0.
    let mut row = vec![0x38u8; 64];
    row.extend_from_slice(&[127, 0]);
    t.write_raw_rows(&[1], &row).unwrap();
    let bf16 = |out: &[u8], i: usize| half::bf16::from_le_bytes([out[2 * i], out[2 * i + 1]]);
    let mut out = vec![0xFFu8; 3 * DType::BF16.row_bytes(64)];
    t.gather_engine_rows(&[1, NO_ROW, 1], DType::BF16, &mut out, false)
        .unwrap();
    assert_eq!(bf16(&out, 0).to_f32(), 1.0);
    assert_eq!(
        bf16(&out, 32).to_f32(),
        2f32.powi(-127),
        "torch's rule for byte 0"
    );
    assert!(
        out[128..256].iter().all(|&b| b == 0),
        "a missing row reads as zeros"
    );
    t.gather_engine_rows(&[1, NO_ROW, 1], DType::BF16, &mut out, true)
        .unwrap();
    assert_eq!(bf16(&out, 0).to_f32(), 1.0);
    assert_eq!(bf16(&out, 32).to_f32(), 0.0, "vLLM's rule for byte 0");
    assert!(t
        .gather_engine_rows(&[9], DType::BF16, &mut out[..128], false)
        .is_err());
    assert!(t
        .gather_engine_rows(&[1], DType::Fp8E4M3, &mut out[..66], false)
        .is_err());
}
