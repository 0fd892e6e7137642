//! What `storex migrate send` tells the receiver about the old file's schema, with the offer
//! (as its properties): the schema version the app keeps in `PRAGMA user_version`, the tables
//! left out, and what of the tables' schema a new database does not get. The receiver sets
//! the version and repeats the rest on its own screen, where the person moving house looks.
//! What a peer sends is bounded and cleaned before it is printed.

use std::collections::BTreeMap;

use storex_seaorm::SqliteTables;
use storex_sync::fast_sync::FastSyncOptions;

/// The property carrying the schema version (an app that reads it to run its migrations
/// finds it on the new device as it left it).
const USER_VERSION: &str = "sqlite.user_version";
/// The property naming the tables left out, one `table: why` a line.
const LEFT_OUT: &str = "storex.migrate.left_out";
/// The property naming what the new database lacks, one description a line.
const NOT_CARRIED: &str = "storex.migrate.not_carried";

/// Lines of one note a receiver prints at most, and characters of a line.
const MAX_LINES: usize = 50;
const MAX_LINE_CHARS: usize = 300;

/// What the sender hands over about the schema of the tables it sends.
#[derive(Clone, Debug, Default)]
pub(crate) struct SchemaNotes {
    user_version: i32,
    left_out: Vec<String>,
    not_carried: Vec<String>,
}

impl SchemaNotes {
    /// The notes on `tables` (taken before their registry moves on).
    pub(crate) fn of(tables: &SqliteTables) -> Self {
        SchemaNotes {
            user_version: tables.user_version,
            left_out: tables
                .left_out
                .iter()
                .map(|(table, why)| format!("`{table}`: {why}"))
                .collect(),
            not_carried: tables.not_carried.clone(),
        }
    }

    /// `options` carrying the notes with the offer (nothing for what there is none of).
    pub(crate) fn with_offer(&self, mut options: FastSyncOptions) -> FastSyncOptions {
        if self.user_version != 0 {
            options = options.with_property(USER_VERSION, self.user_version.to_string());
        }
        for (name, lines) in [(LEFT_OUT, &self.left_out), (NOT_CARRIED, &self.not_carried)] {
            if !lines.is_empty() {
                options = options.with_property(name, bounded(lines.iter()).join("\n"));
            }
        }
        options
    }
}

/// What the receiver found in an offer's notes.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct ReceivedNotes {
    /// The schema version to set, if the sender had one (and it was a number).
    pub(crate) user_version: Option<i32>,
    /// Warnings to print once the database arrived.
    pub(crate) warnings: Vec<String>,
}

/// The notes an offer's `properties` carry. A version that is no 32-bit integer (a peer
/// that sends garbage) is named in a warning and not used.
pub(crate) fn received_notes(properties: &BTreeMap<String, String>) -> ReceivedNotes {
    let mut notes = ReceivedNotes::default();
    if let Some(value) = properties.get(USER_VERSION) {
        match value.parse::<i32>() {
            Ok(version) => notes.user_version = Some(version),
            Err(_) => notes.warnings.push(format!(
                "the sender's schema version ({}) is not a number; the new database keeps 0",
                clean(value)
            )),
        }
    }
    if let Some(tables) = properties.get(LEFT_OUT) {
        notes.warnings.push(format!(
            "the sender left out tables it could not take; the new database does not have them:\n{}",
            indented(tables)
        ));
    }
    if let Some(lacking) = properties.get(NOT_CARRIED) {
        notes.warnings.push(format!(
            "the new database has the tables' columns, primary keys and indexes over columns, \
             but not (an app that relies on them recreates them):\n{}",
            indented(lacking)
        ));
    }
    notes
}

/// `lines`, at most [`MAX_LINES`] of them (then a line saying how many more), each cleaned.
fn bounded<'a>(lines: impl ExactSizeIterator<Item = &'a String>) -> Vec<String> {
    let total = lines.len();
    let mut kept: Vec<String> = lines.take(MAX_LINES).map(|line| clean(line)).collect();
    if total > MAX_LINES {
        kept.push(format!("… and {} more", total - MAX_LINES));
    }
    kept
}

/// The lines of a peer's note, bounded and cleaned, each indented as a list item.
fn indented(note: &str) -> String {
    let lines: Vec<String> = note.lines().map(str::to_owned).collect();
    bounded(lines.iter())
        .iter()
        .map(|line| format!("  - {line}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `text` on one line of at most [`MAX_LINE_CHARS`] characters, control characters (a
/// terminal's escape sequences) and invisible formatting ones (a right-to-left override
/// that shows a name reversed, a zero-width space) shown as `?`.
fn clean(text: &str) -> String {
    let mut cleaned: String = text
        .chars()
        .take(MAX_LINE_CHARS)
        .map(|c| {
            if c.is_control() || is_format(c) {
                '?'
            } else {
                c
            }
        })
        .collect();
    if text.chars().nth(MAX_LINE_CHARS).is_some() {
        cleaned.push('…');
    }
    cleaned
}

/// Whether `c` is one of the invisible formatting characters that change how text around
/// them shows: bidirectional controls, zero-width characters, the byte order mark.
fn is_format(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{061C}'
            | '\u{180E}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}'
            | '\u{FEFF}'
            | '\u{FFF9}'..='\u{FFFB}'
    )
}

#[cfg(test)]
mod tests {
    use storex_core::Registry;

    use super::*;

    fn tables(left_out: usize) -> SqliteTables {
        SqliteTables {
            registry: Registry::default(),
            left_out: (0..left_out)
                .map(|n| (format!("t{n}"), "it has no primary key".to_owned()))
                .collect(),
            not_carried: vec!["table `note`: a trigger `stamp`".to_owned()],
            user_version: 12,
        }
    }

    #[test]
    fn the_receiver_gets_the_version_and_is_told_what_the_sender_left_out() {
        let options = SchemaNotes::of(&tables(2)).with_offer(FastSyncOptions::default());
        let notes = received_notes(&options.properties);
        assert_eq!(notes.user_version, Some(12));
        let [left_out, lacking] = &notes.warnings[..] else {
            panic!("two warnings: {notes:?}");
        };
        assert!(
            left_out.contains("  - `t0`: it has no primary key\n  - `t1`"),
            "{left_out}"
        );
        assert!(
            lacking.contains("  - table `note`: a trigger `stamp`"),
            "{lacking}"
        );
    }

    #[test]
    fn a_schema_without_notes_sends_none() {
        let plain = SqliteTables {
            registry: Registry::default(),
            left_out: Vec::new(),
            not_carried: Vec::new(),
            user_version: 0,
        };
        let options = SchemaNotes::of(&plain).with_offer(FastSyncOptions::default());
        assert!(options.properties.is_empty(), "{:?}", options.properties);
        assert_eq!(
            received_notes(&options.properties),
            ReceivedNotes::default()
        );
    }

    #[test]
    fn a_peers_notes_are_bounded_and_cleaned_before_they_are_printed() {
        let mut properties = BTreeMap::new();
        let many: Vec<String> = (0..500)
            .map(|n| format!("t{n}\u{1b}[2J\u{202e}txt.exe"))
            .collect();
        properties.insert(LEFT_OUT.to_owned(), many.join("\n"));
        properties.insert(NOT_CARRIED.to_owned(), "x".repeat(10_000));
        properties.insert(USER_VERSION.to_owned(), "twelve".to_owned());
        let notes = received_notes(&properties);
        assert_eq!(notes.user_version, None);
        assert_eq!(notes.warnings.len(), 3, "{notes:?}");
        assert!(notes.warnings[0].contains("(twelve)"), "{notes:?}");
        let left_out = &notes.warnings[1];
        assert!(
            !left_out.contains('\u{1b}'),
            "escape sequences are not printed"
        );
        assert!(
            !left_out.contains('\u{202e}'),
            "nor a right-to-left override"
        );
        assert_eq!(left_out.lines().count(), 1 + MAX_LINES + 1, "{left_out}");
        assert!(left_out.ends_with("… and 450 more"), "{left_out}");
        assert!(
            notes.warnings[2].chars().count() < 500,
            "a long line is cut"
        );
    }
}
