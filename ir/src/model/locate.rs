//! Where keys are in a model file's text: spans of every key and value,
//! turned into line/column and dotted key paths for error messages.
//!
//! Built from `toml_edit`'s span-preserving document, independently of the
//! serde structs, so that both serde errors (which carry a byte span) and
//! validation errors (which know a key path) can name their place.

use super::error::Place;
use std::ops::Range;
use toml_edit::{ImDocument, Item, Value};

/// One segment of a key path: a table key or an array index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Seg {
    Key(String),
    Index(usize),
}

impl From<&str> for Seg {
    fn from(s: &str) -> Seg {
        Seg::Key(s.to_string())
    }
}

impl From<&String> for Seg {
    fn from(s: &String) -> Seg {
        Seg::Key(s.clone())
    }
}

impl From<usize> for Seg {
    fn from(i: usize) -> Seg {
        Seg::Index(i)
    }
}

/// Renders a key path the way a TOML user writes it: `mixer.gla.heads`,
/// `model.pattern[2]`, `mixer."odd name".dk`.
pub(crate) fn format_path(path: &[Seg]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                let bare = !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
                if bare {
                    out.push_str(k);
                } else {
                    out.push('"');
                    out.push_str(&k.replace('\\', "\\\\").replace('"', "\\\""));
                    out.push('"');
                }
            }
            Seg::Index(i) => {
                out.push('[');
                out.push_str(&i.to_string());
                out.push(']');
            }
        }
    }
    out
}

struct Entry {
    path: Vec<Seg>,
    key: Option<Range<usize>>,
    item: Option<Range<usize>>,
}

/// The spans of a model file's keys and values.
pub(crate) struct SourceMap<'a> {
    file: &'a str,
    src: &'a str,
    entries: Vec<Entry>,
}

impl<'a> SourceMap<'a> {
    /// Maps `src`. Text that is not TOML maps to nothing (places then carry
    /// the file and key path only).
    pub(crate) fn new(file: &'a str, src: &'a str) -> SourceMap<'a> {
        let mut entries = Vec::new();
        if let Ok(doc) = ImDocument::parse(src) {
            walk_item(doc.as_item(), &mut Vec::new(), &mut entries);
        }
        SourceMap { file, src, entries }
    }

    /// 1-based line and column (in characters) of a byte offset.
    pub(crate) fn line_col(&self, offset: usize) -> (usize, usize) {
        line_col(self.src, offset)
    }

    /// The key path at the byte `offset`: the deepest key written there,
    /// else the deepest value (or table) that contains it. Keys come first
    /// because a table's span covers its header: in `[mixers.gla]`, the
    /// offset of `mixers` lies inside the table `mixers.gla` too.
    pub(crate) fn path_at(&self, offset: usize) -> Option<Vec<Seg>> {
        let contains = |r: &Option<Range<usize>>| {
            r.as_ref().is_some_and(|r| r.start <= offset && (offset < r.end || r.start == r.end))
        };
        let deepest = |hit: &dyn Fn(&Entry) -> bool| {
            self.entries.iter().filter(|e| hit(e)).max_by_key(|e| e.path.len()).map(|e| e.path.clone())
        };
        deepest(&|e| contains(&e.key)).or_else(|| deepest(&|e| contains(&e.item)))
    }

    /// The byte offset of a key path: its key where the key is written,
    /// else its value.
    fn offset_of(&self, path: &[Seg]) -> Option<usize> {
        let e = self.entries.iter().find(|e| e.path == path)?;
        e.key.as_ref().or(e.item.as_ref()).map(|r| r.start)
    }

    /// The byte offset of a key path's value.
    fn value_offset_of(&self, path: &[Seg]) -> Option<usize> {
        let e = self.entries.iter().find(|e| e.path == path)?;
        e.item.as_ref().or(e.key.as_ref()).map(|r| r.start)
    }

    /// The place of a key path. A key that is not written in the file (a
    /// missing required key) is placed at its nearest written ancestor.
    pub(crate) fn place(&self, path: &[Seg]) -> Place {
        let offset = (0..=path.len()).rev().find_map(|n| self.offset_of(&path[..n]));
        Place {
            file: self.file.to_string(),
            line_col: offset.map(|o| self.line_col(o)),
            key: (!path.is_empty()).then(|| format_path(path)),
        }
    }

    /// Like [`SourceMap::place`], but placed at the value rather than the key.
    pub(crate) fn value_place(&self, path: &[Seg]) -> Place {
        match self.value_offset_of(path) {
            Some(o) => Place {
                file: self.file.to_string(),
                line_col: Some(self.line_col(o)),
                key: (!path.is_empty()).then(|| format_path(path)),
            },
            None => self.place(path),
        }
    }

    /// The place of a byte span reported by the parser or by serde.
    pub(crate) fn place_of_span(&self, span: Option<Range<usize>>) -> Place {
        let start = span.map(|r| r.start);
        Place {
            file: self.file.to_string(),
            line_col: start.map(|o| self.line_col(o)),
            key: start.and_then(|o| self.path_at(o)).filter(|p| !p.is_empty()).map(|p| format_path(&p)),
        }
    }

    /// The byte offset at which the table or key path `path` starts, for
    /// ordering (e.g. mixers in file order).
    pub(crate) fn order_of(&self, path: &[Seg]) -> usize {
        self.offset_of(path).unwrap_or(usize::MAX)
    }
}

/// 1-based line and column (in characters) of a byte offset into `src`.
pub(crate) fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(src.len());
    while offset > 0 && !src.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &src[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = before[line_start..].chars().count() + 1;
    (line, col)
}

fn walk_item(item: &Item, path: &mut Vec<Seg>, out: &mut Vec<Entry>) {
    match item {
        Item::Table(t) => {
            for (k, _) in t.iter() {
                if let Some((key, child)) = t.get_key_value(k) {
                    path.push(Seg::Key(k.to_string()));
                    out.push(Entry { path: path.clone(), key: key.span(), item: child.span() });
                    walk_item(child, path, out);
                    path.pop();
                }
            }
        }
        Item::ArrayOfTables(a) => {
            for (i, t) in a.iter().enumerate() {
                path.push(Seg::Index(i));
                out.push(Entry { path: path.clone(), key: None, item: t.span() });
                for (k, _) in t.iter() {
                    if let Some((key, child)) = t.get_key_value(k) {
                        path.push(Seg::Key(k.to_string()));
                        out.push(Entry { path: path.clone(), key: key.span(), item: child.span() });
                        walk_item(child, path, out);
                        path.pop();
                    }
                }
                path.pop();
            }
        }
        Item::Value(v) => walk_value(v, path, out),
        Item::None => {}
    }
}

fn walk_value(v: &Value, path: &mut Vec<Seg>, out: &mut Vec<Entry>) {
    match v {
        Value::InlineTable(t) => {
            for (k, _) in t.iter() {
                if let Some((key, child)) = t.get_key_value(k) {
                    path.push(Seg::Key(k.to_string()));
                    out.push(Entry { path: path.clone(), key: key.span(), item: child.span() });
                    walk_item(child, path, out);
                    path.pop();
                }
            }
        }
        Value::Array(a) => {
            for (i, elem) in a.iter().enumerate() {
                path.push(Seg::Index(i));
                out.push(Entry { path: path.clone(), key: None, item: elem.span() });
                walk_value(elem, path, out);
                path.pop();
            }
        }
        _ => {}
    }
}
