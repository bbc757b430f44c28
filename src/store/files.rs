//! The sample history on disk, in our own files beside sled's: `journal.log`, each scrape's
//! values appended and synced, and the snapshot, every window, in `SEGMENTS` files
//! `windows.<k>.snap` by series. A compaction replaces the segments one after another, each
//! atomically, then empties the journal: one file at a time, so disk peaks at the snapshot +
//! journal + one segment (a single file peaked at two snapshots + journal, 3× the raw
//! windows). sled keeps alerts, profiles and outboxes: fed 100k samples a second as large
//! values it grew to 1 GB on disk and 5 GB of memory in 80 s, where these files hold ~1.5×
//! the raw windows.

use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

const JOURNAL: &str = "journal.log";
/// The single snapshot file before segments; still loaded, removed by the next compaction.
const SNAPSHOT: &str = "windows.snap";
/// Snapshot files; a series' file is `segment(id)`.
pub const SEGMENTS: usize = 8;
/// The last byte is the entry format (`snapshot.rs`); format 1 files still load.
const SNAPSHOT_MAGIC: &[u8; 8] = b"ASWIN\x00\x00\x02";
const SNAPSHOT_FORMATS: [u8; 2] = [1, 2];
/// Journal frame: payload length, CRC-32 of seq and payload, seq.
const FRAME: usize = 4 + 4 + 8;

/// Journal records: (seq, payload).
pub type Records = Vec<(u64, Vec<u8>)>;
/// A snapshot as read: the last journal seq it includes, its entries (series id, encoded)
/// and their format.
#[derive(Debug, PartialEq)]
pub struct Snapshot {
    pub through: u64,
    pub format: u8,
    pub entries: Vec<(u64, Vec<u8>)>,
}

/// The snapshot file that holds series `id`.
pub fn segment(id: u64) -> usize {
    // Ids are hashes already; the multiply spreads any that are not.
    (id.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 61) as usize % SEGMENTS
}

fn segment_name(k: usize) -> String {
    format!("windows.{k}.snap")
}

/// Every snapshot file name: the old single file, then the segments.
fn snapshot_names() -> impl Iterator<Item = String> {
    std::iter::once(SNAPSHOT.to_string()).chain((0..SEGMENTS).map(segment_name))
}

/// What the files held at open.
#[derive(Default)]
pub struct Loaded {
    /// Every snapshot file read, the oldest (lowest `through`) first: a series in two of
    /// them (a compaction interrupted after the old single file) is the later one's.
    pub snapshots: Vec<Snapshot>,
    /// Journal records in order, up to the first torn or corrupt one.
    pub journal: Records,
    /// Something was unreadable and set aside or cut off; say so in the log.
    pub repaired: Vec<String>,
}

/// Open handles on the history files of one data dir.
pub struct HistoryFiles {
    dir: PathBuf,
    journal: File,
}

impl HistoryFiles {
    /// Opens (or creates) the files and reads them; a torn journal tail (a kill -9 during an
    /// append) is cut off, a corrupt snapshot file is renamed aside.
    pub fn open(dir: &Path) -> io::Result<(Self, Loaded)> {
        std::fs::create_dir_all(dir)?;
        let mut loaded = Loaded::default();
        for name in snapshot_names() {
            // A compaction's leftover, from a crash while writing it.
            let tmp = dir.join(format!("{name}.tmp"));
            if tmp.exists() {
                std::fs::remove_file(&tmp)?;
            }
            let snap = dir.join(&name);
            match read_snapshot(&snap) {
                Ok(s) => loaded.snapshots.extend(s),
                Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                    let aside = dir.join(format!("{name}.corrupt"));
                    std::fs::rename(&snap, &aside)?;
                    loaded.repaired.push(format!(
                        "{} is corrupt ({e}); moved to {}",
                        snap.display(),
                        aside.display()
                    ));
                }
                Err(e) => return Err(e),
            }
        }
        loaded.snapshots.sort_by_key(|s| s.through);
        let mut journal = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(dir.join(JOURNAL))?;
        let (records, good_len) = read_journal(&mut journal)?;
        let len = journal.metadata()?.len();
        if good_len < len {
            journal.set_len(good_len)?;
            loaded.repaired.push(format!(
                "journal cut at byte {good_len} of {len} (a write interrupted by a crash)"
            ));
        }
        loaded.journal = records;
        Ok((
            Self {
                dir: dir.to_path_buf(),
                journal,
            },
            loaded,
        ))
    }

    /// Appends records and syncs them. A failed append is cut back off, so a later one does
    /// not land behind torn bytes.
    pub fn append(&mut self, records: &[(u64, Vec<u8>)]) -> io::Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let before = self.journal.metadata()?.len();
        let mut buf = Vec::with_capacity(records.iter().map(|r| FRAME + r.1.len()).sum());
        for (seq, payload) in records {
            let mut crc = crc32fast::Hasher::new();
            crc.update(&seq.to_le_bytes());
            crc.update(payload);
            buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            buf.extend_from_slice(&crc.finalize().to_le_bytes());
            buf.extend_from_slice(&seq.to_le_bytes());
            buf.extend_from_slice(payload);
        }
        let written = self
            .journal
            .write_all(&buf)
            .and_then(|()| self.journal.sync_data());
        if written.is_err() {
            let _ = self.journal.set_len(before);
        }
        written
    }

    /// Replaces snapshot segment `k` with `count` entries that `entries` writes (with
    /// `entry`), including the journal through `through`. Atomic: a
    /// crash leaves the old segment or the new one, and the journal whole until
    /// `finish_compaction`.
    pub fn write_segment(
        &mut self,
        k: usize,
        through: u64,
        count: u64,
        entries: impl FnOnce(&mut dyn Write) -> io::Result<()>,
    ) -> io::Result<()> {
        let name = segment_name(k);
        let tmp = self.dir.join(format!("{name}.tmp"));
        let written = write_snapshot_file(&tmp, through, count, entries);
        if written.is_err() {
            // A full disk, say: the half-written file would hold on to the space.
            let _ = std::fs::remove_file(&tmp);
        }
        written?;
        std::fs::rename(&tmp, self.dir.join(name))?;
        File::open(&self.dir)?.sync_all()?;
        Ok(())
    }

    /// After every segment was written through the same seq: the old single snapshot and
    /// the journal are superseded.
    pub fn finish_compaction(&mut self) -> io::Result<()> {
        match std::fs::remove_file(self.dir.join(SNAPSHOT)) {
            Ok(()) => File::open(&self.dir)?.sync_all()?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        self.journal.set_len(0)?;
        self.journal.seek(SeekFrom::End(0))?;
        Ok(())
    }

    /// Bytes of every history file.
    pub fn size(&self) -> u64 {
        self.bytes_of(std::iter::once(JOURNAL.to_string()).chain(snapshot_names()))
    }

    /// Bytes of the snapshot files.
    pub fn snapshot_size(&self) -> u64 {
        self.bytes_of(snapshot_names())
    }

    fn bytes_of(&self, names: impl Iterator<Item = String>) -> u64 {
        names
            .filter_map(|f| std::fs::metadata(self.dir.join(f)).ok())
            .map(|m| m.len())
            .sum()
    }
}

/// One snapshot entry: series id, window length, encoded window.
#[cfg(test)]
pub fn entry(out: &mut dyn Write, id: u64, window: &[u8]) -> io::Result<()> {
    let mut entries = Entries::new(out);
    entries.push(id, |b| b.extend_from_slice(window))?;
    entries.finish()
}

/// Snapshot entries (series id, window length, encoded window) gathered into large writes:
/// written one by one, the checksum and the copies ran over a few hundred bytes at a time.
pub struct Entries<'a> {
    out: &'a mut dyn Write,
    buf: Vec<u8>,
}

impl<'a> Entries<'a> {
    const CHUNK: usize = 256 << 10;

    pub fn new(out: &'a mut dyn Write) -> Self {
        Self {
            out,
            buf: Vec::with_capacity(Self::CHUNK + (16 << 10)),
        }
    }

    /// Appends series `id`'s entry, which `encode` appends to the buffer it is given.
    pub fn push(&mut self, id: u64, encode: impl FnOnce(&mut Vec<u8>)) -> io::Result<()> {
        self.buf.extend_from_slice(&id.to_le_bytes());
        let len_at = self.buf.len();
        self.buf.extend_from_slice(&[0; 4]);
        encode(&mut self.buf);
        let len = (self.buf.len() - len_at - 4) as u32;
        self.buf[len_at..len_at + 4].copy_from_slice(&len.to_le_bytes());
        if self.buf.len() >= Self::CHUNK {
            self.out.write_all(&self.buf)?;
            self.buf.clear();
        }
        Ok(())
    }

    pub fn finish(self) -> io::Result<()> {
        self.out.write_all(&self.buf)
    }
}

/// Writes a whole snapshot file at `path` (synced) and returns its bytes.
fn write_snapshot_file(
    path: &Path,
    through: u64,
    count: u64,
    entries: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> io::Result<u64> {
    let mut out = Checksummed {
        // Smaller than `Entries`' chunks, which then go straight to the file.
        inner: io::BufWriter::with_capacity(64 << 10, File::create(path)?),
        crc: crc32fast::Hasher::new(),
    };
    out.inner.write_all(SNAPSHOT_MAGIC)?;
    out.write_all(&through.to_le_bytes())?;
    out.write_all(&count.to_le_bytes())?;
    entries(&mut out)?;
    let crc = out.crc.finalize();
    out.inner.write_all(&crc.to_le_bytes())?;
    let file = out.inner.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    file.metadata().map(|m| m.len())
}

/// A writer that checksums what passes through it.
struct Checksummed<W: Write> {
    inner: W,
    crc: crc32fast::Hasher,
}

impl<W: Write> Write for Checksummed<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

fn read_snapshot(path: &Path) -> io::Result<Option<Snapshot>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if bytes.len() < 8 + 16 + 4
        || bytes[..7] != SNAPSHOT_MAGIC[..7]
        || !SNAPSHOT_FORMATS.contains(&bytes[7])
    {
        return Err(invalid("not a windows snapshot"));
    }
    let format = bytes[7];
    let (body, crc) = bytes[8..].split_at(bytes.len() - 8 - 4);
    let crc = u32::from_le_bytes(crc.try_into().map_err(|_| invalid("checksum"))?);
    if crc32fast::hash(body) != crc {
        return Err(invalid("checksum mismatch"));
    }
    let u64_at = |b: &[u8], i: usize| -> io::Result<u64> {
        let s = b.get(i..i + 8).ok_or_else(|| invalid("short"))?;
        Ok(u64::from_le_bytes(
            s.try_into().map_err(|_| invalid("short"))?,
        ))
    };
    let through = u64_at(body, 0)?;
    let count = u64_at(body, 8)?;
    let mut rest = &body[16..];
    let mut windows = Vec::with_capacity(count.min(1 << 24) as usize);
    while !rest.is_empty() {
        let id = u64_at(rest, 0)?;
        let len = rest
            .get(8..12)
            .and_then(|l| l.try_into().ok())
            .map(u32::from_le_bytes)
            .ok_or_else(|| invalid("short entry"))? as usize;
        let w = rest
            .get(12..12 + len)
            .ok_or_else(|| invalid("short window"))?;
        windows.push((id, w.to_vec()));
        rest = &rest[12 + len..];
    }
    if windows.len() as u64 != count {
        return Err(invalid("entry count"));
    }
    Ok(Some(Snapshot {
        through,
        format,
        entries: windows,
    }))
}

/// Every whole record, and the length up to the last one.
fn read_journal(file: &mut File) -> io::Result<(Records, u64)> {
    file.seek(SeekFrom::Start(0))?;
    let mut r = BufReader::new(&*file);
    let mut records = Vec::new();
    let mut good = 0u64;
    loop {
        let mut frame = [0u8; FRAME];
        if r.read_exact(&mut frame).is_err() {
            break;
        }
        let len = u32::from_le_bytes([frame[0], frame[1], frame[2], frame[3]]) as usize;
        let crc = u32::from_le_bytes([frame[4], frame[5], frame[6], frame[7]]);
        let seq_bytes: [u8; 8] = frame[8..16].try_into().unwrap_or_default();
        let mut payload = vec![0u8; len.min(64 << 20)];
        if len > 64 << 20 || r.read_exact(&mut payload).is_err() {
            break;
        }
        let mut h = crc32fast::Hasher::new();
        h.update(&seq_bytes);
        h.update(&payload);
        if h.finalize() != crc {
            break;
        }
        records.push((u64::from_le_bytes(seq_bytes), payload));
        good += (FRAME + len) as u64;
    }
    Ok((records, good))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_and_snapshot_round_trip_and_a_torn_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut f, loaded) = HistoryFiles::open(dir.path()).unwrap();
            assert!(loaded.snapshots.is_empty() && loaded.journal.is_empty());
            f.append(&[(1, b"one".to_vec()), (2, b"two".to_vec())])
                .unwrap();
        }
        // A crash mid-append: half a frame at the end.
        let journal = dir.path().join(JOURNAL);
        let mut raw = OpenOptions::new().append(true).open(&journal).unwrap();
        raw.write_all(&[9, 0, 0, 0, 1, 2]).unwrap();
        drop(raw);
        let (mut f, loaded) = HistoryFiles::open(dir.path()).unwrap();
        assert_eq!(
            loaded.journal,
            vec![(1, b"one".to_vec()), (2, b"two".to_vec())]
        );
        assert_eq!(loaded.repaired.len(), 1);
        f.append(&[(3, b"three".to_vec())]).unwrap();
        for k in 0..SEGMENTS {
            f.write_segment(k, 3, (k == 2) as u64, |out| {
                if k == 2 {
                    entry(out, 7, b"window-7")?;
                }
                Ok(())
            })
            .unwrap();
        }
        f.finish_compaction().unwrap();
        f.append(&[(4, b"four".to_vec())]).unwrap();
        drop(f);
        let (_, loaded) = HistoryFiles::open(dir.path()).unwrap();
        assert_eq!(loaded.snapshots.len(), SEGMENTS);
        assert!(loaded
            .snapshots
            .iter()
            .all(|s| (s.through, s.format) == (3, 2)));
        let entries: Vec<_> = loaded.snapshots.iter().flat_map(|s| &s.entries).collect();
        assert_eq!(entries, vec![&(7, b"window-7".to_vec())]);
        assert_eq!(loaded.journal, vec![(4, b"four".to_vec())]);
        assert!(loaded.repaired.is_empty());
    }

    /// A compaction killed half-way: the segments written so far are new, the rest and the
    /// old single file are old, the journal is whole; and its temporary file is removed.
    #[test]
    fn an_interrupted_compaction_leaves_old_and_new_segments_and_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut f, _) = HistoryFiles::open(dir.path()).unwrap();
            for k in 0..SEGMENTS {
                f.write_segment(k, 5, 0, |_| Ok(())).unwrap();
            }
            f.finish_compaction().unwrap();
            f.append(&[(6, b"six".to_vec())]).unwrap();
            for k in 0..3 {
                f.write_segment(k, 6, 0, |_| Ok(())).unwrap();
            }
        }
        std::fs::write(dir.path().join("windows.3.snap.tmp"), b"half").unwrap();
        let (f, loaded) = HistoryFiles::open(dir.path()).unwrap();
        let throughs: Vec<u64> = loaded.snapshots.iter().map(|s| s.through).collect();
        assert_eq!(throughs, [5, 5, 5, 5, 5, 6, 6, 6]);
        assert_eq!(loaded.journal, vec![(6, b"six".to_vec())]);
        assert!(!dir.path().join("windows.3.snap.tmp").exists());
        assert!(f.size() > 0);
    }

    /// A segment that fails half-way (a full disk) leaves the old one and no temporary file.
    #[test]
    fn a_failed_segment_write_keeps_the_old_file_and_removes_its_half() {
        let dir = tempfile::tempdir().unwrap();
        let (mut f, _) = HistoryFiles::open(dir.path()).unwrap();
        f.write_segment(1, 5, 1, |out| entry(out, 7, b"old"))
            .unwrap();
        let failed = f.write_segment(1, 6, 1, |out| {
            out.write_all(b"half an entry")?;
            Err(io::Error::other("No space left on device"))
        });
        assert!(failed.is_err());
        assert!(!dir.path().join("windows.1.snap.tmp").exists());
        drop(f);
        let (_, loaded) = HistoryFiles::open(dir.path()).unwrap();
        assert_eq!(loaded.snapshots.len(), 1);
        assert_eq!(loaded.snapshots[0].through, 5);
        assert_eq!(loaded.snapshots[0].entries, vec![(7, b"old".to_vec())]);
    }

    #[test]
    fn series_spread_over_every_segment() {
        let mut counts = [0usize; SEGMENTS];
        for name in 0..8000u64 {
            counts[segment(crate::store::series_id("t", &format!("m{name}"), &[]))] += 1;
        }
        assert!(
            counts.iter().all(|&c| (800..1200).contains(&c)),
            "{counts:?}"
        );
    }

    #[test]
    fn a_corrupt_snapshot_is_set_aside_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(SNAPSHOT),
            b"ASWIN\x00\x00\x02garbage-garbage-garbage",
        )
        .unwrap();
        std::fs::write(dir.path().join(segment_name(4)), b"ASWIN\x00\x00\x02").unwrap();
        let (_, loaded) = HistoryFiles::open(dir.path()).unwrap();
        assert!(loaded.snapshots.is_empty());
        assert_eq!(loaded.repaired.len(), 2, "{:?}", loaded.repaired);
        assert!(
            loaded.repaired.iter().all(|r| r.contains("corrupt")),
            "{:?}",
            loaded.repaired
        );
        assert!(dir.path().join(format!("{SNAPSHOT}.corrupt")).exists());
        assert!(dir.path().join("windows.4.snap.corrupt").exists());
    }
}
