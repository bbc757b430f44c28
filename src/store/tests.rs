use super::*;

/// sled's background threads may hold the file lock a moment after the last handle of the
/// previous open is dropped; a real restart is a new process and never sees this.
fn reopen(dir: &Path) -> Store {
    for _ in 0..100 {
        if let Ok(s) = Store::open(dir, 1 << 20) {
            return s;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Store::open(dir, 1 << 20).unwrap()
}

fn ident(target: &str, name: &str) -> SeriesIdentity {
    SeriesIdentity::new(target.into(), name, &[("a", "1")], true)
}

#[test]
fn windows_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let id = series_id("t:1", "m", &[("a".into(), "1".into())]);
    {
        let mut s = Store::open(dir.path(), 1 << 20).unwrap();
        s.admit(id, || ident("t:1", "m"), 10).unwrap();
        for i in 0..10 {
            s.append(id, 1000 * i, i as f64, 4);
        }
        let (w, b) = s.take_batch();
        w.write(b).unwrap();
    }
    let s = reopen(dir.path());
    let e = s.get(id).unwrap();
    assert_eq!(*e.identity, ident("t:1", "m"));
    let vals: Vec<f64> = e.samples().iter().map(|x| x.1).collect();
    assert_eq!(vals, vec![6.0, 7.0, 8.0, 9.0]);
    assert_eq!(s.target_series("t:1"), 1);
}

fn write(s: &mut Store) {
    let (w, b) = s.take_batch();
    w.write(b).unwrap();
    if s.compaction_due() {
        s.compact().unwrap();
    }
}

#[test]
fn compaction_keeps_windows_and_bounds_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let ids: Vec<SeriesId> = (0..1000).collect();
    let expected: Vec<(i64, f64)>;
    {
        let mut s = Store::open(dir.path(), 1 << 20).unwrap();
        for id in &ids {
            s.admit(*id, || ident("t", &format!("m{id}")), 10_000)
                .unwrap();
        }
        // 200 scrapes of 1000 series at window 60: 3.2 MB of journal, so compactions.
        for scrape in 0..200i64 {
            for id in &ids {
                s.append(*id, scrape * 1000, (scrape * 7 + *id as i64) as f64, 60);
            }
            write(&mut s);
        }
        expected = s.get(999).unwrap().samples().iter().collect();
        let journal = std::fs::metadata(dir.path().join("history/journal.log"))
            .unwrap()
            .len();
        assert!(journal < 1 << 20, "journal compacted: {journal} bytes left");
    }
    let s = reopen(dir.path());
    let got: Vec<(i64, f64)> = s.get(999).unwrap().samples().iter().collect();
    assert_eq!(got.len(), 60);
    assert_eq!(got, expected);
    assert_eq!(s.len(), 1000);
}

#[test]
fn records_after_a_compaction_replay_after_a_reopen_without_a_journal() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut s = Store::open(dir.path(), 1 << 20).unwrap();
        s.admit(1, || ident("a", "x"), 10).unwrap();
        s.append(1, 1_000, 1.0, 5);
        write(&mut s);
        s.compact().unwrap();
    }
    {
        let mut s = reopen(dir.path());
        s.append(1, 2_000, 2.0, 5);
        write(&mut s);
    }
    let s = reopen(dir.path());
    let vals: Vec<f64> = s.get(1).unwrap().samples().iter().map(|x| x.1).collect();
    assert_eq!(
        vals,
        vec![1.0, 2.0],
        "the record after the compaction is not skipped"
    );
}

#[test]
fn max_series_is_per_target() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Store::open(dir.path(), 1 << 20).unwrap();
    assert!(s.admit(1, || ident("a", "x"), 2).is_ok());
    assert!(s.admit(2, || ident("a", "y"), 2).is_ok());
    assert_eq!(s.admit(3, || ident("a", "z"), 2).unwrap_err(), OverLimit);
    assert!(s.admit(4, || ident("b", "x"), 2).is_ok());
    assert!(
        s.admit(1, || ident("a", "x"), 2).is_ok(),
        "known series stay"
    );
}

#[test]
fn expiry_removes_from_disk() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut s = Store::open(dir.path(), 1 << 20).unwrap();
        s.admit(1, || ident("a", "x"), 10).unwrap();
        s.admit(2, || ident("a", "y"), 10).unwrap();
        s.append(1, 1_000, 1.0, 5);
        s.append(2, 9_000, 1.0, 5);
        let gone: Vec<u64> = s.expire(5_000).into_iter().map(|(id, _)| id).collect();
        assert_eq!(gone, vec![1]);
        let (w, b) = s.take_batch();
        w.write(b).unwrap();
    }
    let s = reopen(dir.path());
    assert!(s.get(1).is_none());
    assert!(s.get(2).is_some());
    assert_eq!(s.target_series("a"), 1);
}

#[test]
fn ids_are_stable() {
    assert_eq!(series_id("t", "m", &[]), series_id("t", "m", &[]));
    assert_ne!(
        series_id("t", "m", &[("ab".into(), "c".into())]),
        series_id("t", "m", &[("a".into(), "bc".into())])
    );
}

#[test]
fn a_data_dir_of_the_per_sample_layout_opens_and_its_old_trees_go() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        for old in ["samples", "series", "capacity"] {
            db.open_tree(old).unwrap().insert(b"k", b"v").unwrap();
        }
        db.flush().unwrap();
    }
    let s = reopen(dir.path());
    assert_eq!(s.len(), 0);
    for old in ["samples", "series", "capacity"] {
        assert!(s.writer.db.tree(old).unwrap().is_empty(), "{old} dropped");
    }
}

/// The journal's ordinals carry across opens: a restart continues the journal it replayed
/// (its series keep their numbers, new ones get the next), and a compaction starts over.
#[test]
fn journal_ordinals_survive_reopens_and_restart_at_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let values = |s: &Store, id: SeriesId| -> Vec<f64> {
        s.get(id).unwrap().samples().iter().map(|x| x.1).collect()
    };
    {
        let mut s = Store::open(dir.path(), 1 << 20).unwrap();
        for id in 1..=3 {
            s.admit(id, || ident("t", &format!("m{id}")), 10).unwrap();
        }
        // Out of order on the second scrape: runs of their own.
        for (ts, order) in [(1_000, [1, 2, 3]), (2_000, [3, 1, 2])] {
            for id in order {
                s.append(id, ts, (ts / 1000 * 10 + id as i64) as f64, 8);
            }
            write(&mut s);
        }
    }
    {
        let mut s = reopen(dir.path());
        assert_eq!(values(&s, 3), vec![13.0, 23.0]);
        s.admit(4, || ident("t", "m4"), 10).unwrap();
        for id in 1..=4 {
            s.append(id, 3_000, 30.0 + id as f64, 8);
        }
        write(&mut s);
    }
    {
        let mut s = reopen(dir.path());
        assert_eq!(values(&s, 1), vec![11.0, 21.0, 31.0]);
        assert_eq!(values(&s, 4), vec![34.0]);
        s.compact().unwrap();
        for id in [4, 2] {
            s.append(id, 4_000, 40.0 + id as f64, 8);
        }
        write(&mut s);
    }
    let s = reopen(dir.path());
    assert_eq!(values(&s, 2), vec![12.0, 22.0, 32.0, 42.0]);
    assert_eq!(values(&s, 4), vec![34.0, 44.0]);
    assert_eq!(values(&s, 3), vec![13.0, 23.0, 33.0]);
}

#[test]
fn a_format_1_snapshot_written_by_an_older_version_loads_and_is_rewritten_as_format_2() {
    let dir = tempfile::tempdir().unwrap();
    let history = dir.path().join("history");
    std::fs::create_dir_all(&history).unwrap();
    let samples: Vec<(i64, f64)> = (0..5).map(|i| (1000 * i, i as f64)).collect();
    let mut entry = Vec::new();
    let identity = codec::encode_identity(&ident("t:1", "m"));
    entry.extend_from_slice(&(identity.len() as u32).to_le_bytes());
    entry.extend_from_slice(&identity);
    codec::encode_window_into(&mut entry, 10, samples.iter().copied());
    let mut body = Vec::new();
    body.extend_from_slice(&0u64.to_le_bytes());
    body.extend_from_slice(&1u64.to_le_bytes());
    body.extend_from_slice(&7u64.to_le_bytes());
    body.extend_from_slice(&(entry.len() as u32).to_le_bytes());
    body.extend_from_slice(&entry);
    let mut file = b"ASWIN\x00\x00\x01".to_vec();
    file.extend_from_slice(&body);
    file.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    std::fs::write(history.join("windows.snap"), file).unwrap();

    let check = |s: &Store| {
        let e = s.get(7).unwrap();
        assert_eq!(*e.identity, ident("t:1", "m"));
        assert_eq!(e.samples().iter().collect::<Vec<_>>(), samples);
        assert_eq!(e.capacity, 10);
    };
    {
        let mut s = Store::open(dir.path(), 1 << 20).unwrap();
        check(&s);
        s.compact().unwrap();
    }
    // The single file gives way to segments, format 2.
    assert!(!history.join("windows.snap").exists());
    let k = super::files::segment(7);
    let snap = std::fs::read(history.join(format!("windows.{k}.snap"))).unwrap();
    assert_eq!(&snap[..8], b"ASWIN\x00\x00\x02");
    check(&reopen(dir.path()));
}

#[test]
fn seasonal_profiles_survive_reopen_and_go_with_their_series() {
    let dir = tempfile::tempdir().unwrap();
    let id = series_id("t:1", "m", &[("a".into(), "1".into())]);
    {
        let mut s = Store::open(dir.path(), 1 << 20).unwrap();
        s.admit(id, || ident("t:1", "m"), 10).unwrap();
        s.append(id, 1000, 1.0, 4);
        s.set_profile_bucket(id, "rule@1", 7, b"bucket-seven");
        s.set_profile_bucket(id, "rule@1", 2, b"bucket-two");
        s.set_profile_bucket(id, "rule@10", 2, b"other rule");
        write(&mut s);
    }
    let mut s = reopen(dir.path());
    let p = s.profile(id, "rule@1").unwrap();
    assert_eq!(
        p,
        vec![(2, b"bucket-two".to_vec()), (7, b"bucket-seven".to_vec())]
    );
    assert_eq!(s.profile(id, "rule@10").unwrap().len(), 1);
    assert!(s.profile(id + 1, "rule@1").unwrap().is_empty());
    s.remove(id);
    write(&mut s);
    assert!(s.profile(id, "rule@1").unwrap().is_empty());
    assert!(s.profile(id, "rule@10").unwrap().is_empty());
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for f in std::fs::read_dir(from).unwrap() {
        let f = f.unwrap();
        if f.file_type().unwrap().is_dir() {
            copy_dir(&f.path(), &to.join(f.file_name()));
        } else {
            std::fs::copy(f.path(), to.join(f.file_name())).unwrap();
        }
    }
}

/// A kill -9 while a compaction is between segments, or between the last segment and
/// emptying the journal: each series is its newest file's plus the journal after it, so
/// nothing is lost or applied twice, and the journal goes on from there.
#[test]
fn a_compaction_killed_between_segments_loses_nothing() {
    let root = tempfile::tempdir().unwrap();
    let live = root.path().join("live");
    let all = |s: &Store| -> Vec<(SeriesId, Vec<(i64, f64)>)> {
        let mut v: Vec<_> = (0..=300)
            .filter_map(|id| Some((id, s.get(id)?.samples().iter().collect())))
            .collect();
        v.sort_by_key(|x| x.0);
        v
    };
    let expected = {
        let mut s = Store::open(&live, 1 << 20).unwrap();
        for id in 1..=200 {
            s.admit(id, || ident("t", &format!("m{id}")), 1000).unwrap();
            s.append(id, 1_000, id as f64, 8);
        }
        write(&mut s);
        s.compact().unwrap();
        for id in 1..=200 {
            s.append(id, 2_000, 1000.0 + id as f64, 8);
        }
        s.remove(5);
        s.admit(201, || ident("t", "m201"), 1000).unwrap();
        s.append(201, 2_000, 201.0, 8);
        let (w, b) = s.take_batch();
        w.write(b).unwrap();
        copy_dir(&live, &root.path().join("before"));
        s.compact().unwrap();
        all(&s)
    };
    assert_eq!(expected.len(), 200);
    let segments = |dir: &Path, range: std::ops::Range<usize>| {
        for k in range {
            let name = format!("windows.{k}.snap");
            std::fs::copy(
                live.join("history").join(&name),
                dir.join("history").join(&name),
            )
            .unwrap();
        }
    };
    for written in [1, 4, files::SEGMENTS] {
        let crashed = root.path().join(format!("crashed-{written}"));
        copy_dir(&root.path().join("before"), &crashed);
        segments(&crashed, 0..written);
        {
            let mut s = reopen(&crashed);
            assert_eq!(all(&s), expected, "{written} segments written");
            // The journal goes on after the interrupted compaction's records.
            for id in [1, 201] {
                s.append(id, 3_000, 3.0, 8);
            }
            let (w, b) = s.take_batch();
            w.write(b).unwrap();
        }
        let s = reopen(&crashed);
        assert_eq!(values_of(&s, 201), vec![201.0, 3.0]);
        assert_eq!(values_of(&s, 1), vec![1.0, 1001.0, 3.0]);
        assert_eq!(values_of(&s, 2), vec![2.0, 1002.0]);
        assert!(s.get(5).is_none());
    }
}

fn values_of(s: &Store, id: SeriesId) -> Vec<f64> {
    s.get(id).unwrap().samples().iter().map(|x| x.1).collect()
}

/// XOR is not tried at every compaction for values it did not shrink, but within eight: a
/// series whose values turn regular (but not decimal) is compressed again.
#[test]
fn xor_is_retried_for_noisy_series_within_eight_compactions() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Store::open(dir.path(), 1 << 20).unwrap();
    s.admit(1, || ident("t", "m"), 10).unwrap();
    for i in 0..20u64 {
        let noisy = f64::from_bits(i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 2);
        s.append(1, 1000 * i as i64, noisy, 20);
    }
    write(&mut s);
    s.compact().unwrap();
    assert!(s.get(1).unwrap().values_raw);
    for i in 20..40 {
        s.append(1, 1000 * i, std::f64::consts::PI, 20);
    }
    write(&mut s);
    let mut compactions = 0;
    while s.get(1).unwrap().values_raw {
        s.compact().unwrap();
        compactions += 1;
        assert!(compactions <= 8);
    }
    assert_eq!(
        values_of(&reopen_after(s, dir.path()), 1),
        vec![std::f64::consts::PI; 20]
    );
}

fn reopen_after(s: Store, dir: &Path) -> Store {
    drop(s);
    reopen(dir)
}

/// The journal grows until the snapshot, the journal and one new segment would reach 1.5×
/// the raw windows, within half and all of them: windows that compress well are compacted
/// about half as often as noise.
#[test]
fn the_journal_may_grow_further_when_the_snapshot_is_small() {
    let scrapes_between_compactions = |value: &dyn Fn(u64, i64) -> f64| {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(dir.path(), 1 << 20).unwrap();
        for id in 0..8000u64 {
            s.admit(id, || ident("t", &format!("m{id}")), 10_000)
                .unwrap();
        }
        let scrape = |s: &mut Store, k: i64| {
            for id in 0..8000u64 {
                s.append(id, 1000 * k, value(id, k), 61);
            }
            let (w, b) = s.take_batch();
            w.write(b).unwrap();
        };
        for k in 0..61 {
            scrape(&mut s, k);
        }
        s.compact().unwrap();
        let mut k = 61;
        while !s.compaction_due() {
            scrape(&mut s, k);
            k += 1;
        }
        k - 61
    };
    let decimal = scrapes_between_compactions(&|id, k| (id as i64 + k % 7) as f64 / 10.0);
    let noise = scrapes_between_compactions(&|id, k| {
        f64::from_bits((id * 1_000_003 + k as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 2)
    });
    assert!((27..=33).contains(&noise), "noise: {noise} scrapes");
    assert!((56..=62).contains(&decimal), "decimals: {decimal} scrapes");
}

/// A compaction that fails half-way (here a segment's temporary file can't be created, as
/// on a full disk) leaves new and old segments; the journal's room is reckoned from what the
/// files then hold, not from the segments written before the failure. The journal is kept,
/// so a reopen still finds every sample, and the next compaction succeeds.
#[test]
fn a_compaction_that_fails_half_way_counts_the_snapshot_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let history = dir.path().join("history");
    let on_disk = |s: &Store| s.writer.files.lock().unwrap().snapshot_size();
    let mut s = Store::open(dir.path(), 1 << 20).unwrap();
    for id in 1..=400 {
        s.admit(id, || ident("t", &format!("m{id}")), 1000).unwrap();
        for k in 0..20 {
            s.append(id, 1_000 * k, (id * 100 + k as u64) as f64 * 0.37, 20);
        }
    }
    write(&mut s);
    s.compact().unwrap();
    let before = s.snapshot_bytes;
    assert_eq!(before, on_disk(&s));
    for id in 1..=400 {
        s.append(id, 30_000, 1.5, 20);
    }
    let (w, b) = s.take_batch();
    w.write(b).unwrap();
    drop(w);
    let blocker = history.join("windows.3.snap.tmp");
    std::fs::create_dir(&blocker).unwrap();
    assert!(s.compact().is_err());
    assert_eq!(s.snapshot_bytes, on_disk(&s), "counted from the files");
    assert!(
        s.snapshot_bytes > before / 2,
        "old segments 3..8 are counted too"
    );
    assert!(s.journal_bytes > 0, "the journal is kept");
    std::fs::remove_dir(&blocker).unwrap();
    s.compact().unwrap();
    assert_eq!(s.snapshot_bytes, on_disk(&s));
    drop(s);
    let s = reopen(dir.path());
    for id in [1, 200, 400] {
        assert_eq!(values_of(&s, id).last(), Some(&1.5));
        assert_eq!(values_of(&s, id).len(), 20);
    }
}
