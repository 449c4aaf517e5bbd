//! Tile simplification: on random runnable kernels the simplified kernel
//! verifies, has no more statements, and computes bit-identical buffers in the
//! tile interpreter (f64 and f32 arithmetic); on kernels built with duplicates,
//! dead code and foldable constants it shrinks as expected.

use mixc_ir::dtype::DType;
use mixc_ir::ops::{BinaryFn, ReduceFn, UnaryFn, BINARY_FNS, REDUCE_FNS, UNARY_FNS};
use mixc_ir::tile::interp::{run_kernel, ArgValue, Precision};
use mixc_ir::tile::text::print_kernel;
use mixc_ir::tile::verify::verify;
use mixc_ir::tile::{Kernel, KernelBuilder, ParamId, ParamKind, TOp, TValue, TileError, TileType};
use mixc_passes::simplify::{simplify, simplify_program};
use proptest::prelude::*;

// ----- running kernels -----

const LEN: usize = 64;
const GRID: [usize; 3] = [2, 1, 1];
/// The value of the scalar parameter `n` (a bound below `LEN`).
const N: f64 = 40.0;

/// Buffers for the kernels of this file: `x: *f64`, `y: *f32`, `o: *f64`,
/// `idx: *i32` (valid offsets), then scalars `n: i32` and `s: f32`.
fn buffers(seed: u64) -> Vec<Vec<f64>> {
    let mut r = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let mut next = move || {
        r ^= r << 13;
        r ^= r >> 7;
        r ^= r << 17;
        r
    };
    let mut unit = move || (next() >> 11) as f64 / (1u64 << 53) as f64 * 4.0 - 2.0;
    let x: Vec<f64> = (0..LEN).map(|_| unit()).collect();
    let y: Vec<f64> = (0..LEN).map(|_| unit() as f32 as f64).collect();
    let o: Vec<f64> = (0..LEN).map(|i| i as f64 * 0.5).collect();
    let idx: Vec<f64> = (0..LEN).map(|i| ((i * 37 + 11) % LEN) as f64).collect();
    vec![x, y, o, idx]
}

fn run(k: &Kernel, bufs: &[Vec<f64>], prec: Precision) -> Result<Vec<Vec<f64>>, TileError> {
    let mut bufs = bufs.to_vec();
    {
        let mut it = bufs.iter_mut();
        let mut args: Vec<ArgValue> = Vec::new();
        for p in &k.params {
            match (&p.kind, p.name.as_str()) {
                (ParamKind::Ptr(_), _) => match it.next() {
                    Some(b) => args.push(ArgValue::Buffer(b)),
                    None => panic!("more pointers than buffers"),
                },
                (ParamKind::Scalar(_), "n") => args.push(ArgValue::Scalar(N)),
                (ParamKind::Scalar(_), _) => args.push(ArgValue::Scalar(0.75)),
            }
        }
        run_kernel(k, GRID, &mut args, prec)?;
    }
    Ok(bufs)
}

fn bits(bufs: &[Vec<f64>]) -> Vec<Vec<u64>> {
    bufs.iter().map(|b| b.iter().map(|x| x.to_bits()).collect()).collect()
}

fn stmt_count(k: &Kernel) -> usize {
    let mut n = 0;
    k.walk(&mut |_| n += 1);
    n
}

fn count_ops(k: &Kernel, f: impl Fn(&TOp) -> bool) -> usize {
    let mut n = 0;
    k.walk(&mut |s| n += f(&s.op) as usize);
    n
}

/// The simplified kernel verifies, is no larger, and computes the same bits as
/// `k` wherever `k` runs. Returns whether `k` ran.
fn check_same(k: &Kernel, seed: u64) -> Result<(Kernel, bool), TestCaseError> {
    let s = simplify(k);
    if let Err(e) = verify(&s) {
        return Err(TestCaseError::fail(format!("{e}\nbefore:\n{}\nafter:\n{}", print_kernel(k), print_kernel(&s))));
    }
    prop_assert!(stmt_count(&s) <= stmt_count(k), "grew:\n{}\n{}", print_kernel(k), print_kernel(&s));
    let bufs = buffers(seed);
    let mut ran = false;
    for prec in [Precision::F64, Precision::F32] {
        let Ok(want) = run(k, &bufs, prec) else { continue };
        ran = true;
        let got = run(&s, &bufs, prec).map_err(|e| {
            TestCaseError::fail(format!("{e}\nbefore:\n{}\nafter:\n{}", print_kernel(k), print_kernel(&s)))
        })?;
        prop_assert!(
            bits(&got) == bits(&want),
            "{prec:?}: buffers differ\nbefore:\n{}\nafter:\n{}",
            print_kernel(k),
            print_kernel(&s)
        );
    }
    Ok((s, ran))
}

// ----- random runnable kernels -----

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

const DIMS: [u32; 4] = [1, 2, 4, 8];
const FLOATS: [f64; 9] = [0.0, -0.0, 1.0, -1.0, 0.5, 2.0, 3.25, 0.1, 1e-3];
const DTYPES: [DType; 5] = [DType::F32, DType::F32, DType::F64, DType::I32, DType::Bool];

/// A block's values and the pure statements and loads it emitted (for repeats).
#[derive(Default)]
struct Scope {
    values: Vec<TValue>,
    pure: Vec<(TOp, TileType)>,
}

struct Gen<'a> {
    d: Draw<'a>,
    scopes: Vec<Scope>,
    /// `x`, `y`, `o`, `idx`.
    ptrs: [ParamId; 4],
    depth: usize,
}

type Built = Result<Vec<TValue>, TileError>;

impl Gen<'_> {
    /// Emits a pure op and remembers it, so that it can be repeated later.
    fn pure(&mut self, b: &mut KernelBuilder, op: TOp, declared: Option<TileType>) -> Option<TValue> {
        let v = *b.emit(op.clone(), declared).ok()?.first()?;
        let t = b.ty(v).clone();
        if let Some(s) = self.scopes.last_mut() {
            s.values.push(v);
            s.pure.push((op, t));
        }
        Some(v)
    }

    fn pick(&mut self, b: &KernelBuilder, f: impl Fn(&TileType) -> bool) -> Option<TValue> {
        let vs: Vec<TValue> = self.scopes.iter().flat_map(|s| &s.values).copied().filter(|v| f(b.ty(*v))).collect();
        self.d.pick(&vs)
    }

    fn shape(&mut self) -> Vec<u32> {
        let rank = [0, 1, 1, 2, 2][self.d.below(5)];
        (0..rank).map(|_| DIMS[self.d.below(DIMS.len())]).collect()
    }

    fn constant(&mut self, b: &mut KernelBuilder, t: &TileType) -> Option<TValue> {
        let c = match t.dtype {
            DType::Bool => self.d.below(2) as f64,
            DType::I32 => self.d.below(9) as f64 - 4.0,
            _ => FLOATS[self.d.below(FLOATS.len())],
        };
        self.pure(b, TOp::Const(c), Some(t.clone()))
    }

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

    fn i32_const(&mut self, b: &mut KernelBuilder, c: i64) -> Option<TValue> {
        self.pure(b, TOp::Const(c as f64), Some(TileType::scalar(DType::I32)))
    }

    /// Offsets of `shape` and a mask that keeps them in bounds (none where they
    /// are in bounds anyway): `arange`, maybe plus a base (a program id, a loop
    /// variable, a constant), or gathered through `idx`.
    fn offsets(&mut self, b: &mut KernelBuilder, shape: &[u32]) -> Option<(TValue, Option<TValue>)> {
        let n: u32 = shape.iter().product();
        let mut offs = self.pure(b, TOp::Arange(n), None)?;
        if shape.len() != 1 {
            offs = self.pure(b, TOp::Reshape(offs), Some(TileType::new(DType::I32, shape)))?;
        }
        match self.d.below(4) {
            0 => Some((offs, None)),
            1 => {
                let ptr = self.ptrs[3];
                Some((self.pure(b, TOp::Load { ptr, offsets: offs, mask: None, other: 0.0 }, None)?, None))
            }
            _ => {
                let base = match self.pick(b, |t| *t == TileType::scalar(DType::I32)) {
                    Some(v) if self.d.chance(60) => v,
                    _ => {
                        let c = self.d.below(9) as i64;
                        self.i32_const(b, c)?
                    }
                };
                let offs = self.pure(b, TOp::Binary(BinaryFn::Add, offs, base), None)?;
                let lo = self.i32_const(b, 0)?;
                let bound = self.i32_const(b, LEN as i64)?;
                let above = self.pure(b, TOp::Binary(BinaryFn::Le, lo, offs), None)?;
                let below = self.pure(b, TOp::Binary(BinaryFn::Lt, offs, bound), None)?;
                let mask = self.pure(b, TOp::Binary(BinaryFn::And, above, below), None)?;
                Some((offs, Some(mask)))
            }
        }
    }

    fn random_op(&mut self, b: &mut KernelBuilder) -> Option<()> {
        match self.d.below(23) {
            0 => {
                let a = self.d.below(3) as u8;
                self.pure(b, TOp::ProgramId(a), None)?;
            }
            1 => {
                let t = TileType { dtype: DTYPES[self.d.below(DTYPES.len())], shape: self.shape() };
                self.constant(b, &t)?;
            }
            2 => {
                let n = DIMS[self.d.below(DIMS.len())];
                self.pure(b, TOp::Arange(n), None)?;
            }
            3 => {
                let x = self.any(b)?;
                let f = self.d.pick(&UNARY_FNS)?;
                self.pure(b, TOp::Unary(f, x), None)?;
            }
            4 | 5 => {
                // Often on constants, to give folding work.
                let a = if self.d.chance(40) {
                    let t = TileType { dtype: DTYPES[self.d.below(DTYPES.len())], shape: vec![] };
                    self.constant(b, &t)?
                } else {
                    self.any(b)?
                };
                let ta = b.ty(a).clone();
                let other = self.need(b, &TileType::scalar(ta.dtype))?;
                let (x, y) = if self.d.chance(50) { (a, other) } else { (other, a) };
                let mut f = self.d.pick(&BINARY_FNS)?;
                if f == BinaryFn::Div && !ta.dtype.is_float() {
                    f = BinaryFn::Mul; // integer division by zero fails
                }
                self.pure(b, TOp::Binary(f, x, y), None)?;
            }
            6 => {
                let a = self.any(b)?;
                let ta = b.ty(a).clone();
                let cond = match self.pick(b, |t| t.dtype == DType::Bool && t.shape == ta.shape) {
                    Some(c) if self.d.chance(60) => c,
                    _ => self.need(b, &TileType::scalar(DType::Bool))?,
                };
                let other = self.need(b, &TileType::scalar(ta.dtype))?;
                self.pure(b, TOp::Select(cond, a, other), None)?;
            }
            7 => {
                let x = self.any(b)?;
                let d = DTYPES[self.d.below(DTYPES.len())];
                self.pure(b, TOp::Cast(x, d), None)?;
            }
            8 => {
                let x = self.pick(b, |t| t.shape.len() < 2)?;
                let mut to = b.ty(x).shape.clone();
                for d in to.iter_mut() {
                    if *d == 1 {
                        *d = DIMS[self.d.below(DIMS.len())];
                    }
                }
                to.insert(0, DIMS[self.d.below(DIMS.len())]);
                let t = TileType::new(b.ty(x).dtype, &to);
                self.pure(b, TOp::Broadcast(x), Some(t))?;
            }
            9 => {
                let x = self.pick(b, |t| t.shape.len() <= 2)?;
                let t = b.ty(x).clone();
                let n: u32 = t.shape.iter().product();
                let to = if t.shape.len() == 2 && self.d.chance(50) { vec![n] } else { vec![1, n] };
                self.pure(b, TOp::Reshape(x), Some(TileType::new(t.dtype, &to)))?;
            }
            10 => {
                let x = self.pick(b, |t| t.shape.len() == 2)?;
                self.pure(b, TOp::Transpose(x), None)?;
            }
            11 | 12 => {
                let ptr = self.ptrs[self.d.below(4)];
                let shape =
                    if self.d.chance(70) { vec![DIMS[self.d.below(4)]] } else { vec![2, DIMS[self.d.below(4)]] };
                let (offs, mask) = self.offsets(b, &shape)?;
                let other = FLOATS[self.d.below(FLOATS.len())];
                // Remembered like a pure op, so that it may be repeated after a store.
                self.pure(b, TOp::Load { ptr, offsets: offs, mask, other }, None)?;
            }
            13 | 14 => {
                // Stores go to `y` and `o`; values of any dtype.
                let ptr = self.ptrs[1 + self.d.below(2)];
                let value = match self.pick(b, |t| !t.shape.is_empty() && t.numel() <= LEN) {
                    Some(v) => v,
                    None => self.any(b)?,
                };
                let shape = b.ty(value).shape.clone();
                let (offs, mask) = self.offsets(b, &shape)?;
                b.store(ptr, offs, value, mask).ok()?;
            }
            15 => {
                let x = self.pick(b, |t| t.shape.len() == 2 && t.dtype.is_float())?;
                let s = b.ty(x).shape.clone();
                let (ta, tb) = (self.d.chance(30), self.d.chance(30));
                let (m, k) = if ta { (s[1], s[0]) } else { (s[0], s[1]) };
                let n = DIMS[self.d.below(4)];
                let bt = TileType::new(DType::F32, &if tb { [n, k] } else { [k, n] });
                let y = self.need(b, &bt)?;
                let acc =
                    if self.d.chance(50) { Some(self.need(b, &TileType::new(DType::F32, &[m, n]))?) } else { None };
                self.pure(b, TOp::Dot { a: x, b: y, acc, trans_a: ta, trans_b: tb }, None)?;
            }
            16 => {
                let x = self.pick(b, |t| !t.shape.is_empty())?;
                let axis = self.d.below(b.ty(x).shape.len()) as u32;
                let f = self.d.pick(&REDUCE_FNS)?;
                self.pure(b, TOp::Reduce { func: f, x, axis }, None)?;
            }
            17 => {
                let x = self.pick(b, |t| !t.shape.is_empty())?;
                let axis = self.d.below(b.ty(x).shape.len()) as u32;
                let (reverse, exclusive) = (self.d.chance(50), self.d.chance(50));
                self.pure(b, TOp::Cumsum { x, axis, reverse, exclusive }, None)?;
            }
            18 | 22 => {
                // A repeat of an earlier pure statement (or load) in scope.
                let all: Vec<(TOp, TileType)> = self.scopes.iter().flat_map(|s| s.pure.iter().cloned()).collect();
                let (op, t) = self.d.pick(&all)?;
                self.pure(b, op, Some(t))?;
            }
            19 if self.depth < 3 => self.for_loop(b)?,
            20 | 21 if self.depth < 3 => self.if_else(b)?,
            _ => {
                let x = self.any(b)?;
                self.pure(b, TOp::Unary(UnaryFn::Neg, x), None)?;
            }
        }
        Some(())
    }

    fn for_loop(&mut self, b: &mut KernelBuilder) -> Option<()> {
        let lo = self.d.below(3) as i64;
        let hi = if self.d.chance(15) { lo } else { lo + self.d.below(4) as i64 };
        let step = 1 + self.d.below(2) as i64;
        let lo = self.i32_const(b, lo)?;
        let hi = self.i32_const(b, hi)?;
        let step = self.i32_const(b, step)?;
        let mut init = Vec::new();
        for _ in 0..self.d.below(3) {
            init.push(self.any(b)?);
        }
        let n = self.d.below(7);
        let res = b.for_loop(lo, hi, step, &init, |b, iv, carried| {
            let mut values = vec![iv];
            values.extend_from_slice(carried);
            self.scopes.push(Scope { values, pure: vec![] });
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
            Ok(yields)
        });
        if let Ok(rs) = res {
            if let Some(s) = self.scopes.last_mut() {
                s.values.extend(rs);
            }
        }
        Some(())
    }

    fn arm(&mut self, b: &mut KernelBuilder, n: usize, types: &[TileType]) -> Built {
        self.scopes.push(Scope::default());
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
        let cond = match self.d.below(3) {
            0 => self.constant(b, &TileType::scalar(DType::Bool))?,
            1 => match self.pick(b, |t| *t == TileType::scalar(DType::Bool)) {
                Some(c) => c,
                None => self.constant(b, &TileType::scalar(DType::Bool))?,
            },
            _ => {
                let pid = self.pure(b, TOp::ProgramId(0), None)?;
                let one = self.i32_const(b, 1)?;
                self.pure(b, TOp::Binary(BinaryFn::Lt, pid, one), None)?
            }
        };
        let mut types = Vec::new();
        for _ in 0..self.d.below(3) {
            let v = self.any(b)?;
            types.push(b.ty(v).clone());
        }
        let (n1, n2) = (self.d.below(6), self.d.below(6));
        let cell = std::cell::RefCell::new(&mut *self);
        let res = b.if_else(cond, |b| cell.borrow_mut().arm(b, n1, &types), |b| cell.borrow_mut().arm(b, n2, &types));
        if let Ok(rs) = res {
            if let Some(s) = self.scopes.last_mut() {
                s.values.extend(rs);
            }
        }
        Some(())
    }
}

/// A random kernel over the buffers of [`buffers`] that (nearly always) runs:
/// offsets stay in bounds or are masked, loops have positive steps.
fn random_kernel(data: &[u32]) -> Kernel {
    let mut b = KernelBuilder::new("k");
    let ptrs = [
        b.ptr_param("x", DType::F64),
        b.ptr_param("y", DType::F32),
        b.ptr_param("o", DType::F64),
        b.ptr_param("idx", DType::I32),
    ];
    let mut g = Gen { d: Draw { data, i: 0 }, scopes: vec![Scope::default()], ptrs, depth: 0 };
    if let Ok(v) = b.scalar_param("n", DType::I32) {
        g.scopes[0].values.push(v);
    }
    if let Ok(v) = b.scalar_param("s", DType::F32) {
        g.scopes[0].values.push(v);
    }
    for _ in 0..5 + g.d.below(40) {
        g.random_op(&mut b);
    }
    b.finish().unwrap_or_else(|e| panic!("the builder made a bad kernel: {e}"))
}

fn kernels() -> impl Strategy<Value = Kernel> {
    prop::collection::vec(any::<u32>(), 0..600).prop_map(|data| random_kernel(&data))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn simplified_kernels_compute_the_same_bits(k in kernels(), seed: u64) {
        let (s, _) = check_same(&k, seed)?;
        // A fixed point: simplifying again changes nothing.
        prop_assert_eq!(print_kernel(&simplify(&s)), print_kernel(&s));
    }
}

#[test]
fn random_kernels_run_and_shrink() {
    // The generator is useful: most kernels run, and simplification removes
    // a good share of their statements.
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let (mut ran, mut before, mut after) = (0, 0, 0);
    for seed in 0..64 {
        let k = kernels().new_tree(&mut runner).unwrap().current();
        let (s, ok) = check_same(&k, seed).unwrap_or_else(|e| panic!("{e}"));
        ran += ok as usize;
        before += stmt_count(&k);
        after += stmt_count(&s);
    }
    assert!(ran >= 56, "only {ran} of 64 random kernels ran");
    assert!(after * 10 < before * 9, "{before} statements became {after}");
}

// ----- kernels built to be simplified -----

fn ptrs(b: &mut KernelBuilder) -> [ParamId; 4] {
    [
        b.ptr_param("x", DType::F64),
        b.ptr_param("y", DType::F32),
        b.ptr_param("o", DType::F64),
        b.ptr_param("idx", DType::I32),
    ]
}

fn checked(k: &Kernel) -> Kernel {
    let (s, ran) = check_same(k, 7).unwrap_or_else(|e| panic!("{e}"));
    assert!(ran, "the kernel does not run:\n{}", print_kernel(k));
    s
}

#[test]
fn common_subexpressions_are_shared() {
    let mut b = KernelBuilder::new("cse");
    let [x, _, o, _] = ptrs(&mut b);
    let offs = b.arange(8).unwrap();
    let offs2 = b.arange(8).unwrap();
    let a = b.load(x, offs, None, 0.0).unwrap();
    let a2 = b.load(x, offs2, None, 0.0).unwrap();
    let e = b.exp(a).unwrap();
    let e2 = b.exp(a2).unwrap();
    let sum = b.add(e, e2).unwrap();
    let pid = b.program_id(0).unwrap();
    let pid2 = b.program_id(0).unwrap();
    let eight = b.i32(8).unwrap();
    let base = b.mul(pid, eight).unwrap();
    let eight2 = b.i32(8).unwrap();
    let base2 = b.mul(pid2, eight2).unwrap();
    let at = b.add(offs, base).unwrap();
    let at2 = b.add(offs2, base2).unwrap();
    let lo = b.i32(0).unwrap();
    let two = b.i32(2).unwrap();
    let one = b.i32(1).unwrap();
    // Inside a loop, a repeat of an outer computation is the outer one.
    let r = b
        .for_loop(lo, two, one, &[sum], |b, _iv, c| {
            let e3 = b.exp(a)?;
            Ok(vec![b.add(c[0], e3)?])
        })
        .unwrap();
    b.store(o, at, r[0], None).unwrap();
    b.store(o, at2, sum, None).unwrap();
    let k = b.finish().unwrap();
    let s = checked(&k);
    assert_eq!(count_ops(&s, |op| matches!(op, TOp::Arange(_))), 1);
    assert_eq!(count_ops(&s, |op| matches!(op, TOp::Load { .. })), 1);
    assert_eq!(count_ops(&s, |op| matches!(op, TOp::Unary(UnaryFn::Exp, _))), 1, "{}", print_kernel(&s));
    assert_eq!(count_ops(&s, |op| matches!(op, TOp::ProgramId(_))), 1);
    assert_eq!(count_ops(&s, |op| matches!(op, TOp::Binary(BinaryFn::Mul, ..))), 1);
    assert_eq!(count_ops(&s, |op| matches!(op, TOp::Store { .. })), 2);
    assert!(stmt_count(&s) < stmt_count(&k));
}

#[test]
fn loads_are_not_shared_across_stores() {
    let mut b = KernelBuilder::new("rmw");
    let [_, _, o, _] = ptrs(&mut b);
    let offs = b.arange(4).unwrap();
    let before = b.load(o, offs, None, 0.0).unwrap();
    let one = b.f32(1.0).unwrap();
    let inc = b.add(before, one).unwrap();
    b.store(o, offs, inc, None).unwrap();
    let after = b.load(o, offs, None, 0.0).unwrap();
    let four = b.i32(4).unwrap();
    let at = b.add(offs, four).unwrap();
    let both = b.add(before, after).unwrap();
    b.store(o, at, both, None).unwrap();
    let k = b.finish().unwrap();
    let s = checked(&k);
    assert_eq!(count_ops(&s, |op| matches!(op, TOp::Load { .. })), 2, "{}", print_kernel(&s));
}

#[test]
fn constants_fold() {
    let mut b = KernelBuilder::new("fold");
    let [_, y, o, _] = ptrs(&mut b);
    // (4 * 16) + 3 in i32: one constant 67.
    let four = b.i32(4).unwrap();
    let sixteen = b.i32(16).unwrap();
    let p = b.mul(four, sixteen).unwrap();
    let three = b.i32(3).unwrap();
    let i = b.add(p, three).unwrap();
    // 0.5 + 0.25 is exact in f32 and f64: folds. exp(1) rounds differently: stays.
    let h = b.f32(0.5).unwrap();
    let q = b.f32(0.25).unwrap();
    let f = b.add(h, q).unwrap();
    let one = b.f32(1.0).unwrap();
    let e = b.exp(one).unwrap();
    // A tile op on constants: a row sum of a [2, 4] tile of 0.5.
    let t = b.constant(0.5, DType::F32, &[2, 4]).unwrap();
    let rs = b.reduce(ReduceFn::Sum, t, 1).unwrap();
    let offs = b.arange(2).unwrap();
    let fi = b.cast(i, DType::F32).unwrap();
    let v = b.add(rs, fi).unwrap();
    let v = b.add(v, f).unwrap();
    b.store(o, offs, v, None).unwrap();
    let eb = b.broadcast(e, &[2]).unwrap();
    b.store(y, offs, eb, None).unwrap();
    let k = b.finish().unwrap();
    let s = checked(&k);
    let text = print_kernel(&s);
    // 2 + 67 + 0.75, all folded into one tile constant.
    assert!(text.contains("const[69.75] : f32[2]"), "{text}");
    assert_eq!(count_ops(&s, |op| matches!(op, TOp::Unary(UnaryFn::Exp, _))), 1, "{text}");
    assert_eq!(count_ops(&s, |op| matches!(op, TOp::Binary(..) | TOp::Reduce { .. } | TOp::Cast(..))), 0, "{text}");
    assert!(stmt_count(&s) < stmt_count(&k));
}

#[test]
fn integer_division_by_zero_is_not_folded() {
    let mut b = KernelBuilder::new("div0");
    let [_, _, o, _] = ptrs(&mut b);
    let one = b.i32(1).unwrap();
    let zero = b.i32(0).unwrap();
    let q = b.div(one, zero).unwrap();
    let offs = b.i32(0).unwrap();
    b.store(o, offs, q, None).unwrap();
    let k = b.finish().unwrap();
    let s = simplify(&k);
    assert_eq!(count_ops(&s, |op| matches!(op, TOp::Binary(BinaryFn::Div, ..))), 1);
    assert!(run(&s, &buffers(1), Precision::F64).is_err());
}

#[test]
fn dead_code_goes_and_effects_stay() {
    let mut b = KernelBuilder::new("dead");
    let [x, _, o, _] = ptrs(&mut b);
    let offs = b.arange(4).unwrap();
    let a = b.load(x, offs, None, 0.0).unwrap();
    let unused = b.exp(a).unwrap();
    let _ = b.mul(unused, a).unwrap();
    let _unused_load = b.load(x, offs, None, 1.0).unwrap();
    let lo = b.i32(0).unwrap();
    let hi = b.i32(3).unwrap();
    let one = b.i32(1).unwrap();
    // A loop whose results nobody reads and that stores nothing: gone.
    b.for_loop(lo, hi, one, &[a], |b, _iv, c| Ok(vec![b.exp(c[0])?])).unwrap();
    // A loop that stores: stays, though it yields nothing.
    b.for_loop(lo, hi, one, &[], |b, iv, _| {
        let v = b.cast(iv, DType::F32)?;
        let at = b.add(offs, iv)?;
        let vb = b.broadcast(v, &[4])?;
        b.store(o, at, vb, None)?;
        Ok(vec![])
    })
    .unwrap();
    // An if whose results nobody reads: gone.
    let pid = b.program_id(0).unwrap();
    let c = b.lt(pid, one).unwrap();
    b.if_else(c, |b| Ok(vec![b.exp(a)?]), |b| Ok(vec![b.unary(UnaryFn::Neg, a)?])).unwrap();
    let k = b.finish().unwrap();
    let s = checked(&k);
    let text = print_kernel(&s);
    assert_eq!(count_ops(&s, |op| matches!(op, TOp::For { .. })), 1, "{text}");
    assert_eq!(count_ops(&s, |op| matches!(op, TOp::If { .. })), 0, "{text}");
    assert_eq!(count_ops(&s, |op| matches!(op, TOp::Load { .. } | TOp::Unary(..) | TOp::ProgramId(_))), 0, "{text}");
    assert_eq!(count_ops(&s, |op| matches!(op, TOp::Store { .. })), 1);
    // Values are renumbered densely: nothing `unused` in the text.
    assert!(!text.contains("unused"), "{text}");
    assert_eq!(s.types.len(), {
        let mut n = 0;
        s.walk(&mut |st| {
            n += st.results.len();
            if let TOp::For { body, .. } = &st.op {
                n += body.args.len();
            }
        });
        n
    });
}

#[test]
fn constant_control_flow_is_resolved() {
    let mut b = KernelBuilder::new("ctl");
    let [x, _, o, _] = ptrs(&mut b);
    let offs = b.arange(4).unwrap();
    let a = b.load(x, offs, None, 0.0).unwrap();
    let t = b.constant(1.0, DType::Bool, &[]).unwrap();
    // `if true` becomes its then-arm, stores included.
    let r = b
        .if_else(
            t,
            |b| {
                let e = b.exp(a)?;
                b.store(o, offs, e, None)?;
                Ok(vec![e])
            },
            |b| Ok(vec![b.unary(UnaryFn::Neg, a)?]),
        )
        .unwrap();
    // A loop that never runs is its initial values.
    let five = b.i32(5).unwrap();
    let two = b.i32(2).unwrap();
    let one = b.i32(1).unwrap();
    let l = b.for_loop(five, two, one, &[r[0]], |b, _iv, c| Ok(vec![b.exp(c[0])?])).unwrap();
    // `where` on a constant condition is its branch.
    let f = b.constant(0.0, DType::Bool, &[]).unwrap();
    let w = b.select(f, a, l[0]).unwrap();
    let four = b.i32(4).unwrap();
    let at = b.add(offs, four).unwrap();
    b.store(o, at, w, None).unwrap();
    let k = b.finish().unwrap();
    let s = checked(&k);
    let text = print_kernel(&s);
    assert_eq!(count_ops(&s, |op| matches!(op, TOp::If { .. } | TOp::For { .. } | TOp::Select(..))), 0, "{text}");
    assert_eq!(count_ops(&s, |op| matches!(op, TOp::Unary(UnaryFn::Exp, _))), 1, "{text}");
    assert_eq!(count_ops(&s, |op| matches!(op, TOp::Store { .. })), 2, "{text}");
}

#[test]
fn a_loop_with_a_non_positive_constant_step_is_kept() {
    let mut b = KernelBuilder::new("step");
    let [_, _, o, _] = ptrs(&mut b);
    let five = b.i32(5).unwrap();
    let two = b.i32(2).unwrap();
    let zero = b.i32(0).unwrap();
    let init = b.f32(1.0).unwrap();
    let l = b.for_loop(five, two, zero, &[init], |b, _iv, c| Ok(vec![b.exp(c[0])?])).unwrap();
    b.store(o, zero, l[0], None).unwrap();
    let k = b.finish().unwrap();
    let s = simplify(&k);
    assert_eq!(count_ops(&s, |op| matches!(op, TOp::For { .. })), 1);
    assert!(run(&s, &buffers(1), Precision::F64).is_err());
}

#[test]
fn lowered_programs_simplify_and_still_agree() {
    use mixc_ir::mixers::random_inputs;
    use mixc_ir::ops::{Mask, OpKind};
    use mixc_ir::Graph;
    use std::collections::BTreeMap;

    let mut g = Graph::new("attn");
    let bd = g.dim("B").unwrap();
    let tq = g.dim("Tq").unwrap();
    let tk = g.dim("Tk").unwrap();
    let h = g.dim_const("H", 2).unwrap();
    let d = g.dim_const("D", 24).unwrap();
    let q = g.input("q", DType::F32, &[bd, tq, h, d]).unwrap();
    let k = g.input("k", DType::F32, &[bd, tk, h, d]).unwrap();
    let v = g.input("v", DType::F32, &[bd, tk, h, d]).unwrap();
    let mask = Mask { causal: true, window: Some(20), sinks: 2 };
    let r = g.add(OpKind::Attention { scale: 0.2, mask }, &[q, k, v], &["o", "lse"]).unwrap();
    g.output_as("o", r[0]).unwrap();
    g.output_as("lse", r[1]).unwrap();
    let sched = mixc_passes::Schedule { block_q: 16, block_k: 16, ..mixc_passes::Schedule::default() };
    let p = match mixc_passes::lower(&g, &sched) {
        Ok(p) => p,
        Err(e) => panic!("lowering attention: {e}"),
    };
    let s = simplify_program(&p);
    assert_eq!(s.launches, p.launches);
    let (mut before, mut after) = (0, 0);
    for (a, b) in p.kernels.iter().zip(&s.kernels) {
        assert!(verify(b).is_ok());
        before += stmt_count(a);
        after += stmt_count(b);
    }
    assert!(after <= before);
    let inputs = random_inputs(&g, &BTreeMap::from([("B", 1), ("Tq", 37), ("Tk", 37)]), 3, true);
    for prec in [Precision::F64, Precision::F32] {
        let (want, _) = p.run(&inputs, prec).unwrap();
        let (got, _) = s.run(&inputs, prec).unwrap();
        assert_eq!(want.keys().collect::<Vec<_>>(), got.keys().collect::<Vec<_>>());
        for (name, w) in &want {
            let gbits: Vec<u64> = got[name].data.iter().map(|x| x.to_bits()).collect();
            let wbits: Vec<u64> = w.data.iter().map(|x| x.to_bits()).collect();
            assert!(gbits == wbits, "{prec:?}: output `{name}` differs");
        }
    }
}

/// Mixers of the library at small, ragged sizes (as in `library.rs`).
fn some_mixers() -> Vec<&'static str> {
    vec![
        "kind = \"linear_attn\"\nheads = 2\ndk = 8\ndv = 5\nnormalizer = true\nfeature_map = \"elu_plus_one\"\n",
        "kind = \"retnet\"\nheads = 3\ndk = 24\ndv = 16\n",
        "kind = \"gla\"\nheads = 2\ndk = 24\ndv = 17\ngate = { activation = \"logsigmoid\", tau = 16.0 }\noutput_norm = true\n",
        "kind = \"mlstm\"\nheads = 2\ndk = 16\ndv = 8\ngate_soft_cap = 15.0\n",
        "kind = \"gated_deltanet\"\nheads = 2\ndk = 17\ndv = 8\nqk_norm = true\nshort_conv = 4\ngate = { activation = \"mamba\" }\n",
        "kind = \"mamba2\"\nheads = 4\ndk = 16\ndv = 8\ngroups = 2\nshort_conv = 4\n",
        "kind = \"attention\"\nheads = 4\nkv_heads = 2\nhead_dim = 24\nrope = { theta = 10000.0 }\n",
        "kind = \"lizard\"\nheads = 2\nhead_dim = 16\nwindow = 8\nmeta_tokens = 2\ncombine = \"separate\"\n",
        "kind = \"mom\"\nheads = 2\ndk = 16\ndv = 8\nmemories = 3\ntop_k = 2\nshared_memory = true\n",
    ]
}

/// Every kernel the lowering makes for these mixers (prefill, split and fused,
/// and decode): the simplified program computes the same bits in f64 and f32,
/// and each kernel's text parses back to the kernel, before and after.
#[test]
fn library_programs_simplify_and_round_trip() {
    use mixc_ir::mixers::random_inputs;
    use mixc_ir::tile::parse::parse_kernel;
    use mixc_passes::Schedule;

    let (mut before, mut after) = (0, 0);
    for text in some_mixers() {
        let g = super::util::build(text);
        for (split, t) in [(false, 37), (true, 37), (false, 1)] {
            let sched = if t == 1 { Schedule::decode() } else { Schedule { split, ..Schedule::with_chunk(16) } };
            let p = mixc_passes::lower(&g, &sched).unwrap_or_else(|e| panic!("{text}: {e}"));
            let s = simplify_program(&p);
            for (a, b) in p.kernels.iter().zip(&s.kernels) {
                verify(b).unwrap_or_else(|e| panic!("{e}\n{}", print_kernel(b)));
                for k in [a, b] {
                    let back = parse_kernel(&print_kernel(k)).unwrap_or_else(|e| panic!("{e}\n{}", print_kernel(k)));
                    assert!(back == *k, "{}", print_kernel(k));
                }
                assert!(stmt_count(b) <= stmt_count(a));
                before += stmt_count(a);
                after += stmt_count(b);
            }
            let inputs = random_inputs(&g, &super::util::sizes(2, t), 5, true);
            for prec in [Precision::F64, Precision::F32] {
                let (want, _) = p.run(&inputs, prec).unwrap_or_else(|e| panic!("{text}: {e}"));
                let (got, _) = s.run(&inputs, prec).unwrap_or_else(|e| panic!("{text}: {e}"));
                assert_eq!(want.len(), got.len());
                for (name, w) in &want {
                    let same = got.get(name).is_some_and(|o| {
                        o.shape == w.shape && o.data.iter().zip(&w.data).all(|(x, y)| x.to_bits() == y.to_bits())
                    });
                    assert!(same, "{text}{prec:?}: output `{name}` differs after simplification");
                }
            }
        }
    }
    // `lower` already simplifies, so a second pass must be a fixed point.
    assert_eq!(after, before, "simplifying a lowered program again changed it");
}
