//! The push journal: one small record per applied push, the commit point of a push.
//!
//! Rows live in memory-mapped files that a push changes in place, and they survive a crash
//! of the daemon's process in the page cache. What the rows alone cannot tell after such a
//! crash is which pushes they hold: the table's step and the clients' idempotency windows.
//! So a push, holding its table's push lock, (1) saves the rows it will change in the
//! table's undo log (see [`crate::trainable`]), (2) changes them, (3) appends its record
//! here, and only then is acknowledged. On restart a push whose record is here is applied
//! (its step and `(client_id, sequence)` are replayed); one whose record is missing is
//! rolled back from the undo log. Records reach the page cache with one `write` each, which
//! a crash of the process does not lose (a crash of the machine loses the rows' page cache
//! too, and the daemon then asks for a restore).
//!
//! A flush must not hold pushes off while it writes rows back, so the journal is kept in
//! segments: the active file `journal.engram`, and segments a flush has cut off,
//! `journal.engram.retired.<n>`. A flush cuts ([`Journal::cut`]) with no push in flight,
//! writes the rows back while pushes append to the new active file, records every step and
//! window in the catalog, and only then deletes the segments it cut ([`Journal::retire`]).
//! Opening reads the retired segments, oldest first, then the active file; a crash between
//! the cut and the retirement replays records the catalog also holds, which is harmless
//! (steps are maxima, windows sets).
//!
//! ```text
//! record: payload length u32 | payload | CRC-32 of the payload u32
//! payload: token u64 | sequence u64 | step u64 | table length u16 | table
//!          | client_id length u16 | client_id
//! ```
//! All little-endian. A record cut short by a crash, or one that fails its checksum, ends
//! the journal: it and anything after it are dropped when the journal is opened.

use crate::error::{Error, Result};
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Table names and client ids are bounded far below this at the service's door.
const MAX_TEXT_BYTES: usize = 1024;
const MAX_PAYLOAD: u32 = (24 + 4 + 2 * MAX_TEXT_BYTES) as u32;

/// One applied push.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalRecord {
    /// The push's undo token (see [`Journal::next_token`]).
    pub token: u64,
    pub table: String,
    /// Empty for a push without idempotency.
    pub client_id: String,
    pub sequence: u64,
    /// The table's step count after the push.
    pub step: u64,
}

impl JournalRecord {
    fn encode(&self) -> Result<Vec<u8>> {
        for (what, text) in [("table", &self.table), ("client_id", &self.client_id)] {
            if text.len() > MAX_TEXT_BYTES {
                return Err(Error::invalid(format!(
                    "{what} of {} bytes is too long for the journal (at most {MAX_TEXT_BYTES})",
                    text.len()
                )));
            }
        }
        let mut payload = Vec::with_capacity(28 + self.table.len() + self.client_id.len());
        for v in [self.token, self.sequence, self.step] {
            payload.extend_from_slice(&v.to_le_bytes());
        }
        for text in [&self.table, &self.client_id] {
            payload.extend_from_slice(&(text.len() as u16).to_le_bytes());
            payload.extend_from_slice(text.as_bytes());
        }
        let mut record = Vec::with_capacity(payload.len() + 8);
        record.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        record.extend_from_slice(&payload);
        record.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        Ok(record)
    }

    fn decode(payload: &[u8]) -> Option<JournalRecord> {
        let u64_at = |o: usize| Some(u64::from_le_bytes(payload.get(o..o + 8)?.try_into().ok()?));
        let text_at = |o: usize| -> Option<(String, usize)> {
            let len = u16::from_le_bytes(payload.get(o..o + 2)?.try_into().ok()?) as usize;
            let bytes = payload.get(o + 2..o + 2 + len)?;
            Some((String::from_utf8(bytes.to_vec()).ok()?, o + 2 + len))
        };
        let (table, next) = text_at(24)?;
        let (client_id, end) = text_at(next)?;
        (end == payload.len()).then_some(JournalRecord {
            token: u64_at(0)?,
            sequence: u64_at(8)?,
            step: u64_at(16)?,
            table,
            client_id,
        })
    }
}

struct Appender {
    file: File,
    len: u64,
    /// The number the next cut gives the segment it retires.
    next_segment: u64,
}

pub struct Journal {
    path: PathBuf,
    appender: Mutex<Appender>,
    next_token: AtomicU64,
}

/// The retired segments beside the journal at `path`, oldest first, with their numbers.
fn retired_segments(path: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let prefix = format!("{}{RETIRED_INFIX}", file_name(path));
    let mut segments = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let name = entry.file_name();
        let number = name
            .to_str()
            .and_then(|n| n.strip_prefix(&prefix))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(number) = number {
            segments.push((number, entry.path()));
        }
    }
    segments.sort_unstable();
    Ok(segments)
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

const RETIRED_INFIX: &str = ".retired.";

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal").field("path", &self.path).finish()
    }
}

impl Journal {
    /// Opens (or creates) the journal at `path` and returns it with the records it holds.
    /// A torn or corrupt tail is cut off. Tokens start after the highest recorded one.
    pub fn open(path: impl AsRef<Path>) -> Result<(Journal, Vec<JournalRecord>)> {
        let path = path.as_ref();
        let io = |e| Error::io(path, e);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io)?;
        let mut records = Vec::new();
        let retired = retired_segments(path)?;
        for (_, segment) in &retired {
            // A segment was whole when it was cut: a bad record in one ends only that one.
            let bytes = std::fs::read(segment).map_err(|e| Error::io(segment, e))?;
            records.extend(Self::parse(&bytes).0);
        }
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io)?;
        let (active, good) = Self::parse(&bytes);
        records.extend(active);
        if good < bytes.len() {
            file.set_len(good as u64).map_err(io)?;
            file.sync_all().map_err(io)?;
        }
        let next = records.iter().map(|r| r.token).max().unwrap_or(0) + 1;
        let journal = Journal {
            path: path.to_path_buf(),
            appender: Mutex::new(Appender {
                file,
                len: good as u64,
                next_segment: retired.last().map_or(1, |(n, _)| n + 1),
            }),
            next_token: AtomicU64::new(next),
        };
        Ok((journal, records))
    }

    /// The records of `bytes` up to the first bad one, and where the good ones end.
    fn parse(bytes: &[u8]) -> (Vec<JournalRecord>, usize) {
        let mut records = Vec::new();
        let mut at = 0;
        while let Some(len) = bytes.get(at..at + 4) {
            let len = u32::from_le_bytes(len.try_into().unwrap());
            if len > MAX_PAYLOAD {
                break;
            }
            let end = at + 4 + len as usize;
            let (Some(payload), Some(crc)) = (bytes.get(at + 4..end), bytes.get(end..end + 4))
            else {
                break;
            };
            if crc32fast::hash(payload).to_le_bytes() != crc {
                break;
            }
            match JournalRecord::decode(payload) {
                Some(record) => records.push(record),
                None => break,
            }
            at = end + 4;
        }
        (records, at)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A token no push has used before (tokens name pushes in undo logs).
    pub fn next_token(&self) -> u64 {
        self.next_token.fetch_add(1, Ordering::AcqRel)
    }

    /// Makes later tokens larger than `token` (the highest one that any undo log or the
    /// catalog has seen).
    pub fn tokens_after(&self, token: u64) {
        self.next_token.fetch_max(token + 1, Ordering::AcqRel);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Appender> {
        self.appender.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends one record with a single write. On failure (a full disk) nothing of it stays.
    pub fn append(&self, record: &JournalRecord) -> Result<()> {
        let bytes = record.encode()?;
        let mut appender = self.lock();
        let at = appender.len;
        if let Err(e) = appender.file.write_all_at(&bytes, at) {
            let _ = appender.file.set_len(at);
            return Err(Error::io(&self.path, e));
        }
        appender.len += bytes.len() as u64;
        Ok(())
    }

    /// Empties the journal, retired segments included, once the catalog holds everything it
    /// recorded (or a restore has made it meaningless).
    pub fn reset(&self) -> Result<()> {
        let mut appender = self.lock();
        let io = |e| Error::io(&self.path, e);
        appender.file.set_len(0).map_err(io)?;
        appender.file.sync_all().map_err(io)?;
        appender.len = 0;
        let last = appender.next_segment.saturating_sub(1);
        drop(appender);
        self.retire(last)
    }

    /// Cuts the journal: the records so far move to a retired segment, and later appends
    /// go to a new, empty active file. Returns the segment's number, for
    /// [`Journal::retire`]. Called with no push in flight, so that the segment holds the
    /// record of every push whose token is below the flush's fence. On failure the journal
    /// is as it was.
    pub fn cut(&self) -> Result<u64> {
        let mut appender = self.lock();
        let number = appender.next_segment;
        let segment = self.segment_path(number);
        std::fs::rename(&self.path, &segment).map_err(|e| Error::io(&self.path, e))?;
        let created = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&self.path);
        match created {
            Ok(file) => {
                appender.file = file;
                appender.len = 0;
                appender.next_segment = number + 1;
                Ok(number)
            }
            Err(e) => {
                // Appends still go to the renamed file's descriptor: give it its name back.
                let _ = std::fs::rename(&segment, &self.path);
                Err(Error::io(&self.path, e))
            }
        }
    }

    /// Deletes the retired segments up to number `upto`, once the catalog holds everything
    /// they recorded.
    pub fn retire(&self, upto: u64) -> Result<()> {
        for (number, segment) in retired_segments(&self.path)? {
            if number <= upto {
                std::fs::remove_file(&segment).map_err(|e| Error::io(&segment, e))?;
            }
        }
        Ok(())
    }

    fn segment_path(&self, number: u64) -> PathBuf {
        let mut name = self.path.clone().into_os_string();
        name.push(format!("{RETIRED_INFIX}{number}"));
        PathBuf::from(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(token: u64, client: &str) -> JournalRecord {
        JournalRecord {
            token,
            table: "t".into(),
            client_id: client.into(),
            sequence: token * 10,
            step: token + 1,
        }
    }

    #[test]
    fn records_survive_reopening_and_tokens_continue() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let (journal, records) = Journal::open(&path).unwrap();
        assert!(records.is_empty());
        assert_eq!(journal.next_token(), 1);
        journal.append(&record(1, "a")).unwrap();
        journal.append(&record(2, "")).unwrap();
        drop(journal);
        let (journal, records) = Journal::open(&path).unwrap();
        assert_eq!(records, vec![record(1, "a"), record(2, "")]);
        assert_eq!(journal.next_token(), 3);
        journal.tokens_after(40);
        assert_eq!(journal.next_token(), 41);
        journal.reset().unwrap();
        drop(journal);
        assert!(Journal::open(&path).unwrap().1.is_empty());
    }

    #[test]
    fn a_torn_or_corrupt_tail_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let (journal, _) = Journal::open(&path).unwrap();
        for token in 1..=3 {
            journal.append(&record(token, "client")).unwrap();
        }
        drop(journal);
        let whole = std::fs::read(&path).unwrap();
        let one = whole.len() / 3;
        for cut in [whole.len() - 1, 2 * one + 5, 2 * one + 1] {
            std::fs::write(&path, &whole[..cut]).unwrap();
            let (_, records) = Journal::open(&path).unwrap();
            assert_eq!(records.len(), 2, "cut at {cut}");
            assert_eq!(std::fs::metadata(&path).unwrap().len() as usize, 2 * one);
        }
        let mut flipped = whole.clone();
        flipped[one + 10] ^= 1;
        std::fs::write(&path, &flipped).unwrap();
        assert_eq!(Journal::open(&path).unwrap().1, vec![record(1, "client")]);
    }

    #[test]
    fn a_cut_journal_reads_back_whole_until_its_segments_are_retired() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let (journal, _) = Journal::open(&path).unwrap();
        journal.append(&record(1, "a")).unwrap();
        let first = journal.cut().unwrap();
        journal.append(&record(2, "a")).unwrap();
        let second = journal.cut().unwrap();
        journal.append(&record(3, "b")).unwrap();
        assert_eq!((first, second), (1, 2));
        drop(journal);
        let (journal, records) = Journal::open(&path).unwrap();
        let tokens: Vec<u64> = records.iter().map(|r| r.token).collect();
        assert_eq!(
            tokens,
            vec![1, 2, 3],
            "retired segments first, oldest first"
        );
        assert_eq!(
            journal.cut().unwrap(),
            3,
            "numbers continue after reopening"
        );
        journal.retire(first).unwrap();
        drop(journal);
        let (journal, records) = Journal::open(&path).unwrap();
        assert_eq!(
            records.iter().map(|r| r.token).collect::<Vec<_>>(),
            vec![2, 3]
        );
        journal.reset().unwrap();
        drop(journal);
        assert!(Journal::open(&path).unwrap().1.is_empty());
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "reset removes every retired segment");
    }

    #[test]
    fn oversized_text_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, _) = Journal::open(dir.path().join("j")).unwrap();
        let mut long = record(1, "");
        long.client_id = "x".repeat(MAX_TEXT_BYTES + 1);
        assert!(journal.append(&long).is_err());
        drop(journal);
        assert!(Journal::open(dir.path().join("j")).unwrap().1.is_empty());
    }
}
