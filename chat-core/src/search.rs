//! Full-text search over messages (`messages:search`, section 5 of the wire
//! contract): what a query means, whichever store answers it.
//!
//! A query matches a message when every one of its words is a whole word of
//! the message's text, case and accents folded (`Élan` finds `elan`, `ÉLAN`
//! and `élan`, not `elans`). Words are runs of letters and digits; anything
//! else separates them and is not searched for. Only current text is found:
//! a deleted message, or the words an edit removed, never match. Results are
//! the rooms the user is a member of at the moment of the search, newest
//! first, paged with an opaque cursor that each store makes.

use serde::Serialize;
use unicode_normalization::UnicodeNormalization;
use unicode_normalization::char::is_combining_mark;

use crate::id::{RoomId, UserId};
use crate::message::Message;
use crate::room::Room;

/// Longest query, in characters.
pub const MAX_QUERY_CHARS: usize = 200;

/// Most words a query may have; more are refused, since every one must match.
pub const MAX_WORDS: usize = 16;

/// Results per page when the client does not say.
pub const DEFAULT_LIMIT: u32 = 20;

/// Most results per page; a larger `limit` is capped.
pub const MAX_LIMIT: u32 = 50;

/// Folds text for matching: lower case, compatibility forms decomposed and
/// combining marks dropped, so that `Ǆémo`, `džemo` and `DZEMO` fold alike.
pub fn fold(text: &str) -> String {
    text.nfkd().filter(|c| !is_combining_mark(*c)).flat_map(char::to_lowercase).collect()
}

/// The distinct words of `text`, folded, in order of first appearance.
pub fn words(text: &str) -> Vec<String> {
    let folded = fold(text);
    let mut words: Vec<String> = Vec::new();
    for word in folded.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()) {
        if !words.iter().any(|w| w == word) {
            words.push(word.to_owned());
        }
    }
    words
}

/// Whether `text` holds every one of `words` (as made by [`words`]).
pub fn matches(text: &str, words: &[String]) -> bool {
    let found = self::words(text);
    words.iter().all(|w| found.contains(w))
}

/// A search, as the engine hands it to the store once checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchQuery {
    /// Who searches: only rooms they are a member of are searched.
    pub user: UserId,
    /// The words, folded ([`words`]); at least one, at most [`MAX_WORDS`].
    pub words: Vec<String>,
    /// Only this room (the engine has checked the membership).
    pub room: Option<RoomId>,
    /// Most results, at least 1, at most [`MAX_LIMIT`].
    pub limit: u32,
    /// The `next` of the previous page: only older results.
    pub before: Option<String>,
}

/// One result: the message and its room.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SearchHit {
    /// The message as it is now.
    pub message: Message,
    /// Its room.
    pub room: Room,
}

/// One page of results, newest first.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SearchPage {
    /// The results.
    pub results: Vec<SearchHit>,
    /// The cursor of the next (older) page, when there may be one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_and_accents_fold() {
        assert_eq!(fold("Élan VITAL"), "elan vital");
        assert_eq!(fold("Ǆémo"), "džemo".nfkd().filter(|c| !is_combining_mark(*c)).collect::<String>());
        assert_eq!(fold("ﬁne"), "fine", "compatibility forms decompose");
        assert_eq!(fold("Straße"), "straße");
        assert_eq!(fold("Привет"), "привет");
    }

    #[test]
    fn words_are_runs_of_letters_and_digits() {
        assert_eq!(words("  Hello, WORLD! hello-world 42x "), ["hello", "world", "42x"]);
        assert_eq!(words("ça va? Ça va."), ["ca", "va"]);
        assert!(words(" -- !! ").is_empty());
        assert_eq!(words("日本語 テキスト"), ["日本語", "テキスト"]);
    }

    #[test]
    fn a_match_needs_every_word_whole() {
        let q = words("Élan vital");
        assert!(matches("The ELAN of a vital force", &q));
        assert!(matches("élan… vital!", &q));
        assert!(!matches("elans vital", &q), "words, not prefixes");
        assert!(!matches("élan", &q), "every word");
    }
}
