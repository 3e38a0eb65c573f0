//! Agent-supplied text in log lines, cut short: a frame may carry megabytes
//! in a name, an id or a message, and one log line must not.

use std::fmt;

/// The most bytes of one agent-supplied value a log line shows; longer than
/// any valid account name (253).
pub const MAX_SHOWN: usize = 256;

/// `text` for a log line: at most [`MAX_SHOWN`] bytes of it (cut at a
/// character boundary), then how many bytes were left out.
pub fn clip(text: &str) -> Clipped<'_> {
    Clipped(text)
}

/// See [`clip`].
#[derive(Debug, Clone, Copy)]
pub struct Clipped<'a>(&'a str);

impl fmt::Display for Clipped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = self.0;
        if text.len() <= MAX_SHOWN {
            return f.write_str(text);
        }
        let mut end = MAX_SHOWN;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        write!(f, "{}… ({} more bytes)", &text[..end], text.len() - end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_is_shown_whole_and_long_text_is_cut_at_a_character() {
        assert_eq!(clip("prod-1").to_string(), "prod-1");
        let exact = "a".repeat(MAX_SHOWN);
        assert_eq!(clip(&exact).to_string(), exact);
        let long = "x".repeat(10 * 1024 * 1024);
        let shown = clip(&long).to_string();
        assert!(shown.len() < MAX_SHOWN + 40, "{} bytes", shown.len());
        assert!(shown.ends_with(&format!("({} more bytes)", long.len() - MAX_SHOWN)));
        // A multi-byte character across the limit is not split.
        let wide = format!("{}é{}", "a".repeat(MAX_SHOWN - 1), "b".repeat(10));
        assert!(
            clip(&wide)
                .to_string()
                .starts_with(&"a".repeat(MAX_SHOWN - 1))
        );
        assert!(clip(&wide).to_string().contains("… (12 more bytes)"));
    }
}
