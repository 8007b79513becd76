use super::*;
use crate::init::Initializer;
use crate::table::format::Header;

fn table(dir: &tempfile::TempDir, name: &str, dtype: DType, rows: u64, dim: u64) -> Table {
    let header = Header {
        dtype,
        num_rows: rows,
        dim,
        init: Initializer::normal(0.1, 5).unwrap(),
        first_row: 0,
    };
    Table::create(dir.path().join(name), header).unwrap()
}

/// Writes every row with distinct values (so that a wrong row cannot pass for a right one).
fn fill(t: &Table) {
    let dim = t.dim();
    let keys: Vec<u64> = (0..t.num_rows()).collect();
    let values: Vec<f32> = (0..keys.len() * dim)
        .map(|i| ((i * 7919) % 1000) as f32 / 100.0 - 5.0)
        .collect();
    let raw = {
        // Quantized tables are written packed: quantize through a float32 scratch table.
        let dir = tempfile::tempdir().unwrap();
        let scratch = table(&dir, "f32", DType::F32, t.num_rows(), dim as u64);
        scratch.write_rows(&keys, &values).unwrap();
        let mut raw = vec![0u8; keys.len() * t.dtype().row_bytes(dim)];
        scratch.gather_into(&keys, t.dtype(), &mut raw).unwrap();
        raw
    };
    t.write_raw_rows(&keys, &raw).unwrap();
}

/// Zipf-like keys: key k is read about 1/(k+1) as often.
fn skewed_keys(count: usize, rows: u64) -> Vec<u64> {
    let mut state = 12345u64;
    (0..count)
        .map(|_| {
            state = splitmix64(state);
            let u = (state >> 11) as f64 / (1u64 << 53) as f64;
            ((rows as f64).powf(u) - 1.0) as u64 % rows
        })
        .collect()
}

fn gather(t: &Table, keys: &[u64], dtype: DType, cache: Option<&HotRowCache>) -> Vec<u8> {
    let mut out = vec![0u8; keys.len() * dtype.row_bytes(t.dim())];
    match cache {
        Some(cache) => t.gather_cached(keys, dtype, &mut out, cache).unwrap(),
        None => t.gather_into(keys, dtype, &mut out).unwrap(),
    }
    out
}

#[test]
fn cached_gathers_equal_uncached_ones_and_hit_the_hot_rows() {
    let dir = tempfile::tempdir().unwrap();
    for (stored, read) in [
        (DType::Fp8E4M3, DType::BF16),
        (DType::Fp8E4M3, DType::Fp8E4M3),
        (DType::Int8, DType::F32),
        (DType::F32, DType::F32),
        (DType::BF16, DType::F16),
    ] {
        let t = table(
            &dir,
            &format!("{}-{}", stored.name(), read.name()),
            stored,
            5000,
            64,
        );
        fill(&t);
        let cache = HotRowCache::new(100 * stored.row_bytes(64), 2).unwrap();
        for round in 0..20 {
            let keys = skewed_keys(3000, 5000);
            let keys: Vec<u64> = keys.iter().map(|k| (k + round) % 5000).collect();
            assert_eq!(
                gather(&t, &keys, read, Some(&cache)),
                gather(&t, &keys, read, None),
                "{} read as {}",
                stored.name(),
                read.name()
            );
        }
        let stats = cache.stats();
        assert_eq!(stats.hits + stats.misses, 20 * 3000);
        // 100 rows of 5000 under a Zipf stream take a good share of the reads.
        assert!(stats.hits > stats.misses / 3, "{stats:?}");
        assert!(cache.bytes_used() <= cache.capacity_bytes());
        assert!(stats.admissions >= 100 && stats.evictions > 0, "{stats:?}");
    }
}

#[test]
fn hot_rows_stay_while_one_off_rows_pass() {
    let dir = tempfile::tempdir().unwrap();
    let t = table(&dir, "t", DType::F32, 100_000, 8);
    fill(&t);
    let cache = HotRowCache::new(10 * t.dtype().row_bytes(8), 2).unwrap();
    let hot: Vec<u64> = (0..10).map(|k| k * 1000).collect();
    let mut cold = 50_000u64;
    for _ in 0..200 {
        let mut keys = hot.clone();
        // Each cold row is read twice (enough to be a candidate), then never again.
        keys.extend([cold, cold + 1, cold, cold + 1]);
        cold += 2;
        gather(&t, &keys, DType::F32, Some(&cache));
    }
    let before = cache.stats();
    gather(&t, &hot, DType::F32, Some(&cache));
    assert_eq!(
        cache.stats().hits - before.hits,
        10,
        "every hot row is cached"
    );
}

#[test]
fn a_write_through_the_table_empties_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let t = table(&dir, "t", DType::F32, 100, 4);
    fill(&t);
    let cache = HotRowCache::new(1 << 20, 1).unwrap();
    gather(&t, &[5, 6], DType::F32, Some(&cache));
    gather(&t, &[5, 6], DType::F32, Some(&cache));
    assert_eq!(cache.stats().hits, 2);
    t.write_rows(&[5], &[9.0; 4]).unwrap();
    let after = gather(&t, &[5], DType::F32, Some(&cache));
    assert_eq!(after, gather(&t, &[5], DType::F32, None));
    assert_eq!(after[..4], 9f32.to_le_bytes());
    assert_eq!(
        cache.stats().hits,
        2,
        "the written row was not served from the cache"
    );
}

#[test]
fn never_written_rows_are_computed_not_cached() {
    let dir = tempfile::tempdir().unwrap();
    let t = table(&dir, "t", DType::BF16, 1000, 16);
    let cache = HotRowCache::new(1 << 20, 1).unwrap();
    for _ in 0..3 {
        assert_eq!(
            gather(&t, &[1, 2, 3], DType::F32, Some(&cache)),
            gather(&t, &[1, 2, 3], DType::F32, None)
        );
    }
    assert_eq!(cache.stats().admissions, 0);
    assert_eq!(cache.bytes_used(), 0);
}

#[test]
fn one_cache_serves_one_table_until_cleared() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (
        table(&dir, "a", DType::F32, 10, 4),
        table(&dir, "b", DType::F32, 10, 4),
    );
    let cache = HotRowCache::new(1 << 10, 1).unwrap();
    gather(&a, &[1], DType::F32, Some(&cache));
    let mut out = vec![0u8; 16];
    let err = b
        .gather_cached(&[1], DType::F32, &mut out, &cache)
        .unwrap_err();
    assert!(err.to_string().contains("another table"), "{err}");
    cache.clear();
    assert_eq!(cache.stats(), HotRowStats::default());
    b.gather_cached(&[1], DType::F32, &mut out, &cache).unwrap();
}

#[test]
fn bad_arguments_are_refused_and_change_nothing() {
    assert!(HotRowCache::new(0, 1).is_err());
    assert!(HotRowCache::new(1, 0).is_err());
    let dir = tempfile::tempdir().unwrap();
    let t = table(&dir, "t", DType::F32, 10, 4);
    fill(&t);
    // A capacity far beyond the table holds at most the table's rows (and allocates no
    // more than they need).
    let cache = HotRowCache::new(usize::MAX, 1).unwrap();
    let mut out = vec![7u8; 32];
    let err = t
        .gather_cached(&[1, 10], DType::F32, &mut out, &cache)
        .unwrap_err();
    assert!(err.to_string().contains("out of range"), "{err}");
    assert_eq!(out, vec![7u8; 32]);
    assert_eq!(cache.stats(), HotRowStats::default());
    let keys: Vec<u64> = (0..10).chain(0..10).collect();
    gather(&t, &keys, DType::F32, Some(&cache));
    assert_eq!(cache.bytes_used(), 10 * 16);
}
