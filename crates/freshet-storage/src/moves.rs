//! Where a compaction moved rows. A compaction rewrites the live rows of some files into new
//! files; whoever locates rows by (file, position) — a materialized table's row index — can
//! translate its positions through the moves instead of reading the rewritten rows again.
//!
//! The moves are not stored: a table keeps those of its last few compactions in memory, and
//! only once someone asked for them ([`Table::keep_compaction_moves`]). Without them a
//! reader falls back to reading the rewritten files.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use roaring::RoaringTreemap;

use crate::table::Table;
use crate::write::Placements;

/// Compactions whose moves a table keeps.
const KEPT_COMPACTIONS: usize = 16;

/// The rank of a deleted position.
const DELETED: u64 = u64::MAX;

/// Where one compaction moved the live rows of the files it rewrote.
#[derive(Debug)]
pub struct CompactionMoves {
    version: u64,
    /// The rewritten files in the order their live rows were written.
    sources: Vec<MovedFile>,
    /// Where each row of the stream of live rows went.
    placements: Placements,
}

/// A rewritten file: its live rows (those not in `deletes`, in position order) are rows
/// `start..` of the compaction's stream.
#[derive(Debug)]
pub(crate) struct MovedFile {
    pub path: String,
    pub rows: u64,
    pub deletes: Option<Arc<RoaringTreemap>>,
    pub start: u64,
}

impl CompactionMoves {
    /// Moves of a compaction committed as `version` that wrote the live rows of `sources`, one
    /// file after the other, through a writer that placed them as `placements` says. `None`
    /// when the placements do not hold every live row once.
    pub(crate) fn new(version: u64, sources: Vec<MovedFile>, placements: Placements) -> Option<Self> {
        let live: u64 = sources
            .iter()
            .map(|f| f.rows - f.deletes.as_ref().map_or(0, |d| d.len()))
            .sum();
        (placements.rows() == live).then_some(Self {
            version,
            sources,
            placements,
        })
    }

    /// The version the compaction committed.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Where the compaction wrote the rewritten files' live rows.
    pub fn placements(&self) -> &Placements {
        &self.placements
    }

    /// The files it rewrote.
    pub fn rewritten(&self) -> impl Iterator<Item = &str> {
        self.sources.iter().map(|f| f.path.as_str())
    }

    /// The new places of the live rows of the rewritten file `path`; `None` when the
    /// compaction did not rewrite it.
    pub fn of_file(&self, path: &str) -> Option<FileMoves<'_>> {
        let file = self.sources.iter().find(|f| f.path == path)?;
        // The rank of each position among the file's live rows; deleted positions have none.
        let ranks = file.deletes.as_ref().map(|deletes| {
            let mut deleted = deletes.iter().peekable();
            let mut rank = 0u64;
            (0..file.rows)
                .map(|position| match deleted.next_if_eq(&position) {
                    Some(_) => DELETED,
                    None => {
                        rank += 1;
                        rank - 1
                    }
                })
                .collect()
        });
        Some(FileMoves {
            rows: file.rows,
            start: file.start,
            ranks,
            placements: &self.placements,
        })
    }
}

/// The new places of one rewritten file's live rows.
#[derive(Debug)]
pub struct FileMoves<'a> {
    rows: u64,
    start: u64,
    /// Rank among the live rows by position ([`DELETED`] for a deleted one); `None` when no
    /// row was deleted (rank = position).
    ranks: Option<Vec<u64>>,
    placements: &'a Placements,
}

impl<'a> FileMoves<'a> {
    /// The new file (relative to the table directory) and position of the row at `position`;
    /// `None` for a position the file did not have alive.
    pub fn locate(&self, position: u64) -> Option<(&'a str, u64)> {
        let (run, position) = self.locate_run(position)?;
        Some((self.placements.runs()[run].path.as_str(), position))
    }

    /// As [`FileMoves::locate`], naming the new file by its run in the compaction's
    /// [`CompactionMoves::placements`].
    pub fn locate_run(&self, position: u64) -> Option<(usize, u64)> {
        let rank = match &self.ranks {
            Some(ranks) => Some(*ranks.get(usize::try_from(position).ok()?)?).filter(|&r| r != DELETED)?,
            None => (position < self.rows).then_some(position)?,
        };
        self.placements.locate_run(self.start + rank)
    }
}

impl Table {
    /// Keeps the moves of this table's next compactions in memory (the last few), for
    /// [`Table::compaction_moves`].
    pub fn keep_compaction_moves(&self) {
        self.moves_wanted.store(true, Ordering::Release);
    }

    /// Calls `listener` with the version of each compaction whose moves were kept, once they
    /// are (on the compaction's task: it should hand any lasting work to a task of its own).
    /// Replaces the previous listener.
    pub fn on_kept_moves(&self, listener: MovesListener) {
        *self.moves.listener.lock().unwrap_or_else(|p| p.into_inner()) = Some(listener);
    }

    /// The moves of the compaction that committed `version`, if kept.
    pub fn compaction_moves(&self, version: u64) -> Option<Arc<CompactionMoves>> {
        let kept = self.moves.kept.lock().unwrap_or_else(|p| p.into_inner());
        kept.iter().find(|m| m.version == version).cloned()
    }

    pub(crate) fn moves_wanted(&self) -> bool {
        self.moves_wanted.load(Ordering::Acquire)
    }

    pub(crate) fn keep_moves(&self, moves: CompactionMoves) {
        let version = moves.version;
        {
            let mut kept = self.moves.kept.lock().unwrap_or_else(|p| p.into_inner());
            if kept.len() == KEPT_COMPACTIONS {
                kept.pop_front();
            }
            kept.push_back(Arc::new(moves));
        }
        let listener = self.moves.listener.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(listener) = listener {
            listener(version);
        }
    }
}

/// Told the version of each compaction whose moves a table kept ([`Table::on_kept_moves`]).
pub type MovesListener = Arc<dyn Fn(u64) + Send + Sync>;

/// The kept moves of a table, and who to tell about new ones.
#[derive(Default)]
pub(crate) struct KeptMoves {
    kept: std::sync::Mutex<VecDeque<Arc<CompactionMoves>>>,
    listener: std::sync::Mutex<Option<MovesListener>>,
}

impl std::fmt::Debug for KeptMoves {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeptMoves")
            .field("kept", &self.kept)
            .finish_non_exhaustive()
    }
}
