//! Cutting text to a byte budget: a peer's words, or a message quoting damaged data, must
//! not grow an error or a report without bound.

/// `text` cut to at most `max` bytes at a character boundary, ending in `marker` when cut.
pub(crate) fn cut(mut text: String, max: usize, marker: &str) -> String {
    if text.len() > max {
        let mut end = max.saturating_sub(marker.len());
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push_str(marker);
    }
    text
}
