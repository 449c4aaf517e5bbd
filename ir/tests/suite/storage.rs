//! 16-bit buffers in tile programs: the interpreter reads them into f32/f64
//! and rounds what it stores to them (in both precisions); the program
//! verifier holds each launch's pointers to their buffers' dtypes.

use mixc_ir::dtype::DType;
use mixc_ir::interp::Tensor;
use mixc_ir::tile::interp::Precision;
use mixc_ir::tile::verify::verify_program;
use mixc_ir::tile::{Arg, BufferRole, Count, KernelBuilder, Launch, Program, TileError};
use std::collections::BTreeMap;

/// `y = 3·x` over `n` elements in one program, `x` and `y` buffers of the
/// given dtypes (pointers declared as `ptrs`).
fn triple(n: u32, bufs: (DType, DType), ptrs: (DType, DType)) -> Program {
    let build = || -> Result<_, TileError> {
        let mut kb = KernelBuilder::new("triple");
        let x = kb.ptr_param("x", ptrs.0);
        let y = kb.ptr_param("y", ptrs.1);
        let off = kb.arange(n)?;
        let v = kb.load(x, off, None, 0.0)?;
        let three = kb.f32(3.0)?;
        let r = kb.mul(v, three)?;
        kb.store(y, off, r, None)?;
        kb.finish()
    };
    let k = build().unwrap_or_else(|e| panic!("{e}"));
    let mut p = Program { name: "triple".into(), ..Program::default() };
    let role = BufferRole::Input { name: "x".into(), optional: false };
    let xb = p.add_buffer("x", bufs.0, vec![Count::Const(n as u64)], role);
    let yb = p.add_buffer("y", bufs.1, vec![Count::Const(n as u64)], BufferRole::Output("y".into()));
    let ki = p.add_kernel(k);
    let grid = [Count::Const(1), Count::Const(1), Count::Const(1)];
    p.launches.push(Launch { kernel: ki, grid, args: vec![Arg::Buffer(xb), Arg::Buffer(yb)], prefix_copy: None });
    p
}

#[test]
fn sixteen_bit_buffers_round_in_both_precisions() {
    let xs = vec![0.1, 1.0 + 2f64.powi(-9), -7.3, 1e-3];
    let ins = BTreeMap::from([("x".to_string(), Tensor { shape: vec![4], data: xs.clone() })]);
    for d in [DType::BF16, DType::F16] {
        let p = triple(4, (d, d), (d, d));
        verify_program(&p).unwrap_or_else(|e| panic!("{e}"));
        for prec in [Precision::F64, Precision::F32] {
            let (out, _) = p.run(&ins, prec).unwrap_or_else(|e| panic!("{e}"));
            let want: Vec<f64> = xs.iter().map(|x| d.round(3.0 * d.round(*x))).collect();
            assert_eq!(out["y"].data, want, "{d} {prec:?}");
        }
    }
    // f32 buffers keep f64 values in f64 arithmetic, as before.
    let p = triple(4, (DType::F32, DType::F32), (DType::F32, DType::F32));
    let (out, _) = p.run(&ins, Precision::F64).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out["y"].data, xs.iter().map(|x| 3.0 * x).collect::<Vec<_>>());
}

#[test]
fn pointers_must_have_their_buffers_dtype() {
    let p = triple(4, (DType::BF16, DType::F32), (DType::F32, DType::F32));
    let err = verify_program(&p).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("`x: *f32`") && err.contains("bf16"), "{err}");
    let mut p = triple(4, (DType::F32, DType::F32), (DType::F32, DType::F32));
    p.launches[0].args.pop();
    let err = verify_program(&p).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("1 arguments for 2 parameters"), "{err}");
    p.launches[0].args.push(Arg::Size(Count::Const(1)));
    let err = verify_program(&p).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("not of its kind"), "{err}");
}
