//! Tab completion of SQL keywords, tables and columns in the shell.

use std::collections::BTreeSet;

use freshet::datafusion::sql::sqlparser::keywords::ALL_KEYWORDS;
use rustyline::completion::{Completer, Pair};
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::validate::Validator;
use rustyline::{Context, Helper};

use crate::connection::Connection;

/// The shell's line-editing helper: completes from the names it was last given.
#[derive(Default)]
pub(crate) struct SqlHelper {
    /// Table and column names, as they must be written.
    names: BTreeSet<String>,
}

impl SqlHelper {
    /// Refreshes the table and column names from the engine or server. Completion is best
    /// effort: a catalog that cannot be read leaves the previous names.
    pub(crate) async fn refresh(&mut self, connection: &Connection) {
        let sql = "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = 'public'";
        let Some(rows) = connection.rows(sql).await else { return };
        self.names = rows.into_iter().flatten().flatten().collect();
    }
}

/// The start of the word before `pos`, and the words (keywords in the case the user types
/// them, then names) that complete it.
pub(crate) fn complete_word<'a>(
    names: impl Iterator<Item = &'a String>,
    line: &str,
    pos: usize,
) -> (usize, Vec<String>) {
    let before = &line[..pos];
    let start = before
        .char_indices()
        .rev()
        .find(|(_, c)| !(c.is_alphanumeric() || *c == '_'))
        .map_or(0, |(i, c)| i + c.len_utf8());
    let prefix = &before[start..];
    if prefix.is_empty() {
        return (start, Vec::new());
    }
    let lower = prefix.chars().all(|c| !c.is_uppercase());
    let upper_prefix = prefix.to_uppercase();
    let mut out: Vec<String> = names
        .filter(|name| name.starts_with(prefix) || name.to_lowercase().starts_with(&prefix.to_lowercase()))
        .cloned()
        .collect();
    out.extend(
        ALL_KEYWORDS
            .iter()
            .filter(|k| k.starts_with(&upper_prefix))
            .map(|k| if lower { k.to_lowercase() } else { k.to_string() }),
    );
    let mut seen = std::collections::HashSet::new();
    out.retain(|w| seen.insert(w.clone()));
    (start, out)
}

impl Completer for SqlHelper {
    type Candidate = Pair;

    fn complete(&self, line: &str, pos: usize, _ctx: &Context<'_>) -> rustyline::Result<(usize, Vec<Pair>)> {
        let (start, words) = complete_word(self.names.iter(), line, pos);
        Ok((
            start,
            words
                .into_iter()
                .map(|w| Pair {
                    display: w.clone(),
                    replacement: w,
                })
                .collect(),
        ))
    }
}

impl Hinter for SqlHelper {
    type Hint = String;
}

impl Highlighter for SqlHelper {}

impl Validator for SqlHelper {}

impl Helper for SqlHelper {}

#[cfg(test)]
mod tests {
    use super::complete_word;

    #[test]
    fn completes_keywords_in_the_users_case_and_names() {
        let names = ["orders".to_string(), "order_id".to_string(), "amount".to_string()];
        let (start, words) = complete_word(names.iter(), "SELECT * FROM ord", 17);
        assert_eq!(start, 14);
        assert!(words.contains(&"orders".to_string()));
        assert!(words.contains(&"order_id".to_string()));
        assert!(words.contains(&"ORDER".to_string()) || words.contains(&"order".to_string()));
        let (_, words) = complete_word(names.iter(), "SEL", 3);
        assert!(words.contains(&"SELECT".to_string()));
        let (_, words) = complete_word(names.iter(), "sel", 3);
        assert!(words.contains(&"select".to_string()));
        let (_, words) = complete_word(names.iter(), "SELECT ", 7);
        assert!(words.is_empty());
    }
}
