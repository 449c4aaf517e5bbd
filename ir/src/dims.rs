//! Named dimensions and their sizes.
//!
//! Every axis of every value is a named dim (`B`, `T`, `H`, `Dk`, ...). A dim is
//! either free (bound when the graph runs, from the inputs' shapes) or defined by
//! a size expression over other dims (`Dk = 64`, `HD = H * Dk`, `S2 = S + T`).
//! Shapes are lists of dims; broadcasting and contraction go by dim, not position.

use std::collections::BTreeMap;
use std::fmt;

/// Index of a dim in a graph's dim table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DimId(pub u32);

impl DimId {
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// The size of a dim, as an expression over other dims.
#[derive(Clone, Debug, PartialEq)]
pub enum SizeExpr {
    Const(u64),
    Dim(DimId),
    Add(Box<SizeExpr>, Box<SizeExpr>),
    Sub(Box<SizeExpr>, Box<SizeExpr>),
    Mul(Box<SizeExpr>, Box<SizeExpr>),
    Min(Box<SizeExpr>, Box<SizeExpr>),
}

impl SizeExpr {
    pub fn plus(a: SizeExpr, b: SizeExpr) -> SizeExpr {
        SizeExpr::Add(Box::new(a), Box::new(b))
    }
    pub fn minus(a: SizeExpr, b: SizeExpr) -> SizeExpr {
        SizeExpr::Sub(Box::new(a), Box::new(b))
    }
    pub fn times(a: SizeExpr, b: SizeExpr) -> SizeExpr {
        SizeExpr::Mul(Box::new(a), Box::new(b))
    }
    pub fn min_of(a: SizeExpr, b: SizeExpr) -> SizeExpr {
        SizeExpr::Min(Box::new(a), Box::new(b))
    }

    /// Dims this expression refers to directly.
    pub fn refs(&self, out: &mut Vec<DimId>) {
        match self {
            SizeExpr::Const(_) => {}
            SizeExpr::Dim(d) => out.push(*d),
            SizeExpr::Add(a, b) | SizeExpr::Sub(a, b) | SizeExpr::Mul(a, b) | SizeExpr::Min(a, b) => {
                a.refs(out);
                b.refs(out);
            }
        }
    }
}

/// One named dim.
#[derive(Clone, Debug, PartialEq)]
pub struct DimDef {
    pub name: String,
    /// `None`: free, bound at run time.
    pub size: Option<SizeExpr>,
}

/// The dim table of a graph. Dims may only refer to dims defined before them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DimTable {
    dims: Vec<DimDef>,
}

/// A size in canonical form: a polynomial over free dims (and opaque `min` atoms),
/// so that `H * Dk` and `Dk * H`, or `(S + T) - T` and `S`, compare equal.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Poly(BTreeMap<Vec<Atom>, i64>);

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Atom {
    Free(DimId),
    Min(Box<Poly>, Box<Poly>),
}

impl Poly {
    fn constant(c: i64) -> Poly {
        let mut m = BTreeMap::new();
        if c != 0 {
            m.insert(Vec::new(), c);
        }
        Poly(m)
    }
    fn atom(a: Atom) -> Poly {
        let mut m = BTreeMap::new();
        m.insert(vec![a], 1);
        Poly(m)
    }
    fn add(&self, o: &Poly, sign: i64) -> Poly {
        let mut m = self.0.clone();
        for (k, v) in &o.0 {
            let e = m.entry(k.clone()).or_insert(0);
            *e = e.wrapping_add(sign.wrapping_mul(*v));
            if *e == 0 {
                m.remove(k);
            }
        }
        Poly(m)
    }
    fn mul(&self, o: &Poly) -> Poly {
        let mut acc = Poly::constant(0);
        for (ka, va) in &self.0 {
            for (kb, vb) in &o.0 {
                let mut k: Vec<Atom> = ka.iter().chain(kb.iter()).cloned().collect();
                k.sort();
                acc = acc.add(&Poly([(k, va.wrapping_mul(*vb))].into_iter().collect()), 1);
            }
        }
        acc
    }
    /// The constant value, when the polynomial has no free part.
    pub fn as_const(&self) -> Option<i64> {
        match self.0.len() {
            0 => Some(0),
            1 => self.0.get(&Vec::new()).copied(),
            _ => None,
        }
    }
}

impl DimTable {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.dims.len()
    }

    pub fn is_empty(&self) -> bool {
        self.dims.is_empty()
    }

    pub fn get(&self, d: DimId) -> &DimDef {
        &self.dims[d.index()]
    }

    pub fn name(&self, d: DimId) -> &str {
        &self.dims[d.index()].name
    }

    pub fn iter(&self) -> impl Iterator<Item = (DimId, &DimDef)> {
        self.dims.iter().enumerate().map(|(i, d)| (DimId(i as u32), d))
    }

    pub fn lookup(&self, name: &str) -> Option<DimId> {
        self.dims.iter().position(|d| d.name == name).map(|i| DimId(i as u32))
    }

    /// Adds a dim; the caller guarantees the name is new and the expression refers
    /// only to existing dims (the builder and parser check both).
    pub fn push(&mut self, name: &str, size: Option<SizeExpr>) -> DimId {
        self.dims.push(DimDef { name: name.to_string(), size });
        DimId((self.dims.len() - 1) as u32)
    }

    /// Canonical polynomial of a dim's size.
    pub fn poly(&self, d: DimId) -> Poly {
        match &self.dims[d.index()].size {
            None => Poly::atom(Atom::Free(d)),
            Some(e) => self.expr_poly(e),
        }
    }

    pub fn expr_poly(&self, e: &SizeExpr) -> Poly {
        match e {
            SizeExpr::Const(c) => Poly::constant(*c as i64),
            SizeExpr::Dim(d) => self.poly(*d),
            SizeExpr::Add(a, b) => self.expr_poly(a).add(&self.expr_poly(b), 1),
            SizeExpr::Sub(a, b) => self.expr_poly(a).add(&self.expr_poly(b), -1),
            SizeExpr::Mul(a, b) => self.expr_poly(a).mul(&self.expr_poly(b)),
            SizeExpr::Min(a, b) => {
                let (pa, pb) = (self.expr_poly(a), self.expr_poly(b));
                match (pa.as_const(), pb.as_const()) {
                    (Some(x), Some(y)) => Poly::constant(x.min(y)),
                    _ => {
                        let (lo, hi) = if pa <= pb { (pa, pb) } else { (pb, pa) };
                        Poly::atom(Atom::Min(Box::new(lo), Box::new(hi)))
                    }
                }
            }
        }
    }

    /// Whether two dims have provably equal sizes.
    pub fn same_size(&self, a: DimId, b: DimId) -> bool {
        a == b || self.poly(a) == self.poly(b)
    }

    /// The constant size of a dim, if it has one.
    pub fn const_size(&self, d: DimId) -> Option<u64> {
        self.poly(d).as_const().and_then(|c| u64::try_from(c).ok())
    }

    /// Evaluates a dim's size given the sizes bound to free dims.
    pub fn eval(&self, d: DimId, bound: &BTreeMap<DimId, u64>) -> Result<u64, DimId> {
        match &self.dims[d.index()].size {
            None => bound.get(&d).copied().ok_or(d),
            Some(e) => self.eval_expr(e, bound),
        }
    }

    pub fn eval_expr(&self, e: &SizeExpr, bound: &BTreeMap<DimId, u64>) -> Result<u64, DimId> {
        Ok(match e {
            SizeExpr::Const(c) => *c,
            SizeExpr::Dim(d) => self.eval(*d, bound)?,
            SizeExpr::Add(a, b) => self.eval_expr(a, bound)?.saturating_add(self.eval_expr(b, bound)?),
            SizeExpr::Sub(a, b) => self.eval_expr(a, bound)?.saturating_sub(self.eval_expr(b, bound)?),
            SizeExpr::Mul(a, b) => self.eval_expr(a, bound)?.saturating_mul(self.eval_expr(b, bound)?),
            SizeExpr::Min(a, b) => self.eval_expr(a, bound)?.min(self.eval_expr(b, bound)?),
        })
    }

    /// Writes an expression in the text form (`H * Dk`, `S + T`, `min(S, 63)`).
    pub fn fmt_expr(&self, e: &SizeExpr) -> String {
        fn prec(e: &SizeExpr) -> u8 {
            match e {
                SizeExpr::Add(..) | SizeExpr::Sub(..) => 1,
                SizeExpr::Mul(..) => 2,
                _ => 3,
            }
        }
        let wrap = |x: &SizeExpr, min_prec: u8| {
            let s = self.fmt_expr(x);
            if prec(x) < min_prec {
                format!("({s})")
            } else {
                s
            }
        };
        match e {
            SizeExpr::Const(c) => c.to_string(),
            SizeExpr::Dim(d) => self.name(*d).to_string(),
            SizeExpr::Add(a, b) => format!("{} + {}", wrap(a, 1), wrap(b, 2)),
            SizeExpr::Sub(a, b) => format!("{} - {}", wrap(a, 1), wrap(b, 2)),
            SizeExpr::Mul(a, b) => format!("{} * {}", wrap(a, 2), wrap(b, 3)),
            SizeExpr::Min(a, b) => format!("min({}, {})", self.fmt_expr(a), self.fmt_expr(b)),
        }
    }

    pub fn fmt_shape(&self, shape: &[DimId]) -> String {
        let names: Vec<&str> = shape.iter().map(|d| self.name(*d)).collect();
        format!("[{}]", names.join(", "))
    }
}

impl fmt::Display for DimId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "dim#{}", self.0)
    }
}
