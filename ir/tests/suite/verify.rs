//! The verifier rejects ill-formed ops with a message naming the op, the value
//! and what was expected.

use mixc_ir::dims::SizeExpr;
use mixc_ir::dtype::DType;
use mixc_ir::graph::Graph;
use mixc_ir::ops::*;
use mixc_ir::IrError;

fn setup() -> (Graph, [mixc_ir::DimId; 5]) {
    let mut g = Graph::new("t");
    let b = g.dim("B").unwrap();
    let t = g.dim("T").unwrap();
    let h = g.dim_const("H", 4).unwrap();
    let dk = g.dim_const("Dk", 8).unwrap();
    let dv = g.dim_const("Dv", 6).unwrap();
    (g, [b, t, h, dk, dv])
}

fn message(e: IrError) -> String {
    e.to_string()
}

#[test]
fn rejects_recurrence_with_misshapen_gate() {
    let (mut g, [b, t, h, dk, dv]) = setup();
    let q = g.input("q", DType::F32, &[b, t, h, dk]).unwrap();
    let k = g.input("k", DType::F32, &[b, t, h, dk]).unwrap();
    let v = g.input("v", DType::F32, &[b, t, h, dv]).unwrap();
    let gate = g.input("g", DType::F32, &[b, t, h]).unwrap();
    let r = Recurrence { transition: Transition::KeyDecay, scale: 1.0, normalize: false, eps: 0.0, has_initial: false };
    let e = g.add(OpKind::LinearRecurrence(r), &[q, k, v, gate], &["o"]).unwrap_err();
    assert_eq!(
        message(e),
        "op `linear_recurrence` (result `%o`): operand `gate` must be [B, T, H, Dk], found [B, T, H]"
    );
}

#[test]
fn rejects_reshape_of_different_size() {
    let (mut g, [b, t, h, dk, dv]) = setup();
    let x = g.input("x", DType::F32, &[b, t, h, dk]).unwrap();
    let e = g.add1(OpKind::Reshape { shape: vec![b, t, h, dv] }, &[x], "y").unwrap_err();
    assert_eq!(
        message(e),
        "op `reshape` (result `%y`): cannot reshape [B, T, H, Dk] to [B, T, H, Dv]: the sizes differ"
    );
}

#[test]
fn accepts_reshape_that_splits_heads_symbolically() {
    let (mut g, [b, t, h, dk, _]) = setup();
    let hd = g.dim_expr("HD", SizeExpr::times(SizeExpr::Dim(dk), SizeExpr::Dim(h))).unwrap();
    let x = g.input("x", DType::F32, &[b, t, hd]).unwrap();
    assert!(g.add1(OpKind::Reshape { shape: vec![b, t, h, dk] }, &[x], "y").is_ok());
}

#[test]
fn rejects_mixed_dtypes_and_bad_attention_heads() {
    let (mut g, [b, t, h, dk, _]) = setup();
    let x = g.input("x", DType::F32, &[b, t]).unwrap();
    let i = g.input("i", DType::I32, &[b, t]).unwrap();
    let e = g.add1(OpKind::Binary(BinaryFn::Add), &[x, i], "s").unwrap_err();
    assert_eq!(message(e), "op `add` (result `%s`): operands have different dtypes: f32 and i32");
    let hkv = g.dim_const("Hkv", 3).unwrap();
    let q = g.input("q", DType::F32, &[b, t, h, dk]).unwrap();
    let k = g.input("k", DType::F32, &[b, t, hkv, dk]).unwrap();
    let e = g.add(OpKind::Attention { scale: 1.0, mask: Mask::causal() }, &[q, k, k], &["o"]).unwrap_err();
    assert_eq!(message(e), "op `softmax_attention` (result `%o`): query heads (4) must be a multiple of kv heads (3)");
}

#[test]
fn rejects_duplicate_dims_and_names() {
    let (mut g, [b, ..]) = setup();
    assert_eq!(message(g.dim("B").unwrap_err()), "dim `B` is defined twice");
    let e = g.input("x", DType::F32, &[b, b]).unwrap_err();
    assert_eq!(message(e), "op `input` (result `%x`): dim `B` appears twice in shape [B, B]");
    assert!(g.input("1x", DType::F32, &[b]).is_err());
}

#[test]
fn verify_names_the_value_whose_type_was_tampered_with() {
    let (mut g, [b, t, h, dk, _]) = setup();
    let x = g.input("x", DType::F32, &[b, t, h, dk]).unwrap();
    let y = g.unary(UnaryFn::Exp, x).unwrap();
    g.values[y.index()].ty.dtype = DType::BF16;
    let e = mixc_ir::verify::verify(&g).unwrap_err();
    assert!(message(e).contains("has type bf16 [B, T, H, Dk], inferred f32 [B, T, H, Dk]"));
}

#[test]
fn rejects_topk_larger_than_its_dim_and_bad_quant_bits() {
    let (mut g, [b, t, ..]) = setup();
    let n = g.dim_const("N", 3).unwrap();
    let k = g.dim_const("K", 4).unwrap();
    let r = g.input("r", DType::F32, &[b, t, n]).unwrap();
    let e = g.add(OpKind::TopK { along: n, into: k }, &[r], &["v", "i"]).unwrap_err();
    assert_eq!(message(e), "op `topk` (result `%v`): top-k of 4 out of 3");
    let gs = g.dim_const("Gs", 1).unwrap();
    let e = g.add(OpKind::Quantize { bits: 3, groups: gs, group: n }, &[r], &["c", "s"]).unwrap_err();
    assert!(message(e).contains("3 bits is not supported"));
}
