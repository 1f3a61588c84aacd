//! Tokens of the text format.
//!
//! Tokens borrow from the source; only strings with escapes are copied, so
//! a multi-hundred-megabyte base64 literal costs one scan. Positions are byte
//! offsets; line and column are computed only when an error is reported.

use super::{is_ident_char, is_ident_start, is_name_char};
use crate::error::IrError;
use std::borrow::Cow;

/// What a token is.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Tok<'a> {
    /// `[A-Za-z_?][A-Za-z0-9_.?]*`: keywords, op names, dtypes, dim symbols.
    Ident(&'a str),
    /// A number as written, without sign: `12`, `0.5`, `1e-5`, `0x7fc00001`.
    Number(&'a str),
    /// A double-quoted string, unescaped.
    Str(Cow<'a, str>),
    /// `%name`: a value.
    Value(Cow<'a, str>),
    /// `@name`: a node name.
    NodeName(Cow<'a, str>),
    /// Punctuation: `( ) [ ] { } , : :: = + - * /`.
    Punct(&'static str),
    /// End of input.
    Eof,
}

impl Tok<'_> {
    /// How an error message shows the token.
    pub(crate) fn describe(&self) -> String {
        match self {
            Tok::Ident(s) | Tok::Number(s) => format!("`{s}`"),
            Tok::Str(s) => {
                let shown: String = s.chars().take(24).collect();
                if shown.len() < s.len() {
                    format!("string \"{shown}...\"")
                } else {
                    format!("string \"{shown}\"")
                }
            }
            Tok::Value(n) => format!("value `%{n}`"),
            Tok::NodeName(n) => format!("node name `@{n}`"),
            Tok::Punct(p) => format!("`{p}`"),
            Tok::Eof => "end of input".into(),
        }
    }
}

/// A token and the byte offset where it starts.
#[derive(Clone, Debug)]
pub(crate) struct Token<'a> {
    pub(crate) tok: Tok<'a>,
    pub(crate) pos: usize,
}

/// 1-based line and column (in characters) of a byte offset.
pub(crate) fn line_col(src: &str, pos: usize) -> (usize, usize) {
    let pos = pos.min(src.len());
    let before = &src.as_bytes()[..pos];
    let line = 1 + before.iter().filter(|&&b| b == b'\n').count();
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    // `pos` is always at a token or character boundary, but be safe with
    // a lossy count rather than slicing inside a character.
    let column = 1 + String::from_utf8_lossy(&before[line_start..])
        .chars()
        .count();
    (line, column)
}

/// An [`IrError::Parse`] at byte offset `pos` of `src`.
pub(crate) fn error_at(src: &str, pos: usize, message: impl Into<String>) -> IrError {
    let (line, column) = line_col(src, pos);
    IrError::Parse {
        line,
        column,
        message: message.into(),
    }
}

/// Splits source text into tokens.
pub(crate) struct Lexer<'a> {
    src: &'a str,
    pos: usize,
}

impl<'a> Lexer<'a> {
    pub(crate) fn new(src: &'a str) -> Lexer<'a> {
        Lexer { src, pos: 0 }
    }

    fn peek_char(&self) -> Option<char> {
        self.src[self.pos..].chars().next()
    }

    fn skip_trivia(&mut self) {
        let bytes = self.src.as_bytes();
        while self.pos < bytes.len() {
            match bytes[self.pos] {
                b' ' | b'\t' | b'\n' | b'\r' => self.pos += 1,
                b'#' => {
                    self.pos = bytes[self.pos..]
                        .iter()
                        .position(|&b| b == b'\n')
                        .map_or(bytes.len(), |i| self.pos + i);
                }
                _ => break,
            }
        }
    }

    /// The next token.
    pub(crate) fn next_token(&mut self) -> Result<Token<'a>, IrError> {
        self.skip_trivia();
        let start = self.pos;
        let Some(c) = self.peek_char() else {
            return Ok(Token {
                tok: Tok::Eof,
                pos: start,
            });
        };
        let tok = if is_ident_start(c) {
            let len = self.src[start..]
                .find(|c: char| !is_ident_char(c))
                .unwrap_or(self.src.len() - start);
            self.pos += len;
            Tok::Ident(&self.src[start..self.pos])
        } else if c.is_ascii_digit() {
            Tok::Number(self.number())
        } else if c == '"' {
            Tok::Str(self.string()?)
        } else if c == '%' || c == '@' {
            self.pos += 1;
            let name = self.name(c)?;
            if c == '%' {
                Tok::Value(name)
            } else {
                Tok::NodeName(name)
            }
        } else {
            self.pos += c.len_utf8();
            Tok::Punct(match c {
                '(' => "(",
                ')' => ")",
                '[' => "[",
                ']' => "]",
                '{' => "{",
                '}' => "}",
                ',' => ",",
                '=' => "=",
                '+' => "+",
                '-' => "-",
                '*' => "*",
                '/' => "/",
                ':' if self.src[self.pos..].starts_with(':') => {
                    self.pos += 1;
                    "::"
                }
                ':' => ":",
                _ => {
                    return Err(error_at(
                        self.src,
                        start,
                        format!("unexpected character `{}`", c.escape_debug()),
                    ))
                }
            })
        };
        Ok(Token { tok, pos: start })
    }

    /// Digits, letters, `_` and `.`, and a sign right after a decimal
    /// exponent marker: enough to take `1e-5`, `0.125` and `0x7fc00001` whole.
    /// The parser decides what the text means where it is used.
    fn number(&mut self) -> &'a str {
        let start = self.pos;
        let bytes = self.src.as_bytes();
        let hex = bytes[start..].starts_with(b"0x") || bytes[start..].starts_with(b"0X");
        let mut i = start;
        while i < bytes.len() {
            let b = bytes[i];
            let exponent_sign =
                (b == b'+' || b == b'-') && !hex && matches!(bytes[i - 1], b'e' | b'E');
            if b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || exponent_sign {
                i += 1;
            } else {
                break;
            }
        }
        self.pos = i;
        &self.src[start..i]
    }

    /// The name after `%` or `@`: plain characters or a quoted string.
    fn name(&mut self, sigil: char) -> Result<Cow<'a, str>, IrError> {
        if self.src[self.pos..].starts_with('"') {
            return self.string();
        }
        let start = self.pos;
        let len = self.src[start..]
            .find(|c: char| !is_name_char(c))
            .unwrap_or(self.src.len() - start);
        if len == 0 {
            return Err(error_at(
                self.src,
                start - 1,
                format!("expected a name after `{sigil}` (quote names with other characters: {sigil}\"a name\")"),
            ));
        }
        self.pos += len;
        Ok(Cow::Borrowed(&self.src[start..self.pos]))
    }

    /// A double-quoted string starting at the current position.
    fn string(&mut self) -> Result<Cow<'a, str>, IrError> {
        let open = self.pos;
        let bytes = self.src.as_bytes();
        let body = open + 1;
        // Fast path: no escapes, borrow the text.
        let stop = bytes[body..]
            .iter()
            .position(|&b| matches!(b, b'"' | b'\\' | b'\n'))
            .map(|i| body + i);
        match stop {
            Some(i) if bytes[i] == b'"' => {
                self.pos = i + 1;
                return Ok(Cow::Borrowed(&self.src[body..i]));
            }
            Some(i) if bytes[i] == b'\\' => {}
            _ => {
                return Err(error_at(
                    self.src,
                    open,
                    "unterminated string (strings end on the line they start)",
                ))
            }
        }
        let mut out = String::new();
        let mut i = body;
        loop {
            let Some(c) = self.src[i..].chars().next() else {
                return Err(error_at(
                    self.src,
                    open,
                    "unterminated string (strings end on the line they start)",
                ));
            };
            match c {
                '"' => {
                    self.pos = i + 1;
                    return Ok(Cow::Owned(out));
                }
                '\n' => {
                    return Err(error_at(
                        self.src,
                        open,
                        "unterminated string (strings end on the line they start)",
                    ))
                }
                '\\' => {
                    let esc = self.src[i + 1..].chars().next();
                    let (ch, len) = match esc {
                        Some('"') => ('"', 2),
                        Some('\\') => ('\\', 2),
                        Some('n') => ('\n', 2),
                        Some('r') => ('\r', 2),
                        Some('t') => ('\t', 2),
                        Some('0') => ('\0', 2),
                        Some('u') => self.unicode_escape(i)?,
                        _ => return Err(error_at(
                            self.src,
                            i,
                            "unknown escape in string (use \\\\ \\\" \\n \\r \\t \\0 or \\u{hex})",
                        )),
                    };
                    out.push(ch);
                    i += len;
                }
                c => {
                    out.push(c);
                    i += c.len_utf8();
                }
            }
        }
    }

    /// `\u{hex}` at byte `i`; returns the character and the escape's length.
    fn unicode_escape(&self, i: usize) -> Result<(char, usize), IrError> {
        let rest = &self.src[i + 2..];
        let bad = || error_at(self.src, i, "malformed unicode escape (expected \\u{hex})");
        if !rest.starts_with('{') {
            return Err(bad());
        }
        let close = rest.find('}').ok_or_else(bad)?;
        let code = u32::from_str_radix(&rest[1..close], 16).map_err(|_| bad())?;
        let ch = char::from_u32(code).ok_or_else(|| {
            error_at(
                self.src,
                i,
                format!("\\u{{{code:x}}} is not a unicode scalar value"),
            )
        })?;
        Ok((ch, 2 + close + 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(s: &str) -> Vec<Tok<'_>> {
        let mut lx = Lexer::new(s);
        let mut out = Vec::new();
        loop {
            let t = lx.next_token().unwrap();
            if t.tok == Tok::Eof {
                return out;
            }
            out.push(t.tok);
        }
    }

    #[test]
    fn tokens_of_a_node_line() {
        let t = toks("%y: f32[seq-1] = kiln::Foo(%\"a b\", _) {eps = 1e-5} @n.1 # comment\n");
        assert_eq!(
            t,
            vec![
                Tok::Value("y".into()),
                Tok::Punct(":"),
                Tok::Ident("f32"),
                Tok::Punct("["),
                Tok::Ident("seq"),
                Tok::Punct("-"),
                Tok::Number("1"),
                Tok::Punct("]"),
                Tok::Punct("="),
                Tok::Ident("kiln"),
                Tok::Punct("::"),
                Tok::Ident("Foo"),
                Tok::Punct("("),
                Tok::Value("a b".into()),
                Tok::Punct(","),
                Tok::Ident("_"),
                Tok::Punct(")"),
                Tok::Punct("{"),
                Tok::Ident("eps"),
                Tok::Punct("="),
                Tok::Number("1e-5"),
                Tok::Punct("}"),
                Tok::NodeName("n.1".into()),
            ]
        );
    }

    #[test]
    fn escapes_and_positions() {
        assert_eq!(toks(r#""a\"\u{e9}\n""#), vec![Tok::Str("a\"é\n".into())]);
        let err = Lexer::new("\n  \"abc").next_token().unwrap_err();
        assert!(
            matches!(
                err,
                IrError::Parse {
                    line: 2,
                    column: 3,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(line_col("é\né€x", 8), (2, 3));
    }
}
