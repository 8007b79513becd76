use super::*;
use crate::codec::DType;
use crate::init::Initializer;
use crate::journal::Journal;

fn header(rows: u64, dim: u64) -> Header {
    Header {
        dtype: DType::F32,
        num_rows: rows,
        dim,
        init: Initializer::normal(0.1, 1).unwrap(),
        first_row: 0,
    }
}

fn sgd(lr: f32) -> Optimizer {
    Optimizer::new("sgd", lr, 0.0, 0.0, 0.0, 0.0).unwrap()
}

#[test]
fn sgd_push_sums_duplicates_and_counts_steps() {
    let dir = tempfile::tempdir().unwrap();
    let t = TrainableTable::create(dir.path().join("t"), header(100, 3), sgd(0.5), false).unwrap();
    let before = t.params().gather(&[4, 9]).unwrap();
    let outcome = t
        .push(
            &[4, 9, 4],
            &[1.0, 1.0, 1.0, 2.0, 2.0, 2.0, 3.0, 3.0, 3.0],
            None,
        )
        .unwrap();
    assert_eq!(outcome, PushOutcome { rows: 2, step: 1 });
    let after = t.params().gather(&[4, 9]).unwrap();
    for d in 0..3 {
        assert!((after[d] - (before[d] - 0.5 * 4.0)).abs() < 1e-6);
        assert!((after[3 + d] - (before[3 + d] - 0.5 * 2.0)).abs() < 1e-6);
    }
    assert_eq!(t.push(&[1], &[0.0; 3], None).unwrap().step, 2);
    assert_eq!(t.push(&[1], &[0.0; 3], Some(10)).unwrap().step, 10);
    assert_eq!(t.push(&[1], &[0.0; 3], Some(7)).unwrap().step, 7);
    assert_eq!(t.step(), 10);
    assert!(t.state().is_none());
}

#[test]
fn bad_pushes_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let opt = Optimizer::new("adam", 0.1, 1e-8, 0.9, 0.999, 0.0).unwrap();
    let t = TrainableTable::create(dir.path().join("t"), header(10, 2), opt, false).unwrap();
    let msg = |r: Result<PushOutcome>| r.unwrap_err().to_string();
    assert!(msg(t.push(&[1, 2], &[0.0; 3], None)).contains("expected 2 keys x dim 2"));
    assert!(msg(t.push(&[], &[], None)).contains("no keys"));
    assert!(msg(t.push(&[1], &[0.0; 2], Some(0))).contains("step counts from 1"));
    assert!(msg(t.push(&[1, 10], &[0.0; 4], None)).contains("keys[1] = 10"));
    assert!(msg(t.push(&[1, 2], &[0.0, 0.0, f32::NAN, 1.0], None)).contains("keys[1] is NaN"));
    assert_eq!(t.step(), 0);
    assert_eq!(t.params().written_count(), 0);
    assert!(t.dirty_keys().is_empty());

    let lenient =
        TrainableTable::create(dir.path().join("u"), header(10, 2), sgd(1.0), true).unwrap();
    lenient.push(&[3], &[f32::INFINITY, 0.0], None).unwrap();
    assert_eq!(lenient.params().gather(&[3]).unwrap()[0], f32::NEG_INFINITY);
}

#[test]
fn optimizer_state_lives_beside_the_rows_and_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t");
    let opt = Optimizer::new("adagrad", 0.1, 1e-10, 0.0, 0.0, 0.5).unwrap();
    let t = TrainableTable::create(&path, header(50, 4), opt, false).unwrap();
    assert_eq!(t.state().unwrap().gather(&[7]).unwrap(), vec![0.5; 4]);
    t.push(&[7, 8], &[1.0; 8], None).unwrap();
    assert_eq!(t.state().unwrap().gather(&[7]).unwrap(), vec![1.5; 4]);
    assert_eq!(t.dirty_keys(), vec![7, 8]);
    t.clear_dirty();
    assert!(t.dirty_keys().is_empty());
    assert_eq!(t.written_keys(), vec![7, 8]);
    let rows = t.params().gather(&[7, 8]).unwrap();
    t.flush().unwrap();
    drop(t);
    let reopened = TrainableTable::open(&path, opt, false, 1).unwrap();
    assert_eq!(reopened.params().gather(&[7, 8]).unwrap(), rows);
    assert_eq!(reopened.step(), 1);
    let adam = Optimizer::new("adam", 0.1, 1e-8, 0.9, 0.999, 0.0).unwrap();
    assert!(TrainableTable::open(&path, adam, false, 1).is_err());
}

#[test]
fn concurrent_pushes_lose_no_update() {
    let dir = tempfile::tempdir().unwrap();
    let t =
        TrainableTable::create(dir.path().join("t"), header(1000, 8), sgd(0.01), false).unwrap();
    let initial = t.params().gather(&(0..1000).collect::<Vec<_>>()).unwrap();
    let threads = 4;
    let pushes = 25;
    std::thread::scope(|s| {
        for worker in 0..threads {
            let t = &t;
            s.spawn(move || {
                for p in 0..pushes {
                    // Overlapping keys across workers, with repeats inside each push.
                    let keys: Vec<u64> =
                        (0..5000u64).map(|i| (i * 7 + p + worker) % 1000).collect();
                    t.push(&keys, &vec![1.0; keys.len() * 8], None).unwrap();
                }
            });
        }
    });
    let mut expected = initial;
    for worker in 0..threads {
        for p in 0..pushes {
            for i in 0..5000u64 {
                let k = ((i * 7 + p + worker) % 1000) as usize;
                for d in 0..8 {
                    expected[k * 8 + d] -= 0.01;
                }
            }
        }
    }
    let got = t.params().gather(&(0..1000).collect::<Vec<_>>()).unwrap();
    for (g, e) in got.iter().zip(&expected) {
        assert!((g - e).abs() < 1e-3, "{g} vs {e}");
    }
    assert_eq!(t.step(), threads * pushes);
}

#[test]
fn encoded_half_precision_pushes_sum_repeats_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let t = TrainableTable::create(dir.path().join("t"), header(20, 2), sgd(1.0), false).unwrap();
    let before = t.params().gather(&[3, 5]).unwrap();
    let grads = [1.0f32, 2.0, 0.5, 0.5, 0.25, -1.0];
    let mut encoded = vec![0u8; 12];
    crate::codec::encode_f32(DType::BF16, &grads, &mut encoded);
    let outcome = t
        .push_encoded(&[5, 3, 5], DType::BF16, &encoded, None, Origin::default())
        .unwrap();
    assert_eq!(outcome.rows, 2);
    let after = t.params().gather(&[3, 5]).unwrap();
    let expected = [
        before[0] - 0.5,
        before[1] - 0.5,
        before[2] - 1.25,
        before[3] - 1.0,
    ];
    for (a, e) in after.iter().zip(expected) {
        assert!((a - e).abs() < 1e-6, "{a} vs {e}");
    }
    let err = t
        .push_encoded(&[1], DType::F16, &[0u8; 3], None, Origin::default())
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("expected 1 keys x dim 2 x float16"),
        "{err}"
    );
}

#[test]
fn a_push_can_return_the_rows_it_left() {
    let dir = tempfile::tempdir().unwrap();
    let adam = Optimizer::new("adam", 0.1, 1e-8, 0.9, 0.999, 0.0).unwrap();
    let returning =
        TrainableTable::create(dir.path().join("a"), header(50, 4), adam, false).unwrap();
    let plain = TrainableTable::create(dir.path().join("b"), header(50, 4), adam, false).unwrap();
    let keys = [7, 3, 7, 49];
    let grads: Vec<f32> = (0..16).map(|i| i as f32 - 5.0).collect();
    let mut buffer = vec![0u8; 64];
    codec::encode_f32(DType::F32, &grads, &mut buffer);
    let outcome = returning
        .push_returning_rows(&keys, DType::F32, &mut buffer, None, Origin::default())
        .unwrap();
    assert_eq!(outcome, plain.push(&keys, &grads, None).unwrap());
    let mut rows = vec![0f32; 16];
    codec::decode_to_f32(DType::F32, &buffer, &mut rows);
    assert_eq!(rows, plain.params().gather(&keys).unwrap());
    assert_eq!(rows, returning.params().gather(&keys).unwrap());
    // A refused push leaves the buffer and the table as they were.
    let before = buffer.clone();
    assert!(returning
        .push_returning_rows(
            &[50],
            DType::F32,
            &mut buffer[..16],
            None,
            Origin::default()
        )
        .is_err());
    assert_eq!(buffer, before);
    assert_eq!(returning.step(), 1);
}

#[test]
fn an_uncommitted_push_is_undone_exactly_and_a_committed_one_kept() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, _) = Journal::open(dir.path().join("journal")).unwrap();
    let journal = Arc::new(journal);
    let adam = Optimizer::new("adam", 0.1, 1e-8, 0.9, 0.999, 0.0).unwrap();
    let t = TrainableTable::create(dir.path().join("t"), header(100, 4), adam, false).unwrap();
    t.attach_journal(journal.clone()).unwrap();
    let origin = Origin {
        client_id: "c",
        sequence: 7,
    };
    let grads = [1.0f32; 8];
    let bytes = |g: &[f32]| g.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>();
    t.push_encoded(&[1, 2], DType::F32, &bytes(&grads), None, origin)
        .unwrap();
    let after_first = (
        t.params().gather(&[1, 2, 3]).unwrap(),
        t.state().unwrap().gather(&[1, 2, 3]).unwrap(),
    );
    let written_after_first = t.params().written_count();
    t.push_encoded(&[2, 3], DType::F32, &bytes(&grads), None, Origin::default())
        .unwrap();
    let second = t.last_push_token();
    assert_ne!(t.params().gather(&[2, 3]).unwrap(), after_first.0[4..]);
    assert_eq!(t.params().written_count(), 3);

    // The journal holds both; a recovery that finds them leaves everything as it is.
    let (_, records) = Journal::open(dir.path().join("journal")).unwrap();
    assert_eq!(records.len(), 2);
    assert_eq!(
        (
            records[0].client_id.as_str(),
            records[0].sequence,
            records[0].step
        ),
        ("c", 7, 1)
    );
    assert_eq!(records[1].token, second);
    assert_eq!(t.recover(|token| token <= second).unwrap(), None);

    // Without the second push's record, it is undone: rows, state and written marks.
    let undone = t.recover(|token| token < second).unwrap();
    assert_eq!(
        undone,
        Some(RolledBack {
            token: second,
            rows: 2
        })
    );
    assert_eq!(t.params().gather(&[1, 2, 3]).unwrap(), after_first.0);
    assert_eq!(
        t.state().unwrap().gather(&[1, 2, 3]).unwrap(),
        after_first.1
    );
    assert_eq!(t.params().written_count(), written_after_first);
    assert_eq!(t.params().written(&[3]).unwrap(), vec![false]);
    // Undone once only.
    assert_eq!(t.recover(|_| false).unwrap(), None);
}

#[test]
fn the_undo_log_survives_reopening_the_table() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, _) = Journal::open(dir.path().join("journal")).unwrap();
    let path = dir.path().join("t");
    let before;
    let token;
    {
        let t = TrainableTable::create(&path, header(1000, 8), sgd(1.0), false).unwrap();
        t.attach_journal(Arc::new(journal)).unwrap();
        before = t.params().gather(&[10, 900]).unwrap();
        t.push(&[10, 900], &[0.5; 16], None).unwrap();
        token = t.last_push_token();
        t.flush().unwrap();
    }
    let t = TrainableTable::open(&path, sgd(1.0), false, 1).unwrap();
    assert_eq!(t.last_push_token(), token);
    assert!(t.recover(|_| false).unwrap().is_some());
    assert_eq!(t.params().gather(&[10, 900]).unwrap(), before);
}

#[test]
fn shards_copy_their_rows_and_state_from_another_layout_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let adam = Optimizer::new("adam", 0.1, 1e-8, 0.9, 0.999, 0.0).unwrap();
    let whole =
        TrainableTable::create(dir.path().join("whole"), header(100, 2), adam, false).unwrap();
    whole.push(&[3, 49, 50, 97], &[1.0; 8], None).unwrap();
    whole.push(&[3, 60], &[-2.0; 4], None).unwrap();
    let shard = |name: &str, first_row: u64, rows: u64| {
        let mut h = header(rows, 2);
        h.first_row = first_row;
        TrainableTable::create(dir.path().join(name), h, adam, false).unwrap()
    };
    let (low, high) = (shard("low", 0, 50), shard("high", 50, 50));
    assert_eq!(low.copy_rows_from(&whole).unwrap(), 2);
    assert_eq!(high.copy_rows_from(&whole).unwrap(), 3);
    let raw = |t: &TrainableTable, keys: &[u64]| {
        let state = t.state().unwrap().read_raw_rows(keys).unwrap();
        (t.params().read_raw_rows(keys).unwrap(), state)
    };
    assert_eq!(raw(&low, &[3, 49, 10]), raw(&whole, &[3, 49, 10]));
    assert_eq!(raw(&high, &[0, 10, 47, 5]), raw(&whole, &[50, 60, 97, 55]));
    assert_eq!(high.params().written_count(), 3);
    // And back into one table.
    let again = shard("again", 0, 100);
    assert_eq!(
        again.copy_rows_from(&low).unwrap() + again.copy_rows_from(&high).unwrap(),
        5
    );
    let all: Vec<u64> = (0..100).collect();
    assert_eq!(raw(&again, &all), raw(&whole, &all));
    let sgd_shard =
        TrainableTable::create(dir.path().join("sgd"), header(50, 2), sgd(0.1), false).unwrap();
    assert!(sgd_shard
        .copy_rows_from(&whole)
        .unwrap_err()
        .to_string()
        .contains("shards differ"));
}

#[test]
fn a_table_on_read_only_media_serves_its_rows_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t");
    let opt = Optimizer::new("adam", 0.1, 1e-8, 0.9, 0.999, 0.0).unwrap();
    let t = TrainableTable::create(&path, header(100, 4), opt, false).unwrap();
    t.push(&[3, 7], &[1.0; 8], None).unwrap();
    t.flush().unwrap();
    let rows = t.params().gather(&[3, 7, 50]).unwrap();
    drop(t);
    let files = |dir: &Path| -> Vec<(std::path::PathBuf, Vec<u8>)> {
        let mut all: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let p = e.unwrap().path();
                let bytes = std::fs::read(&p).unwrap();
                (p, bytes)
            })
            .collect();
        all.sort();
        all
    };
    let before = files(&path);
    for (file, _) in &before {
        let mut permissions = std::fs::metadata(file).unwrap().permissions();
        permissions.set_readonly(true);
        std::fs::set_permissions(file, permissions).unwrap();
    }
    let served = TrainableTable::open_read_only(&path, opt, 1).unwrap();
    assert_eq!(served.params().gather(&[3, 7, 50]).unwrap(), rows);
    assert_eq!(served.params().written_count(), 2);
    let refused = served.push(&[3], &[1.0; 4], None).unwrap_err().to_string();
    assert!(refused.contains("read-only media"), "{refused}");
    assert_eq!(served.params().gather(&[3, 7, 50]).unwrap(), rows);
    assert!(served.verify().is_empty(), "the checksums read back");
    drop(served);
    assert_eq!(files(&path), before, "no byte of any file changed");
}
