//! The parser of tile kernels: reads back what [`print_kernel`](super::text::print_kernel)
//! writes, so that `parse_kernel(&print_kernel(&k)) == Ok(k)` for every
//! verified kernel (constants that are NaN aside: `NaN != NaN`).
//!
//! ```text
//! kernel scan(x: *f32, o: *f32, n: i32) {
//!   %0 = param[n] : i32[]
//!   %1 = program_id[axis = 0] : i32[]
//!   %2 = arange[16] : i32[16]
//!   %3 = const[16.0] : i32[]
//!   %4 = mul(%1, %3) : i32[]
//!   %5 = add(%2, %4) : i32[16]
//!   %6 = lt(%5, %0) : bool[16]
//!   %7 = load[x, other = 0.0](%5, mask = %6) : f32[16]
//!   %8 = const[0.0] : f32[]
//!   %9 = const[0] : i32[]
//!   %10 = const[4] : i32[]
//!   %11 = const[1] : i32[]
//!   %14 = for[%12, %13](%9, %10, %11; %8) {
//!     %15 = reduce_sum[axis = 0](%7) : f32[]
//!     %16 = add(%13, %15) : f32[]
//!     yield %16
//!   } : f32[]
//!   %17 = broadcast(%14) : f32[16]
//!   store[o](%5, %17, mask = %6)
//! }
//! ```
//!
//! # Grammar
//!
//! ```text
//! kernel   := 'kernel' name '(' (param (',' param)*)? ')' '{' top* ('yield' values?)? '}'
//! param    := name ':' '*'? DTYPE                      -- `*`: a pointer
//! top      := stmt | 'unused' VALUE ':' type
//! block    := stmt* 'yield' values?                     -- loop bodies and `if` arms
//! stmt     := (values '=')? op (':' type (',' type)*)?  -- one type per result
//! op       := 'program_id' '[' 'axis' '=' INT ']'
//!           | 'param' '[' pref ']'
//!           | 'const' '[' float ']'
//!           | 'arange' '[' INT ']'
//!           | UNARY '(' VALUE ')' | BINARY '(' VALUE ',' VALUE ')'
//!           | 'where' '(' VALUE ',' VALUE ',' VALUE ')'
//!           | 'cast' '[' DTYPE ']' '(' VALUE ')'
//!           | ('broadcast' | 'reshape' | 'transpose') '(' VALUE ')'
//!           | 'load' '[' pref ',' 'other' '=' float ']' '(' VALUE (',' 'mask' '=' VALUE)? ')'
//!           | 'store' '[' pref ']' '(' VALUE ',' VALUE (',' 'mask' '=' VALUE)? ')'
//!           | 'dot' '[' 'trans_a' '=' BOOL ',' 'trans_b' '=' BOOL ']'
//!                 '(' VALUE ',' VALUE (',' 'acc' '=' VALUE)? ')'
//!           | 'reduce_' REDUCE '[' 'axis' '=' INT ']' '(' VALUE ')'
//!           | 'cumsum' '[' 'axis' '=' INT ',' 'reverse' '=' BOOL ',' 'exclusive' '=' BOOL ']' '(' VALUE ')'
//!           | 'for' '[' VALUE (':' type)? (',' VALUE)* ']'
//!                 '(' VALUE ',' VALUE ',' VALUE (';' values)? ')' '{' block '}'
//!           | 'if' '(' VALUE ')' '{' block '}' 'else' '{' block '}'
//! values   := VALUE (',' VALUE)*
//! pref     := name | '#' INT                            -- a parameter by name or by index
//! type     := DTYPE '[' (INT (',' INT)*)? ']'
//! float    := '-'? (NUMBER | 'inf' | 'NaN')
//! name     := IDENT | STRING
//!
//! VALUE    := '%' [0-9]+
//! IDENT    := [A-Za-z_][A-Za-z0-9_]*
//! NUMBER   := [0-9]+ ('.' [0-9]+)? ([eE] [+-]? [0-9]+)?
//! STRING   := '"' (char | '\\' | '\"' | '\n' | '\t' | '\r' | '\0' | '\u{HEX}')* '"'
//! ```
//!
//! Whitespace separates tokens only; `//` starts a comment to the end of the
//! line. Keywords are contextual.
//!
//! # Meaning
//!
//! - `%N` is `TValue(N)`: the parser fills the kernel's type arena by index, so
//!   values may appear out of numeric order (a loop's induction variable and
//!   carried values are numbered before its body, its results after). Every
//!   slot up to the largest must be defined or declared `unused`.
//! - The loop header `for[%iv, %c...](%lo, %hi, %step; %init...)` names the
//!   body's arguments: the induction variable (`i32[]` unless annotated) and one
//!   carried value per `init`, of its type.
//! - The types after `:` are the results' types. For `const`, `broadcast` and
//!   `reshape` they are the declared result type; for every op the parser infers
//!   the types again ([`infer`]) and rejects text where they differ.
//! - A parameter is referred to by its name, or by index (`#2`) where names
//!   clash; the printer writes the index exactly when the name is ambiguous.
//! - Values follow the verifier's scoping: defined once before use, and values
//!   of a nested block are not visible after it.
//! - Limits keep the work bounded on any input: blocks nest at most 64 deep,
//!   tiles have at most 16 dims and 2^40 elements.

use super::build::infer;
use super::text::name as quoted;
use super::*;
use crate::dtype::DType;
use crate::ops::{binary_name, reduce_name, unary_name, BINARY_FNS, REDUCE_FNS, UNARY_FNS};
use crate::text::ParseError;

type PResult<T> = Result<T, ParseError>;

/// The deepest nesting of `for` and `if` blocks.
const MAX_DEPTH: usize = 64;
/// The most dims of a tile.
const MAX_RANK: usize = 16;
/// The most elements of a tile.
const MAX_NUMEL: u64 = 1 << 40;

/// Parses tile kernel text and verifies the kernel.
pub fn parse_kernel(src: &str) -> Result<Kernel, ParseError> {
    let toks = lex(src);
    let mut p = Parser {
        max_slots: toks.len(),
        toks,
        i: 0,
        k: Kernel::default(),
        state: Vec::new(),
        scopes: Vec::new(),
        depth: 0,
    };
    p.kernel()?;
    let end = p.pos();
    if let Some(i) = p.state.iter().position(|s| s.ty.is_none()) {
        return Err(end.err(format!("`%{i}` is never defined (declare it with `unused %{i} : TYPE`)")));
    }
    p.k.types = p.state.iter().map(|s| s.ty.clone().unwrap_or(TileType::scalar(DType::Bool))).collect();
    super::verify::verify(&p.k).map_err(|e| end.err(e.to_string()))?;
    Ok(p.k)
}

// ----- tokens -----

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Ident(String),
    /// An unsigned number as written.
    Num(String),
    Str(String),
    /// `%N`.
    Value(u32),
    /// One of `{ } [ ] ( ) , = : ; * - #`.
    Punct(char),
    Eof,
    /// A lexing error; always the last token.
    Error(String),
}

#[derive(Clone, Copy, Debug, PartialEq)]
struct Pos {
    line: usize,
    col: usize,
}

impl Pos {
    fn err(self, msg: impl Into<String>) -> ParseError {
        ParseError { line: self.line, col: self.col, msg: msg.into() }
    }
}

#[derive(Clone, Debug)]
struct Token {
    tok: Tok,
    pos: Pos,
}

const PUNCT: &[char] = &['{', '}', '[', ']', '(', ')', ',', '=', ':', ';', '*', '-', '#'];

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_'
}

fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

struct Lexer {
    chars: Vec<char>,
    i: usize,
    pos: Pos,
}

/// Lexes the whole input; the result ends with `Eof` or `Error`.
fn lex(src: &str) -> Vec<Token> {
    let mut lx = Lexer { chars: src.chars().collect(), i: 0, pos: Pos { line: 1, col: 1 } };
    let mut out = Vec::new();
    loop {
        lx.skip_trivia();
        let pos = lx.pos;
        match lx.token() {
            Ok(tok) => {
                let end = tok == Tok::Eof;
                out.push(Token { tok, pos });
                if end {
                    return out;
                }
            }
            Err((msg, pos)) => {
                out.push(Token { tok: Tok::Error(msg), pos });
                return out;
            }
        }
    }
}

impl Lexer {
    fn peek(&self, k: usize) -> Option<char> {
        self.chars.get(self.i + k).copied()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek(0)?;
        self.i += 1;
        if c == '\n' {
            self.pos.line += 1;
            self.pos.col = 1;
        } else {
            self.pos.col += 1;
        }
        Some(c)
    }

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

    fn token(&mut self) -> Result<Tok, (String, Pos)> {
        let Some(c) = self.peek(0) else { return Ok(Tok::Eof) };
        if is_ident_start(c) {
            let mut s = String::new();
            while let Some(c) = self.peek(0).filter(|c| is_ident_char(*c)) {
                s.push(c);
                self.bump();
            }
            return Ok(Tok::Ident(s));
        }
        if c.is_ascii_digit() {
            return Ok(Tok::Num(self.number()));
        }
        match c {
            '"' => Ok(Tok::Str(self.string()?)),
            '%' => {
                let at = self.pos;
                self.bump();
                let mut s = String::new();
                self.digits(&mut s);
                if s.is_empty() {
                    return Err(("expected a value number after `%`".into(), at));
                }
                s.parse::<u32>().map(Tok::Value).map_err(|_| (format!("value number `%{s}` is too large"), at))
            }
            c if PUNCT.contains(&c) => {
                self.bump();
                Ok(Tok::Punct(c))
            }
            c => Err((format!("unexpected character `{}`", c.escape_debug()), self.pos)),
        }
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
            let n = if signed { 2 } else { 1 };
            if digit_at(self, n) {
                for _ in 0..n {
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
    fn string(&mut self) -> Result<String, (String, Pos)> {
        let start = self.pos;
        self.bump();
        let mut s = String::new();
        loop {
            let at = self.pos;
            match self.bump() {
                None => return Err(("unterminated string".into(), start)),
                Some('"') => return Ok(s),
                Some('\\') => {
                    let bad = |what: String| Err((format!("bad escape in string: {what}"), at));
                    match self.bump() {
                        Some('\\') => s.push('\\'),
                        Some('"') => s.push('"'),
                        Some('n') => s.push('\n'),
                        Some('t') => s.push('\t'),
                        Some('r') => s.push('\r'),
                        Some('0') => s.push('\0'),
                        Some('u') => {
                            if self.bump() != Some('{') {
                                return bad("expected `{` after `\\u`".into());
                            }
                            let mut hex = String::new();
                            while let Some(c) = self.peek(0).filter(char::is_ascii_hexdigit) {
                                hex.push(c);
                                self.bump();
                            }
                            if self.bump() != Some('}') || hex.is_empty() || hex.len() > 6 {
                                return bad("expected `\\u{HEX}` with 1 to 6 hex digits".into());
                            }
                            match u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32) {
                                Some(c) => s.push(c),
                                None => return bad(format!("`\\u{{{hex}}}` is not a character")),
                            }
                        }
                        Some(c) => return bad(format!("unknown escape `\\{}`", c.escape_debug())),
                        None => return Err(("unterminated string".into(), start)),
                    }
                }
                Some(c) => s.push(c),
            }
        }
    }
}

fn describe(t: &Tok) -> String {
    match t {
        Tok::Ident(s) => format!("`{s}`"),
        Tok::Num(s) => format!("number `{s}`"),
        Tok::Str(s) => format!("string {s:?}"),
        Tok::Value(n) => format!("`%{n}`"),
        Tok::Punct(c) => format!("`{c}`"),
        Tok::Eof => "end of input".into(),
        Tok::Error(m) => m.clone(),
    }
}

fn fmt_type(t: &TileType) -> String {
    let s: Vec<String> = t.shape.iter().map(|d| d.to_string()).collect();
    format!("{}[{}]", t.dtype, s.join(", "))
}

// ----- the parser -----

/// What the parser knows of one arena slot.
#[derive(Clone, Debug, Default)]
struct Slot {
    ty: Option<TileType>,
    /// Defined and in scope here.
    visible: bool,
    /// Declared with `unused`.
    unused: bool,
}

struct Parser {
    toks: Vec<Token>,
    i: usize,
    /// The kernel so far; its `types` mirror `state` (placeholders where unknown)
    /// so that [`infer`] can read operand types.
    k: Kernel,
    state: Vec<Slot>,
    /// Values defined in each open block, innermost last.
    scopes: Vec<Vec<TValue>>,
    depth: usize,
    /// Value numbers must stay below this (each slot takes a token of its own),
    /// so the arena grows at most linearly in the input.
    max_slots: usize,
}

/// A value as written, with its place.
type Written = (TValue, Pos);

impl Parser {
    fn tok(&self) -> &Tok {
        self.toks.get(self.i).or(self.toks.last()).map(|t| &t.tok).unwrap_or(&Tok::Eof)
    }

    fn tok_at(&self, k: usize) -> &Tok {
        self.toks.get(self.i + k).or(self.toks.last()).map(|t| &t.tok).unwrap_or(&Tok::Eof)
    }

    fn pos(&self) -> Pos {
        self.toks.get(self.i).or(self.toks.last()).map(|t| t.pos).unwrap_or(Pos { line: 1, col: 1 })
    }

    fn bump(&mut self) {
        if self.i + 1 < self.toks.len() {
            self.i += 1;
        }
    }

    fn unexpected<T>(&self, what: &str) -> PResult<T> {
        if let Tok::Error(m) = self.tok() {
            return Err(self.pos().err(m.clone()));
        }
        Err(self.pos().err(format!("expected {what}, found {}", describe(self.tok()))))
    }

    fn is_punct(&self, c: char) -> bool {
        *self.tok() == Tok::Punct(c)
    }

    fn is_ident(&self, s: &str) -> bool {
        matches!(self.tok(), Tok::Ident(x) if x == s)
    }

    fn punct(&mut self, c: char) -> PResult<()> {
        if self.is_punct(c) {
            self.bump();
            Ok(())
        } else {
            self.unexpected(&format!("`{c}`"))
        }
    }

    fn keyword(&mut self, s: &str) -> PResult<()> {
        if self.is_ident(s) {
            self.bump();
            Ok(())
        } else {
            self.unexpected(&format!("`{s}`"))
        }
    }

    fn ident(&mut self, what: &str) -> PResult<(String, Pos)> {
        let pos = self.pos();
        match self.tok().clone() {
            Tok::Ident(s) => {
                self.bump();
                Ok((s, pos))
            }
            _ => self.unexpected(what),
        }
    }

    fn name(&mut self, what: &str) -> PResult<String> {
        match self.tok().clone() {
            Tok::Ident(s) | Tok::Str(s) => {
                self.bump();
                Ok(s)
            }
            _ => self.unexpected(what),
        }
    }

    fn int<T: TryFrom<u64>>(&mut self, what: &str) -> PResult<T> {
        let pos = self.pos();
        let Tok::Num(s) = self.tok().clone() else { return self.unexpected(what) };
        let n = s
            .parse::<u64>()
            .ok()
            .and_then(|n| T::try_from(n).ok())
            .ok_or_else(|| pos.err(format!("{what}: `{s}` is not an integer in range")))?;
        self.bump();
        Ok(n)
    }

    fn float(&mut self) -> PResult<f64> {
        let neg = self.is_punct('-');
        if neg {
            self.bump();
        }
        let pos = self.pos();
        let x = match self.tok().clone() {
            Tok::Num(s) => s.parse::<f64>().map_err(|_| pos.err(format!("bad number `{s}`")))?,
            Tok::Ident(s) if s == "inf" => f64::INFINITY,
            Tok::Ident(s) if s == "NaN" => f64::NAN,
            _ => return self.unexpected("a number"),
        };
        self.bump();
        Ok(if neg { -x } else { x })
    }

    fn boolean(&mut self) -> PResult<bool> {
        match self.tok() {
            Tok::Ident(s) if s == "true" => {
                self.bump();
                Ok(true)
            }
            Tok::Ident(s) if s == "false" => {
                self.bump();
                Ok(false)
            }
            _ => self.unexpected("`true` or `false`"),
        }
    }

    /// `key = ` before an attribute or named operand.
    fn key(&mut self, key: &str) -> PResult<()> {
        self.keyword(key)?;
        self.punct('=')
    }

    fn dtype(&mut self) -> PResult<DType> {
        let (s, pos) = self.ident("a dtype")?;
        s.parse::<DType>().map_err(|e| pos.err(e))
    }

    fn ty(&mut self) -> PResult<TileType> {
        let pos = self.pos();
        let dtype = self.dtype()?;
        self.punct('[')?;
        let mut shape = Vec::new();
        let mut numel: u64 = 1;
        while !self.is_punct(']') {
            if !shape.is_empty() {
                self.punct(',')?;
            }
            let d: u32 = self.int("a dim size")?;
            numel = numel.saturating_mul(u64::from(d));
            shape.push(d);
            if shape.len() > MAX_RANK {
                return Err(pos.err(format!("a tile has at most {MAX_RANK} dims")));
            }
        }
        self.bump();
        if numel > MAX_NUMEL {
            return Err(pos.err(format!("a tile has at most 2^40 elements, this one {numel}")));
        }
        Ok(TileType { dtype, shape })
    }

    // ----- values -----

    fn slot(&mut self, v: TValue, pos: Pos) -> PResult<&mut Slot> {
        let i = v.index();
        if i >= self.max_slots {
            return Err(pos.err(format!("value number `%{i}` is larger than the text can define")));
        }
        if i >= self.state.len() {
            self.state.resize(i + 1, Slot::default());
            self.k.types.resize(i + 1, TileType::scalar(DType::Bool));
        }
        Ok(&mut self.state[i])
    }

    /// A value being defined: `%N` as written.
    fn value_name(&mut self) -> PResult<Written> {
        let pos = self.pos();
        match *self.tok() {
            Tok::Value(n) => {
                self.bump();
                Ok((TValue(n), pos))
            }
            _ => self.unexpected("a value (`%N`)"),
        }
    }

    /// A value being used: it must be defined and in scope.
    fn operand(&mut self) -> PResult<TValue> {
        let (v, pos) = self.value_name()?;
        match self.state.get(v.index()) {
            Some(s) if s.visible => Ok(v),
            _ => Err(pos.err(format!("`%{}` is not defined here", v.0))),
        }
    }

    fn define(&mut self, v: TValue, t: TileType, pos: Pos) -> PResult<()> {
        let slot = self.slot(v, pos)?;
        if slot.visible {
            return Err(pos.err(format!("`%{}` is defined twice", v.0)));
        }
        if slot.unused {
            return Err(pos.err(format!("`%{}` is declared unused", v.0)));
        }
        if let Some(old) = &slot.ty {
            if *old != t {
                return Err(pos.err(format!(
                    "`%{}` was defined as {} before, here as {}",
                    v.0,
                    fmt_type(old),
                    fmt_type(&t)
                )));
            }
        }
        slot.ty = Some(t.clone());
        slot.visible = true;
        self.k.types[v.index()] = t;
        if let Some(scope) = self.scopes.last_mut() {
            scope.push(v);
        }
        Ok(())
    }

    fn values(&mut self, end: char) -> PResult<Vec<TValue>> {
        let mut out = Vec::new();
        while !self.is_punct(end) {
            if !out.is_empty() {
                self.punct(',')?;
            }
            out.push(self.operand()?);
        }
        Ok(out)
    }

    fn param_ref(&mut self) -> PResult<ParamId> {
        let pos = self.pos();
        if self.is_punct('#') {
            self.bump();
            let i: u32 = self.int("a parameter index")?;
            if i as usize >= self.k.params.len() {
                return Err(pos.err(format!("parameter #{i} does not exist")));
            }
            return Ok(ParamId(i));
        }
        let n = self.name("a parameter")?;
        let mut hits = self.k.params.iter().enumerate().filter(|(_, p)| p.name == n).map(|(i, _)| i);
        match (hits.next(), hits.next()) {
            (Some(i), None) => Ok(ParamId(i as u32)),
            (None, _) => Err(pos.err(format!("no parameter `{}`", quoted(&n)))),
            (Some(_), Some(_)) => Err(pos.err(format!("several parameters are named `{}`; use `#INDEX`", quoted(&n)))),
        }
    }

    // ----- structure -----

    fn kernel(&mut self) -> PResult<()> {
        self.keyword("kernel")?;
        self.k.name = self.name("a kernel name")?;
        self.punct('(')?;
        while !self.is_punct(')') {
            if !self.k.params.is_empty() {
                self.punct(',')?;
            }
            let name = self.name("a parameter name")?;
            self.punct(':')?;
            let ptr = self.is_punct('*');
            if ptr {
                self.bump();
            }
            let d = self.dtype()?;
            let kind = if ptr { ParamKind::Ptr(d) } else { ParamKind::Scalar(d) };
            self.k.params.push(Param { name, kind });
        }
        self.bump();
        self.punct('{')?;
        self.scopes.push(Vec::new());
        let mut stmts = Vec::new();
        let yields = loop {
            if self.is_punct('}') {
                break Vec::new();
            }
            if self.is_ident("yield") {
                self.bump();
                break self.values('}')?;
            }
            if self.is_ident("unused") && matches!(self.tok_at(1), Tok::Value(_)) {
                self.bump();
                self.unused()?;
                continue;
            }
            stmts.push(self.stmt()?);
        };
        self.punct('}')?;
        if *self.tok() != Tok::Eof {
            return self.unexpected("end of input");
        }
        self.k.body = Block { args: vec![], stmts, yields };
        Ok(())
    }

    fn unused(&mut self) -> PResult<()> {
        let (v, pos) = self.value_name()?;
        self.punct(':')?;
        let t = self.ty()?;
        let slot = self.slot(v, pos)?;
        if slot.ty.is_some() {
            return Err(pos.err(format!("`%{}` is defined, not unused", v.0)));
        }
        slot.ty = Some(t.clone());
        slot.unused = true;
        self.k.types[v.index()] = t;
        Ok(())
    }

    /// `{ stmt* yield values? }` with `args` in scope; the block's values go out
    /// of scope after it.
    fn block(&mut self, args: Vec<(TValue, TileType, Pos)>) -> PResult<Block> {
        let open = self.pos();
        self.punct('{')?;
        if self.depth >= MAX_DEPTH {
            return Err(open.err(format!("blocks nest at most {MAX_DEPTH} deep")));
        }
        self.depth += 1;
        self.scopes.push(Vec::new());
        let r = self.block_inner(args);
        for v in self.scopes.pop().unwrap_or_default() {
            if let Some(s) = self.state.get_mut(v.index()) {
                s.visible = false;
            }
        }
        self.depth -= 1;
        r
    }

    fn block_inner(&mut self, args: Vec<(TValue, TileType, Pos)>) -> PResult<Block> {
        let mut arg_ids = Vec::new();
        for (v, t, pos) in args {
            self.define(v, t, pos)?;
            arg_ids.push(v);
        }
        let mut stmts = Vec::new();
        while !self.is_ident("yield") {
            if self.is_punct('}') {
                return self.unexpected("`yield` before the end of the block");
            }
            stmts.push(self.stmt()?);
        }
        self.bump();
        let yields = self.values('}')?;
        self.bump();
        Ok(Block { args: arg_ids, stmts, yields })
    }

    fn stmt(&mut self) -> PResult<Stmt> {
        let mut results: Vec<Written> = Vec::new();
        if matches!(self.tok(), Tok::Value(_)) {
            loop {
                results.push(self.value_name()?);
                if self.is_punct('=') {
                    self.bump();
                    break;
                }
                self.punct(',')?;
            }
        }
        let op_pos = self.pos();
        let op = self.op()?;
        let mut written = Vec::new();
        if !results.is_empty() {
            self.punct(':')?;
            loop {
                let pos = self.pos();
                written.push((self.ty()?, pos));
                if written.len() == results.len() {
                    break;
                }
                self.punct(',')?;
            }
        }
        let declared = written.first().map(|(t, _)| t);
        let want = infer(&self.k, &op, declared).map_err(|m| op_pos.err(format!("`{}`: {m}", op.mnemonic())))?;
        if want.len() != results.len() {
            return Err(op_pos.err(format!(
                "`{}` has {} results, {} written",
                op.mnemonic(),
                want.len(),
                results.len()
            )));
        }
        for ((t, pos), w) in written.iter().zip(&want) {
            if t != w {
                return Err(pos.err(format!("the type is {}, written {}", fmt_type(w), fmt_type(t))));
            }
        }
        for ((v, pos), (t, _)) in results.iter().zip(written) {
            self.define(*v, t, *pos)?;
        }
        Ok(Stmt { results: results.into_iter().map(|(v, _)| v).collect(), op })
    }

    /// One operand in parentheses.
    fn one(&mut self) -> PResult<TValue> {
        self.punct('(')?;
        let x = self.operand()?;
        self.punct(')')?;
        Ok(x)
    }

    /// `, key = %v` or nothing.
    fn named_opt(&mut self, key: &str) -> PResult<Option<TValue>> {
        if self.is_punct(',') {
            self.bump();
            self.key(key)?;
            return Ok(Some(self.operand()?));
        }
        Ok(None)
    }

    fn op(&mut self) -> PResult<TOp> {
        let (mn, pos) = self.ident("an op")?;
        let op = match mn.as_str() {
            "program_id" => {
                self.punct('[')?;
                self.key("axis")?;
                let a: u8 = self.int("a grid axis")?;
                self.punct(']')?;
                TOp::ProgramId(a)
            }
            "param" => {
                self.punct('[')?;
                let p = self.param_ref()?;
                self.punct(']')?;
                TOp::Param(p)
            }
            "const" => {
                self.punct('[')?;
                let c = self.float()?;
                self.punct(']')?;
                TOp::Const(c)
            }
            "arange" => {
                self.punct('[')?;
                let n: u32 = self.int("a length")?;
                self.punct(']')?;
                TOp::Arange(n)
            }
            "where" => {
                self.punct('(')?;
                let c = self.operand()?;
                self.punct(',')?;
                let a = self.operand()?;
                self.punct(',')?;
                let b = self.operand()?;
                self.punct(')')?;
                TOp::Select(c, a, b)
            }
            "cast" => {
                self.punct('[')?;
                let d = self.dtype()?;
                self.punct(']')?;
                TOp::Cast(self.one()?, d)
            }
            "broadcast" => TOp::Broadcast(self.one()?),
            "reshape" => TOp::Reshape(self.one()?),
            "transpose" => TOp::Transpose(self.one()?),
            "load" => {
                self.punct('[')?;
                let ptr = self.param_ref()?;
                self.punct(',')?;
                self.key("other")?;
                let other = self.float()?;
                self.punct(']')?;
                self.punct('(')?;
                let offsets = self.operand()?;
                let mask = self.named_opt("mask")?;
                self.punct(')')?;
                TOp::Load { ptr, offsets, mask, other }
            }
            "store" => {
                self.punct('[')?;
                let ptr = self.param_ref()?;
                self.punct(']')?;
                self.punct('(')?;
                let offsets = self.operand()?;
                self.punct(',')?;
                let value = self.operand()?;
                let mask = self.named_opt("mask")?;
                self.punct(')')?;
                TOp::Store { ptr, offsets, value, mask }
            }
            "dot" => {
                self.punct('[')?;
                self.key("trans_a")?;
                let trans_a = self.boolean()?;
                self.punct(',')?;
                self.key("trans_b")?;
                let trans_b = self.boolean()?;
                self.punct(']')?;
                self.punct('(')?;
                let a = self.operand()?;
                self.punct(',')?;
                let b = self.operand()?;
                let acc = self.named_opt("acc")?;
                self.punct(')')?;
                TOp::Dot { a, b, acc, trans_a, trans_b }
            }
            "cumsum" => {
                self.punct('[')?;
                self.key("axis")?;
                let axis: u32 = self.int("an axis")?;
                self.punct(',')?;
                self.key("reverse")?;
                let reverse = self.boolean()?;
                self.punct(',')?;
                self.key("exclusive")?;
                let exclusive = self.boolean()?;
                self.punct(']')?;
                TOp::Cumsum { x: self.one()?, axis, reverse, exclusive }
            }
            "for" => self.for_op()?,
            "if" => {
                let cond = self.one()?;
                let then = self.block(vec![])?;
                self.keyword("else")?;
                let otherwise = self.block(vec![])?;
                TOp::If { cond, then, otherwise }
            }
            _ => {
                if let Some(f) = UNARY_FNS.iter().find(|f| unary_name(**f) == mn) {
                    TOp::Unary(*f, self.one()?)
                } else if let Some(f) = BINARY_FNS.iter().find(|f| binary_name(**f) == mn) {
                    self.punct('(')?;
                    let a = self.operand()?;
                    self.punct(',')?;
                    let b = self.operand()?;
                    self.punct(')')?;
                    TOp::Binary(*f, a, b)
                } else if let Some(f) =
                    mn.strip_prefix("reduce_").and_then(|r| REDUCE_FNS.iter().find(|f| reduce_name(**f) == r))
                {
                    self.punct('[')?;
                    self.key("axis")?;
                    let axis: u32 = self.int("an axis")?;
                    self.punct(']')?;
                    TOp::Reduce { func: *f, x: self.one()?, axis }
                } else {
                    return Err(pos.err(format!("unknown op `{mn}`")));
                }
            }
        };
        Ok(op)
    }

    /// `for[%iv (: type)?, %carried...](%lo, %hi, %step; %init...) { block }`
    fn for_op(&mut self) -> PResult<TOp> {
        self.punct('[')?;
        let mut args: Vec<(TValue, Option<TileType>, Pos)> = Vec::new();
        while !self.is_punct(']') {
            if !args.is_empty() {
                self.punct(',')?;
            }
            let (v, pos) = self.value_name()?;
            let mut t = None;
            if args.is_empty() && self.is_punct(':') {
                self.bump();
                t = Some(self.ty()?);
            }
            args.push((v, t, pos));
        }
        let close = self.pos();
        self.bump();
        self.punct('(')?;
        let lo = self.operand()?;
        self.punct(',')?;
        let hi = self.operand()?;
        self.punct(',')?;
        let step = self.operand()?;
        let mut init = Vec::new();
        if self.is_punct(';') {
            self.bump();
            init = self.values(')')?;
        }
        self.punct(')')?;
        if args.len() != init.len() + 1 {
            return Err(close.err(format!(
                "a loop with {} carried values takes {} block arguments (the induction variable first), found {}",
                init.len(),
                init.len() + 1,
                args.len()
            )));
        }
        let mut typed = Vec::new();
        for (i, (v, t, pos)) in args.into_iter().enumerate() {
            let t = match (i, t) {
                (0, t) => t.unwrap_or(TileType::scalar(DType::I32)),
                (i, _) => self.k.types.get(init[i - 1].index()).cloned().unwrap_or(TileType::scalar(DType::Bool)),
            };
            typed.push((v, t, pos));
        }
        let body = self.block(typed)?;
        Ok(TOp::For { lo, hi, step, init, body })
    }
}
