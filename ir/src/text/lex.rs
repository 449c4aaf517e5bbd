//! The lexer of the graph text form: characters to tokens with their places.
//!
//! The whole input is lexed up front; a lexing error becomes the last token, so
//! the parser reports errors in text order (a syntax error before a stray
//! character is reported first).

/// What a token is.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Tok {
    /// `[A-Za-z_][A-Za-z0-9_]*`; keywords are identifiers too.
    Ident(String),
    /// An unsigned number as written: digits, an optional fraction, an optional
    /// exponent. Signs are separate `-` tokens.
    Num(String),
    /// A double-quoted string, escapes resolved.
    Str(String),
    /// A value name: `%name` or `%"any name"`.
    Value(String),
    /// One of `{ } [ ] ( ) , = : * + - ?`.
    Punct(char),
    Eof,
    /// A lexing error; always the last token.
    Error(String),
}

#[derive(Clone, Debug)]
pub(super) struct Token {
    pub tok: Tok,
    pub line: usize,
    pub col: usize,
}

const PUNCT: &[char] = &['{', '}', '[', ']', '(', ')', ',', '=', ':', '*', '+', '-', '?'];

/// Lexes the whole input; the result ends with `Eof` or `Error`.
pub(super) fn lex(src: &str) -> Vec<Token> {
    let mut lx = Lexer { chars: src.chars().collect(), i: 0, line: 1, col: 1 };
    let mut out = Vec::new();
    loop {
        lx.skip_trivia();
        let (line, col) = (lx.line, lx.col);
        match lx.token() {
            Ok(tok) => {
                let end = tok == Tok::Eof;
                out.push(Token { tok, line, col });
                if end {
                    break;
                }
            }
            Err((msg, line, col)) => {
                out.push(Token { tok: Tok::Error(msg), line, col });
                break;
            }
        }
    }
    out
}

struct Lexer {
    chars: Vec<char>,
    i: usize,
    line: usize,
    col: usize,
}

type LexResult<T> = Result<T, (String, usize, usize)>;

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_'
}

fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

impl Lexer {
    fn peek(&self, k: usize) -> Option<char> {
        self.chars.get(self.i + k).copied()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek(0)?;
        self.i += 1;
        if c == '\n' {
            self.line += 1;
            self.col = 1;
        } else {
            self.col += 1;
        }
        Some(c)
    }

    fn err<T>(&self, msg: String) -> LexResult<T> {
        Err((msg, self.line, self.col))
    }

    /// Skips whitespace and `//` comments.
    fn skip_trivia(&mut self) {
        loop {
            match self.peek(0) {
                Some(c) if c.is_whitespace() => {
                    self.bump();
                }
                Some('/') if self.peek(1) == Some('/') => {
                    while !matches!(self.peek(0), None | Some('\n')) {
                        self.bump();
                    }
                }
                _ => return,
            }
        }
    }

    fn token(&mut self) -> LexResult<Tok> {
        let Some(c) = self.peek(0) else {
            return Ok(Tok::Eof);
        };
        if is_ident_start(c) {
            return Ok(Tok::Ident(self.ident()));
        }
        if c.is_ascii_digit() {
            return Ok(Tok::Num(self.number()));
        }
        match c {
            '"' => Ok(Tok::Str(self.string()?)),
            '%' => {
                self.bump();
                match self.peek(0) {
                    Some(c) if is_ident_start(c) => Ok(Tok::Value(self.ident())),
                    Some('"') => Ok(Tok::Value(self.string()?)),
                    _ => self.err("expected a value name after `%` (an identifier or a quoted string)".into()),
                }
            }
            c if PUNCT.contains(&c) => {
                self.bump();
                Ok(Tok::Punct(c))
            }
            c => self.err(format!("unexpected character `{}`", c.escape_debug())),
        }
    }

    fn ident(&mut self) -> String {
        let mut s = String::new();
        while let Some(c) = self.peek(0).filter(|c| is_ident_char(*c)) {
            s.push(c);
            self.bump();
        }
        s
    }

    fn digits(&mut self, s: &mut String) {
        while let Some(c) = self.peek(0).filter(char::is_ascii_digit) {
            s.push(c);
            self.bump();
        }
    }

    /// `digits ('.' digits)? ([eE] [+-]? digits)?`
    fn number(&mut self) -> String {
        let mut s = String::new();
        self.digits(&mut s);
        let digit_at = |lx: &Lexer, k: usize| lx.peek(k).is_some_and(|c| c.is_ascii_digit());
        if self.peek(0) == Some('.') && digit_at(self, 1) {
            s.push('.');
            self.bump();
            self.digits(&mut s);
        }
        if matches!(self.peek(0), Some('e' | 'E')) {
            let signed = matches!(self.peek(1), Some('+' | '-'));
            if digit_at(self, if signed { 2 } else { 1 }) {
                for _ in 0..if signed { 2 } else { 1 } {
                    if let Some(c) = self.bump() {
                        s.push(c);
                    }
                }
                self.digits(&mut s);
            }
        }
        s
    }

    /// A double-quoted string with escapes `\\ \" \n \t \r \0 \u{HEX}`.
    fn string(&mut self) -> LexResult<String> {
        let (line, col) = (self.line, self.col);
        self.bump();
        let mut s = String::new();
        loop {
            match self.bump() {
                None => return Err(("unterminated string".into(), line, col)),
                Some('"') => return Ok(s),
                Some('\\') => {
                    let (eline, ecol) = (self.line, self.col - 1);
                    let bad = |what: &str| Err((format!("bad escape in string: {what}"), eline, ecol));
                    match self.bump() {
                        Some('\\') => s.push('\\'),
                        Some('"') => s.push('"'),
                        Some('n') => s.push('\n'),
                        Some('t') => s.push('\t'),
                        Some('r') => s.push('\r'),
                        Some('0') => s.push('\0'),
                        Some('u') => {
                            if self.bump() != Some('{') {
                                return bad("expected `{` after `\\u`");
                            }
                            let mut hex = String::new();
                            while let Some(c) = self.peek(0).filter(char::is_ascii_hexdigit) {
                                hex.push(c);
                                self.bump();
                            }
                            if self.bump() != Some('}') || hex.is_empty() || hex.len() > 6 {
                                return bad("expected `\\u{HEX}` with 1 to 6 hex digits");
                            }
                            match u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32) {
                                Some(c) => s.push(c),
                                None => return bad(&format!("`\\u{{{hex}}}` is not a character")),
                            }
                        }
                        Some(c) => return bad(&format!("unknown escape `\\{}`", c.escape_debug())),
                        None => return Err(("unterminated string".into(), line, col)),
                    }
                }
                Some(c) => s.push(c),
            }
        }
    }
}
