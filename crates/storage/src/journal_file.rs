//! fdatasync of fjall's active journal without holding fjall's journal lock.
//!
//! `Database::persist(SyncData)` runs fdatasync while holding the journal mutex, and
//! every write needs that mutex to append: during each group-commit fsync all writers
//! stall, so the next batch only forms after it, and each write waits about two fsyncs.
//! Instead the syncer calls `persist(Buffer)` (moves fjall's in-process buffer into
//! the OS page cache, under the lock, microseconds) and then fdatasyncs the journal
//! file through its own descriptor, outside the lock, while writers keep appending.
//!
//! Which file: the highest-numbered `<id>.jnl` in the database directory, the rule
//! fjall's own recovery uses to pick the active journal. Why that covers the data
//! flushed by `persist(Buffer)` into journal A: the file found is A, or A was rotated
//! out after the flush, and fjall's rotation fsyncs (SyncAll) the old journal before
//! it creates the next one. A directory listing returns every entry that exists for
//! its whole duration, so A (or its successor) is seen unless A was deleted, which
//! fjall only does to sealed, hence synced, journals.
//!
//! Linux (and POSIX) fsync applies to the file, not the descriptor, so syncing through
//! our read-only descriptor flushes what fjall wrote through its own.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

/// Listings tried before giving up on finding the active journal.
const MAX_LIST_ATTEMPTS: usize = 3;

/// The active journal of one fjall database, opened for syncing.
pub struct JournalFile {
    dir: PathBuf,
    /// The journal last synced, by id: reopened only when fjall rotates.
    open: Option<(u64, File)>,
}

impl JournalFile {
    pub fn new(dir: &Path) -> JournalFile {
        JournalFile {
            dir: dir.to_path_buf(),
            open: None,
        }
    }

    /// fdatasyncs the active journal. Returns its path, or `None` when no journal file
    /// was found (then the caller must persist through fjall).
    ///
    /// # Errors
    /// Listing the directory, opening or syncing the file failed.
    pub fn sync_data(&mut self) -> io::Result<Option<PathBuf>> {
        // A journal found in the listing can be gone when opened only if fjall
        // rotated and then deleted it, which it does to synced journals only; list
        // again to find the new one. Bounded: the caller falls back to fjall.
        for _attempt in 0..MAX_LIST_ATTEMPTS {
            let Some(id) = self.active_id()? else {
                return Ok(None);
            };
            let path = self.dir.join(format!("{id}.jnl"));
            let file = match self.open.take() {
                Some((open_id, file)) if open_id == id => file,
                _ => match File::open(&path) {
                    Ok(file) => file,
                    Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
                    Err(error) => return Err(error),
                },
            };
            file.sync_data()?;
            self.open = Some((id, file));
            return Ok(Some(path));
        }
        Ok(None)
    }

    /// The highest journal id in the directory.
    fn active_id(&self) -> io::Result<Option<u64>> {
        let mut active = None;
        for entry in std::fs::read_dir(&self.dir)? {
            let name = entry?.file_name();
            let Some(id) = name
                .to_str()
                .and_then(|name| name.strip_suffix(".jnl"))
                .and_then(|id| id.parse::<u64>().ok())
            else {
                continue;
            };
            active = active.max(Some(id));
        }
        Ok(active)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fjall::{CompressionType, Database, KeyspaceCreateOptions, PersistMode};

    fn contains(path: &Path, needle: &[u8]) -> bool {
        let bytes = std::fs::read(path).unwrap();
        bytes.windows(needle.len()).any(|window| window == needle)
    }

    /// Pins the fjall behaviour `JournalFile` relies on: what `persist(Buffer)` flushed
    /// is in the file it syncs, before and after fjall rotates its journal.
    #[test]
    fn synced_file_holds_the_flushed_writes_across_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::builder(dir.path())
            .manual_journal_persist(true)
            .journal_compression(CompressionType::None)
            .open()
            .unwrap();
        let data = db.keyspace("data", KeyspaceCreateOptions::default).unwrap();
        let mut journal = JournalFile::new(dir.path());

        data.insert("first-key", "v").unwrap();
        db.persist(PersistMode::Buffer).unwrap();
        let first = journal
            .sync_data()
            .unwrap()
            .expect("fjall keeps <id>.jnl files");
        assert!(contains(&first, b"first-key"));

        // fjall rotates its journal at a memtable flush once it passed 64 MB.
        let value = vec![7u8; 1024 * 1024];
        for i in 0..66 {
            data.insert(format!("big-{i}"), value.as_slice()).unwrap();
        }
        data.rotate_memtable_and_wait().unwrap();
        data.insert("after-rotation", "v").unwrap();
        db.persist(PersistMode::Buffer).unwrap();
        let second = journal
            .sync_data()
            .unwrap()
            .expect("fjall keeps <id>.jnl files");
        assert_ne!(first, second, "the journal rotated");
        assert!(contains(&second, b"after-rotation"));
    }
}
