//! The tile kernel text form: random kernels built through `KernelBuilder`
//! print and parse back identically; truncated, edited and random text is
//! rejected with a place, never a panic.

use mixc_ir::dtype::DType;
use mixc_ir::ops::{BINARY_FNS, REDUCE_FNS, UNARY_FNS};
use mixc_ir::text::ParseError;
use mixc_ir::tile::build::broadcast_shapes;
use mixc_ir::tile::parse::parse_kernel;
use mixc_ir::tile::text::print_kernel;
use mixc_ir::tile::verify::verify;
use mixc_ir::tile::{Kernel, KernelBuilder, ParamId, TOp, TValue, TileError, TileType};
use proptest::prelude::*;

// ----- random kernels through the builder -----

/// Draws choices from proptest-made entropy; zeros once it runs out, so a
/// shrunk vector still builds a (smaller) kernel.
struct Draw<'a> {
    data: &'a [u32],
    i: usize,
}

impl Draw<'_> {
    fn next(&mut self) -> u32 {
        let v = self.data.get(self.i).copied().unwrap_or(0);
        self.i += 1;
        v
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            self.next() as usize % n
        }
    }
    fn chance(&mut self, percent: u32) -> bool {
        self.next() % 100 < percent
    }
    fn pick<T: Clone>(&mut self, xs: &[T]) -> Option<T> {
        if xs.is_empty() {
            return None;
        }
        let i = self.below(xs.len());
        Some(xs[i].clone())
    }
}

/// No NaN: `NaN != NaN` would make `==` on kernels fail.
const FLOATS: [f64; 12] =
    [0.0, -0.0, 1.0, -1.0, 0.0625, 0.1, -3.5, 1e-6, 1e300, 5e-324, f64::INFINITY, f64::NEG_INFINITY];
const DTYPES: [DType; 6] = [DType::F32, DType::F32, DType::I32, DType::Bool, DType::F64, DType::F16];
const DIMS: [u32; 5] = [1, 2, 3, 4, 8];
const NAMES: [&str; 12] =
    ["x", "y", "out", "other", "mask", "kernel", "unused", "yield", "my param", "quo\"te", "é", ""];

struct Gen<'a> {
    d: Draw<'a>,
    /// Values in scope, innermost block last.
    scopes: Vec<Vec<TValue>>,
    ptrs: Vec<ParamId>,
    depth: usize,
}

type Built = Result<Vec<TValue>, TileError>;

impl Gen<'_> {
    fn keep(&mut self, v: Result<TValue, TileError>) -> Option<TValue> {
        let v = v.ok()?;
        if let Some(s) = self.scopes.last_mut() {
            s.push(v);
        }
        Some(v)
    }

    fn visible(&self, b: &KernelBuilder, f: impl Fn(&TileType) -> bool) -> Vec<TValue> {
        self.scopes.iter().flatten().copied().filter(|v| f(b.ty(*v))).collect()
    }

    fn pick(&mut self, b: &KernelBuilder, f: impl Fn(&TileType) -> bool) -> Option<TValue> {
        let vs = self.visible(b, f);
        self.d.pick(&vs)
    }

    fn shape(&mut self) -> Vec<u32> {
        let rank = [0, 1, 1, 2, 2, 2, 3][self.d.below(7)];
        (0..rank).map(|_| DIMS[self.d.below(DIMS.len())]).collect()
    }

    fn constant(&mut self, b: &mut KernelBuilder, t: &TileType) -> Option<TValue> {
        let c = match t.dtype {
            DType::Bool => self.d.below(2) as f64,
            DType::I32 => self.d.below(9) as f64 - 4.0,
            _ => FLOATS[self.d.below(FLOATS.len())],
        };
        let v = b.constant(c, t.dtype, &t.shape);
        self.keep(v)
    }

    /// A visible value of exactly this type, or a new constant.
    fn need(&mut self, b: &mut KernelBuilder, t: &TileType) -> Option<TValue> {
        if self.d.chance(60) {
            if let Some(v) = self.pick(b, |x| x == t) {
                return Some(v);
            }
        }
        self.constant(b, t)
    }

    fn any(&mut self, b: &mut KernelBuilder) -> Option<TValue> {
        match self.pick(b, |_| true) {
            Some(v) if self.d.chance(85) => Some(v),
            _ => {
                let t = TileType { dtype: DTYPES[self.d.below(DTYPES.len())], shape: self.shape() };
                self.constant(b, &t)
            }
        }
    }

    fn i32_scalar(&mut self, b: &mut KernelBuilder) -> Option<TValue> {
        self.need(b, &TileType::scalar(DType::I32))
    }

    /// A float 2-D tile `[r, c]` (a new constant where none is visible).
    fn matrix(&mut self, b: &mut KernelBuilder, r: u32, c: u32) -> Option<TValue> {
        let want = |t: &TileType| t.dtype.is_float() && t.shape == [r, c];
        match self.pick(b, want) {
            Some(v) if self.d.chance(70) => Some(v),
            _ => self.constant(b, &TileType::new(DType::F32, &[r, c])),
        }
    }

    fn random_op(&mut self, b: &mut KernelBuilder) -> Option<()> {
        match self.d.below(20) {
            0 => {
                let a = self.d.below(3) as u8;
                let v = b.program_id(a);
                self.keep(v)?;
            }
            1 => {
                let name = self.d.pick(&NAMES)?;
                let d = if self.d.chance(50) { DType::I32 } else { DType::F32 };
                let v = b.scalar_param(name, d);
                self.keep(v)?;
            }
            2 => {
                let t = TileType { dtype: DTYPES[self.d.below(DTYPES.len())], shape: self.shape() };
                self.constant(b, &t)?;
            }
            3 => {
                let n = DIMS[self.d.below(DIMS.len())] * 2;
                let v = b.arange(n);
                self.keep(v)?;
            }
            4 => {
                let x = self.any(b)?;
                let f = self.d.pick(&UNARY_FNS)?;
                let v = b.unary(f, x);
                self.keep(v)?;
            }
            5 | 6 => {
                let a = self.any(b)?;
                let ta = b.ty(a).clone();
                let other =
                    match self.pick(b, |t| t.dtype == ta.dtype && broadcast_shapes(&t.shape, &ta.shape).is_some()) {
                        Some(v) if self.d.chance(70) => v,
                        _ => self.need(b, &TileType::scalar(ta.dtype))?,
                    };
                let (x, y) = if self.d.chance(50) { (a, other) } else { (other, a) };
                let f = self.d.pick(&BINARY_FNS)?;
                let v = b.binary(f, x, y);
                self.keep(v)?;
            }
            7 => {
                let a = self.any(b)?;
                let ta = b.ty(a).clone();
                let cond = match self.pick(b, |t| t.dtype == DType::Bool && t.shape == ta.shape) {
                    Some(c) => c,
                    None => self.need(b, &TileType::scalar(DType::Bool))?,
                };
                let other = self.need(b, &TileType::scalar(ta.dtype))?;
                let v = b.select(cond, a, other);
                self.keep(v)?;
            }
            8 => {
                let x = self.any(b)?;
                let d = DTYPES[self.d.below(DTYPES.len())];
                let v = b.cast(x, d);
                self.keep(v)?;
            }
            9 => {
                let x = self.pick(b, |t| t.shape.len() < 3)?;
                let mut to = b.ty(x).shape.clone();
                for d in to.iter_mut() {
                    if *d == 1 {
                        *d = DIMS[self.d.below(DIMS.len())];
                    }
                }
                if self.d.chance(50) {
                    to.insert(0, DIMS[self.d.below(DIMS.len())]);
                }
                let v = b.broadcast(x, &to);
                self.keep(v)?;
            }
            10 => {
                let x = self.any(b)?;
                let s = b.ty(x).shape.clone();
                let v = match s.len() {
                    2 if self.d.chance(50) => b.reshape(x, &[s[0] * s[1]]),
                    0..=2 => b.expand(x, self.d.below(s.len() + 1)),
                    _ => b.reshape(x, &[s.iter().product()]),
                };
                self.keep(v)?;
            }
            11 => {
                let x = self.pick(b, |t| t.shape.len() == 2)?;
                let v = b.transpose(x);
                self.keep(v)?;
            }
            12 => {
                let ptr = self.d.pick(&self.ptrs.clone())?;
                let offs = match self.pick(b, |t| t.dtype == DType::I32 && !t.shape.is_empty()) {
                    Some(o) => o,
                    None => {
                        let v = b.arange(DIMS[self.d.below(DIMS.len())]);
                        self.keep(v)?
                    }
                };
                let shape = b.ty(offs).shape.clone();
                let mask =
                    if self.d.chance(60) { Some(self.need(b, &TileType::new(DType::Bool, &shape))?) } else { None };
                let other = FLOATS[self.d.below(FLOATS.len())];
                let v = b.load(ptr, offs, mask, other);
                self.keep(v)?;
            }
            13 => {
                let ptr = self.d.pick(&self.ptrs.clone())?;
                let value = self.any(b)?;
                let shape = b.ty(value).shape.clone();
                let offs = self.need(b, &TileType::new(DType::I32, &shape))?;
                let mask =
                    if self.d.chance(60) { Some(self.need(b, &TileType::new(DType::Bool, &shape))?) } else { None };
                b.store(ptr, offs, value, mask).ok()?;
            }
            14 => {
                let (m, k, n) = (DIMS[self.d.below(5)], DIMS[self.d.below(5)], DIMS[self.d.below(5)]);
                let (ta, tb) = (self.d.chance(30), self.d.chance(30));
                let a = if ta { self.matrix(b, k, m)? } else { self.matrix(b, m, k)? };
                let bb = if tb { self.matrix(b, n, k)? } else { self.matrix(b, k, n)? };
                let acc = if self.d.chance(50) { Some(self.matrix(b, m, n)?) } else { None };
                let v = b.dot(a, bb, acc, ta, tb);
                self.keep(v)?;
            }
            15 => {
                let x = self.pick(b, |t| !t.shape.is_empty())?;
                let axis = self.d.below(b.ty(x).shape.len()) as u32;
                let f = self.d.pick(&REDUCE_FNS)?;
                let v = b.reduce(f, x, axis);
                self.keep(v)?;
            }
            16 => {
                let x = self.pick(b, |t| !t.shape.is_empty())?;
                let axis = self.d.below(b.ty(x).shape.len()) as u32;
                let (reverse, exclusive) = (self.d.chance(50), self.d.chance(50));
                let v = b.emit(TOp::Cumsum { x, axis, reverse, exclusive }, None).map(|r| r[0]);
                self.keep(v)?;
            }
            17 | 18 if self.depth < 3 => self.for_loop(b)?,
            19 if self.depth < 3 => self.if_else(b)?,
            _ => {
                let v = b.program_id(0);
                self.keep(v)?;
            }
        }
        Some(())
    }

    fn for_loop(&mut self, b: &mut KernelBuilder) -> Option<()> {
        let lo = self.i32_scalar(b)?;
        let hi = self.i32_scalar(b)?;
        let step = self.i32_scalar(b)?;
        let mut init = Vec::new();
        for _ in 0..self.d.below(3) {
            init.push(self.any(b)?);
        }
        let n = self.d.below(6);
        // Now and then the body fails: the builder has numbered the loop's
        // arguments and body already, which leaves holes in the arena.
        let fail = self.d.chance(4);
        let res = b.for_loop(lo, hi, step, &init, |b, iv, carried| {
            let mut scope = vec![iv];
            scope.extend_from_slice(carried);
            self.scopes.push(scope);
            self.depth += 1;
            for _ in 0..n {
                self.random_op(b);
            }
            let mut yields = Vec::new();
            for c in carried {
                let t = b.ty(*c).clone();
                yields.push(self.pick(b, |x| *x == t).unwrap_or(*c));
            }
            self.depth -= 1;
            self.scopes.pop();
            if fail {
                return Err(TileError::Program("the body gives up".into()));
            }
            Ok(yields)
        });
        if let Ok(rs) = res {
            if let Some(s) = self.scopes.last_mut() {
                s.extend(rs);
            }
        }
        Some(())
    }

    /// An `if` arm: some statements, then a visible value of each type.
    fn arm(&mut self, b: &mut KernelBuilder, n: usize, types: &[TileType]) -> Built {
        self.scopes.push(vec![]);
        self.depth += 1;
        for _ in 0..n {
            self.random_op(b);
        }
        let ys = types.iter().map(|t| self.pick(b, |x| x == t)).collect::<Option<Vec<_>>>();
        self.depth -= 1;
        self.scopes.pop();
        ys.ok_or_else(|| TileError::Program("no value to yield".into()))
    }

    fn if_else(&mut self, b: &mut KernelBuilder) -> Option<()> {
        let cond = match self.pick(b, |t| *t == TileType::scalar(DType::Bool)) {
            Some(c) if self.d.chance(50) => c,
            _ => {
                let x = self.i32_scalar(b)?;
                let y = self.i32_scalar(b)?;
                let v = b.lt(x, y);
                self.keep(v)?
            }
        };
        let mut types = Vec::new();
        for _ in 0..self.d.below(3) {
            let v = self.any(b)?;
            types.push(b.ty(v).clone());
        }
        let (n1, n2) = (self.d.below(5), self.d.below(5));
        let cell = std::cell::RefCell::new(&mut *self);
        let res = b.if_else(cond, |b| cell.borrow_mut().arm(b, n1, &types), |b| cell.borrow_mut().arm(b, n2, &types));
        if let Ok(rs) = res {
            if let Some(s) = self.scopes.last_mut() {
                s.extend(rs);
            }
        }
        Some(())
    }
}

/// A random well-formed kernel, built only through the builder API.
fn random_kernel(data: &[u32]) -> Kernel {
    let mut g = Gen { d: Draw { data, i: 0 }, scopes: vec![vec![]], ptrs: vec![], depth: 0 };
    let name = ["k", "scan", "my kernel", "quo\"te", "", "new\nline"][g.d.below(6)];
    let mut b = KernelBuilder::new(name);
    for _ in 0..1 + g.d.below(3) {
        let n = g.d.pick(&NAMES).unwrap_or("x");
        let d = [DType::F32, DType::F16, DType::BF16, DType::I32, DType::F64][g.d.below(5)];
        g.ptrs.push(b.ptr_param(n, d));
    }
    for _ in 0..g.d.below(3) {
        let n = g.d.pick(&NAMES).unwrap_or("n");
        let d = if g.d.chance(50) { DType::I32 } else { DType::F32 };
        if let Ok(v) = b.scalar_param(n, d) {
            g.scopes[0].push(v);
        }
    }
    for _ in 0..g.d.below(30) {
        g.random_op(&mut b);
    }
    let extra = g.d.chance(10);
    let mut k = b.finish().unwrap_or_else(|e| panic!("the builder made a bad kernel: {e}"));
    if extra {
        // A trailing arena slot nothing defines.
        k.types.push(TileType::new(DType::F32, &[3]));
    }
    k
}

fn kernels() -> impl Strategy<Value = Kernel> {
    prop::collection::vec(any::<u32>(), 0..500).prop_map(|data| random_kernel(&data))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn parse_print_round_trips(k in kernels()) {
        prop_assert!(verify(&k).is_ok(), "builder made a bad kernel");
        let text = print_kernel(&k);
        let back = parse_kernel(&text).map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        prop_assert!(verify(&back).is_ok());
        prop_assert_eq!(&back, &k, "{}", text);
        // `==` on f64 equates 0.0 and -0.0; the text does not.
        prop_assert_eq!(print_kernel(&back), text);
    }

    #[test]
    fn printing_is_deterministic(k in kernels()) {
        let text = print_kernel(&k);
        prop_assert_eq!(print_kernel(&k), text.clone());
        prop_assert_eq!(print_kernel(&k.clone()), text);
    }

    #[test]
    fn truncated_text_is_rejected(k in kernels(), cuts in prop::collection::vec(any::<prop::sample::Index>(), 1..40)) {
        let text = print_kernel(&k);
        let chars: Vec<char> = text.chars().collect();
        for cut in cuts {
            let prefix: String = chars[..cut.index(chars.len() + 1)].iter().collect();
            let r = parse_kernel(&prefix);
            if prefix.trim_end() == text.trim_end() {
                prop_assert!(r.is_ok());
            } else {
                prop_assert!(r.is_err(), "a truncation parsed: {prefix:?}");
            }
        }
    }

    #[test]
    fn edited_text_never_panics(
        k in kernels(),
        edits in prop::collection::vec(
            (any::<prop::sample::Index>(), 0u8..3, any::<bool>(), any::<char>()),
            1..8,
        ),
    ) {
        let mut chars: Vec<char> = print_kernel(&k).chars().collect();
        let pool: Vec<char> = "%[](){},=:;*-#\"\\ \n0123456789.eyieldforif_".chars().collect();
        for (at, how, any_char, c) in edits {
            let c = if any_char { c } else { pool[(c as usize) % pool.len()] };
            let i = at.index(chars.len() + 1);
            match how {
                0 if i < chars.len() => { chars.remove(i); }
                1 if i < chars.len() => chars[i] = c,
                _ => chars.insert(i, c),
            }
        }
        let text: String = chars.into_iter().collect();
        if let Ok(k2) = parse_kernel(&text) {
            // Whatever parses is well formed and prints canonically.
            prop_assert!(verify(&k2).is_ok());
            let again = print_kernel(&k2);
            let k3 = parse_kernel(&again).map_err(|e| TestCaseError::fail(format!("{e}\n{again}")))?;
            prop_assert_eq!(print_kernel(&k3), again);
        }
    }

    #[test]
    fn random_strings_are_rejected(s in any::<String>()) {
        prop_assert!(parse_kernel(&s).is_err());
    }

    #[test]
    fn random_token_soup_never_panics(
        words in prop::collection::vec(prop::sample::select(vec![
            "kernel", "k", "{", "}", "(", ")", "[", "]", ",", "=", ":", ";", "*", "-", "#", "#0", "%0", "%1", "%2",
            "%99999999999", "f32", "i32", "bool", "[4]", "[]", "const", "1.0", "for", "if", "else", "yield",
            "unused", "load", "store", "x", "other", "mask", "axis", "dot", "add", "exp", "reduce_sum", "param",
            "\"s\"", "1e400", "99999999999999999999", "\n",
        ]), 0..60)
    ) {
        let s = words.join(" ");
        let _ = parse_kernel(&s);
        let with_header = format!("kernel k(x: *f32, n: i32) {{ {s}");
        let _ = parse_kernel(&with_header);
        let closed = format!("kernel k(x: *f32, n: i32) {{ {s} }}");
        if let Ok(k) = parse_kernel(&closed) {
            prop_assert!(verify(&k).is_ok());
        }
    }
}

// ----- the canonical form -----

fn scan_by_builder() -> Kernel {
    let mut b = KernelBuilder::new("scan");
    let x = b.ptr_param("x", DType::F32);
    let o = b.ptr_param("o", DType::F32);
    let n = b.scalar_param("n", DType::I32).unwrap();
    let pid = b.program_id(0).unwrap();
    let ar = b.arange(4).unwrap();
    let four = b.i32(4).unwrap();
    let base = b.mul(pid, four).unwrap();
    let offs = b.add(ar, base).unwrap();
    let m = b.lt(offs, n).unwrap();
    let xs = b.load(x, offs, Some(m), 0.0).unwrap();
    let zero = b.f32(0.0).unwrap();
    let lo = b.i32(0).unwrap();
    let one = b.i32(1).unwrap();
    let r = b
        .for_loop(lo, four, one, &[zero], |b, _iv, c| {
            let s = b.reduce(mixc_ir::ops::ReduceFn::Sum, xs, 0)?;
            Ok(vec![b.add(c[0], s)?])
        })
        .unwrap();
    let c = b.lt(lo, n).unwrap();
    let y = b.if_else(c, |b| Ok(vec![b.broadcast(r[0], &[4])?]), |b| Ok(vec![b.zeros(&[4])?])).unwrap();
    b.store(o, offs, y[0], Some(m)).unwrap();
    b.finish().unwrap()
}

const SCAN: &str = r#"kernel scan(x: *f32, o: *f32, n: i32) {
  %0 = param[n] : i32[]
  %1 = program_id[axis = 0] : i32[]
  %2 = arange[4] : i32[4]
  %3 = const[4.0] : i32[]
  %4 = mul(%1, %3) : i32[]
  %5 = add(%2, %4) : i32[4]
  %6 = lt(%5, %0) : bool[4]
  %7 = load[x, other = 0.0](%5, mask = %6) : f32[4]
  %8 = const[0.0] : f32[]
  %9 = const[0.0] : i32[]
  %10 = const[1.0] : i32[]
  %15 = for[%11, %12](%9, %3, %10; %8) {
    %13 = reduce_sum[axis = 0](%7) : f32[]
    %14 = add(%12, %13) : f32[]
    yield %14
  } : f32[]
  %16 = lt(%9, %0) : bool[]
  %19 = if(%16) {
    %17 = broadcast(%15) : f32[4]
    yield %17
  } else {
    %18 = const[0.0] : f32[4]
    yield %18
  } : f32[4]
  store[o](%5, %19, mask = %6)
}
"#;

#[test]
fn prints_the_canonical_form() {
    let k = scan_by_builder();
    assert_eq!(print_kernel(&k), SCAN);
    assert_eq!(parse_kernel(SCAN).unwrap(), k);
}

#[test]
fn accepts_comments_and_free_layout() {
    let text = SCAN
        .replace("  %16 = lt", "  // the guard\n  %16 = lt")
        .replace(", mask = %6)\n}", ",\n mask = %6) // done\n}");
    assert_eq!(parse_kernel(&text).unwrap(), scan_by_builder());
}

#[test]
fn clashing_and_odd_names_round_trip() {
    let mut b = KernelBuilder::new("my kernel");
    let p0 = b.ptr_param("x", DType::F32);
    let p1 = b.ptr_param("x", DType::I32);
    b.ptr_param("other", DType::F32);
    let n = b.scalar_param("x", DType::I32).unwrap();
    let q = b.scalar_param("quo\"te", DType::F32).unwrap();
    let offs = b.arange(2).unwrap();
    let a = b.load(p0, offs, None, -0.0).unwrap();
    let i = b.load(p1, offs, None, f64::NEG_INFINITY).unwrap();
    let _ = (n, q, a, i);
    let k = b.finish().unwrap();
    let text = print_kernel(&k);
    assert!(
        text.starts_with("kernel \"my kernel\"(x: *f32, x: *i32, other: *f32, x: i32, \"quo\\\"te\": f32) {"),
        "{text}"
    );
    assert!(text.contains("param[#3]") && text.contains("load[#0, other = -0.0]") && text.contains("other = -inf]"));
    assert!(text.contains("param[\"quo\\\"te\"]"), "{text}");
    let back = parse_kernel(&text).unwrap();
    assert_eq!(back, k);
    assert_eq!(print_kernel(&back), text);
}

#[test]
fn holes_in_the_arena_and_odd_induction_types_round_trip() {
    // Without the `if` and the store, %17 to %19 are slots nothing defines; one
    // more at the end.
    let mut k = scan_by_builder();
    k.body.stmts.truncate(k.body.stmts.len() - 2);
    k.types.push(TileType::new(DType::Bool, &[2, 2]));
    assert!(verify(&k).is_ok());
    let text = print_kernel(&k);
    assert!(
        text.ends_with(
            "  unused %17 : f32[4]\n  unused %18 : f32[4]\n  unused %19 : f32[4]\n  unused %20 : bool[2, 2]\n}\n"
        ),
        "{text}"
    );
    // An induction variable that is not `i32[]` (the verifier allows it) is annotated.
    let mut k2 = scan_by_builder();
    for s in &mut k2.body.stmts {
        if let TOp::For { body, .. } = &mut s.op {
            k2.types[body.args[0].index()] = TileType::new(DType::F32, &[]);
        }
    }
    assert!(print_kernel(&k2).contains("for[%11 : f32[], %12]"));
    for k in [k, k2] {
        let text = print_kernel(&k);
        let back = parse_kernel(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(back, k, "{text}");
    }
}

#[test]
fn empty_and_resultless_blocks_print_plainly() {
    let mut b = KernelBuilder::new("k");
    let o = b.ptr_param("o", DType::F32);
    let lo = b.i32(0).unwrap();
    let hi = b.i32(2).unwrap();
    b.for_loop(lo, hi, hi, &[], |b, iv, _| {
        let v = b.cast(iv, DType::F32)?;
        b.store(o, iv, v, None)?;
        Ok(vec![])
    })
    .unwrap();
    let c = b.lt(lo, hi).unwrap();
    b.if_else(c, |_| Ok(vec![]), |_| Ok(vec![])).unwrap();
    let k = b.finish().unwrap();
    let text = print_kernel(&k);
    assert!(text.contains("for[%2](%0, %1, %1) {\n"), "{text}");
    assert!(text.contains("    yield\n  }\n"), "{text}");
    assert!(!text.contains(" \n"), "trailing space: {text:?}");
    assert_eq!(parse_kernel(&text).unwrap(), k);
}

// ----- errors -----

fn err(text: &str) -> ParseError {
    match parse_kernel(text) {
        Ok(_) => panic!("parsed: {text}"),
        Err(e) => e,
    }
}

fn body_err(body: &str) -> ParseError {
    err(&format!("kernel k(x: *f32, n: i32) {{\n{body}\n}}\n"))
}

#[test]
fn error_display_names_line_and_column() {
    let e = body_err("  %0 = frobnicate(%1) : f32[]");
    assert_eq!(e.to_string(), "line 2, column 8: unknown op `frobnicate`");
}

#[test]
fn errors_name_their_place() {
    let cases: &[(&str, (usize, usize), &str)] = &[
        ("  %0 = exp(%1) : f32[]", (2, 12), "`%1` is not defined here"),
        ("  %0 = const[1.0] : f32[]\n  %0 = const[1.0] : f32[]", (3, 3), "defined twice"),
        ("  %0 = const[1.0] : f32[]\n  %1 = exp(%0) : f64[]", (3, 18), "the type is f32[], written f64[]"),
        ("  %0 = param[x] : i32[]", (2, 8), "a pointer parameter is not a value"),
        ("  %0 = param[m] : i32[]", (2, 14), "no parameter `m`"),
        ("  %0 = program_id[axis = 3] : i32[]", (2, 8), "grid axis 3"),
        ("  %0 = program_id[axis = 300] : i32[]", (2, 26), "not an integer in range"),
        ("  %0 = arange[4] : i32[4]\n  %1 = transpose(%0) : i32[4]", (3, 8), "transpose takes a 2-D tile"),
        ("  %0 = const[1.0] : f32[]\n  %1, %2 = exp(%0) : f32[], f32[]", (3, 12), "has 1 results, 2 written"),
        ("  %0 = const[1.0] : f32[]\n  %1 = exp(%0)", (4, 1), "expected `:`"),
        ("  %0 = const[1.0] : f32[]\n  else", (3, 3), "unknown op `else`"),
        ("  %0 = const[1.0] : f33[]", (2, 21), "unknown dtype `f33`"),
        ("  %0 = const[1.0] : f32[65536, 65536, 65536]", (2, 21), "at most 2^40 elements"),
        ("  %0 = const[1.0] : f32[]\n  %1 = exp(%0) : f32[] $", (3, 24), "unexpected character `$`"),
        ("  %0 = const[1.0] : f32[]\n  %5 = exp(%0) : f32[]", (5, 1), "`%1` is never defined"),
        (
            "  %0 = const[1.0] : i32[]\n  %4 = for[%1](%0, %0, %0; %0) {\n    yield %1\n  } : i32[]",
            (3, 14),
            "takes 2 block arguments",
        ),
        (
            "  %0 = const[1.0] : i32[]\n  for[%1](%0, %0, %0) {\n    %2 = exp(%0) : i32[]\n  }",
            (5, 3),
            "expected `yield`",
        ),
        (
            "  %0 = const[1.0] : i32[]\n  for[%1](%0, %0, %0) {\n    yield\n  }\n  %2 = exp(%1) : i32[]",
            (6, 12),
            "`%1` is not defined here",
        ),
        ("  unused %0 : f32[]\n  %0 = const[1.0] : f32[]", (3, 3), "declared unused"),
        ("  %0 = const[\"a] : f32[]", (2, 14), "unterminated string"),
        ("  %99999999999 = const[1.0] : f32[]", (2, 3), "too large"),
        ("  %4000 = const[1.0] : f32[]", (2, 3), "larger than the text can define"),
    ];
    for (body, (line, col), msg) in cases {
        let e = body_err(body);
        assert!(e.msg.contains(msg), "{body:?}: expected {msg:?}, got {e}");
        assert_eq!((e.line, e.col), (*line, *col), "{body:?}: {e}");
    }
}

#[test]
fn clashing_names_need_an_index() {
    let e = err("kernel k(x: *f32, x: *f32) {\n  %0 = arange[2] : i32[2]\n  %1 = load[x, other = 0.0](%0) : f32[2]\n}");
    assert_eq!((e.line, e.col), (3, 13));
    assert!(e.msg.contains("several parameters are named `x`"), "{e}");
    assert!(err("kernel k(x: *f32) {\n  %0 = arange[2] : i32[2]\n  store[#1](%0, %0)\n}")
        .msg
        .contains("#1 does not exist"));
}

#[test]
fn deep_nesting_is_rejected_without_overflow() {
    let mut s = String::from("kernel k() {\n  %0 = const[1.0] : bool[]\n");
    for _ in 0..200 {
        s.push_str("  if(%0) {\n");
    }
    let e = err(&s);
    assert!(e.msg.contains("nest at most"), "{e}");
}
