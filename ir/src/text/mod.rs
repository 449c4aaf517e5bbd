//! The canonical text form of graphs (`.mix` files): [`print`] and [`parse`].
//!
//! ```text
//! graph gla {
//!   dim B
//!   dim T
//!   dim S
//!   dim H = 4
//!   dim Dk = 16
//!   dim Dv = 8
//!   dim HV = H * Dv
//!   dim Kc = min(S, 63)
//!
//!   %q = input q : f32[B, T, H, Dk]
//!   %k = input k : f32[B, T, H, Dk]
//!   %v = input v : f32[B, T, H, Dv]
//!   %graw = input g : f32[B, T, H, Dk]
//!   %s0 = input? initial_state : f32[B, H, Dk, Dv]
//!   %c = const[value = 0.0625] : f32[]
//!   %g = logsigmoid(%graw) : f32[B, T, H, Dk]
//!   %gs = mul(%g, %c) : f32[B, T, H, Dk]
//!   %o, %final_state = linear_recurrence[transition = key_decay, scale = 0.25, normalize = false, eps = 0.0, has_initial = true](q = %q, k = %k, v = %v, gate = %gs, initial_state = %s0) : f32[B, T, H, Dv], f32[B, H, Dk, Dv]
//!   %o2 = reshape[shape = [B, T, HV]](%o) : f32[B, T, HV]
//!
//!   out o = %o
//!   out final_state = %final_state
//!   out "flat o" = %o2
//! }
//! ```
//!
//! # Grammar
//!
//! ```text
//! graph     := 'graph' name '{' stmt* '}'
//! stmt      := 'dim' IDENT ('=' size)?
//!            | VALUE (',' VALUE)* '=' op
//!            | 'out' name '=' VALUE
//! op        := 'input' '?'? name ':' type                   -- `?`: optional input
//!            | MNEMONIC ('[' attrs? ']')? ('(' operands? ')')? ':' type (',' type)*
//! attrs     := IDENT '=' attrval (',' IDENT '=' attrval)*
//! attrval   := '-'? NUMBER | '-'? ('inf' | 'NaN') | IDENT
//!            | '[' (attrval (',' attrval)*)? ']' | '{' attrs? '}'
//! operands  := VALUE (',' VALUE)* | IDENT '=' VALUE (',' IDENT '=' VALUE)*
//! type      := DTYPE '[' (IDENT (',' IDENT)*)? ']'
//! size      := term (('+' | '-') term)*                      -- left-associative
//! term      := atom ('*' atom)*
//! atom      := INTEGER | IDENT | 'min' '(' size ',' size ')' | '(' size ')'
//! name      := IDENT | STRING
//!
//! IDENT     := [A-Za-z_][A-Za-z0-9_]*
//! VALUE     := '%' IDENT | '%' STRING
//! NUMBER    := [0-9]+ ('.' [0-9]+)? ([eE] [+-]? [0-9]+)?
//! STRING    := '"' (char | '\\' | '\"' | '\n' | '\t' | '\r' | '\0' | '\u{HEX}')* '"'
//! ```
//!
//! Whitespace and newlines separate tokens only; `//` starts a comment to the
//! end of the line. Keywords (`graph`, `dim`, `out`, `input`, `min`) are
//! contextual, so dims and values may bear those names too.
//!
//! # Meaning
//!
//! - Statements apply in text order: a dim, value or input must be defined
//!   before it is used. The printer writes all dims (in table order), then all
//!   ops (in op order), then the outputs, so a printed graph parses back with
//!   identical ids: `parse(print(g)) == g`.
//! - `MNEMONIC` is [`OpKind::mnemonic`](crate::ops::OpKind::mnemonic). Every
//!   attribute of the kind is written, in a fixed order, and the parser requires
//!   all of them (in any order): dims by name, f64 in Rust's shortest round-trip
//!   form (`{:?}`: `0.0625`, `-0.0`, `1e-6`, `inf`, `NaN`), integers, `true` /
//!   `false`, dtypes and transitions by name, lists (`shape = [B, H]`,
//!   `weights = [0.5, 0.5]`) and the attention mask as a record
//!   (`mask = {causal = true, window = 16, sinks = 4}`, `window = none` for no
//!   window). `input` and `const` take their dtype and shape from the type.
//! - Operands are written `role = %v` with the roles of
//!   [`OpKind::operand_roles`](crate::ops::OpKind::operand_roles) when any role
//!   says something (`q`, `gate`, `idx`, `cache`, ...), and positionally when all
//!   roles are generic (`x`, `a`, `b`, `cond`, `x0`, `x1`, ...). The parser takes
//!   either form for any op; named operands may come in any order.
//! - The types after `:` are the results' types; the parser infers them again
//!   and rejects text where they differ.
//! - Names that are not identifiers (graph, value and output names) are written
//!   as quoted strings: `%"my value"`.
//! - Limits keep the verifier's size arithmetic exact and its work small on
//!   any input: dim sizes (and the coefficients of size expressions) are at most
//!   2^40, size expressions at most 256 terms with the dims they refer to
//!   expanded, nesting at most 32 deep, shapes at most 64 dims, and ops at most
//!   1024 operands.

mod lex;
mod parse;
mod print;

use crate::graph::Graph;

/// An error in graph text, with its place.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("line {line}, column {col}: {msg}")]
pub struct ParseError {
    pub line: usize,
    pub col: usize,
    pub msg: String,
}

/// Prints a graph in the canonical text form. Deterministic: the same graph
/// always prints the same text.
pub fn print(g: &Graph) -> String {
    print::print_graph(g)
}

/// Parses and verifies graph text.
pub fn parse(src: &str) -> Result<Graph, ParseError> {
    parse::parse_graph(src)
}
