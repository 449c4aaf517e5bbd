//! The oracle reproduces third-party reference outputs (`../shared/golden/`):
//! flash-linear-attention's naive functions, the xLSTM kernels' recurrent
//! reference and PyTorch attention, all in float64.

use super::util::*;
use mixc_ir::interp::{self, Tensor};
use mixc_ir::mixers;
use safetensors::SafeTensors;
use std::collections::BTreeMap;
use std::path::PathBuf;

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/golden")
}

struct Case {
    name: String,
    meta: serde_json::Value,
    tensors: BTreeMap<String, Tensor>,
}

fn load(kind: &str) -> Vec<Case> {
    let path = golden_dir().join(format!("{kind}.safetensors"));
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let (_, header) = SafeTensors::read_metadata(&bytes).expect("safetensors header");
    let meta = header.metadata().clone().expect("metadata");
    let st = SafeTensors::deserialize(&bytes).expect("safetensors");
    let names: Vec<String> = serde_json::from_str(&meta["__cases__"]).expect("cases");
    names
        .into_iter()
        .map(|name| {
            let m: serde_json::Value = serde_json::from_str(&meta[&name]).expect("case meta");
            let mut tensors = BTreeMap::new();
            for (tname, view) in st.tensors() {
                if let Some(short) = tname.strip_prefix(&format!("{name}/")) {
                    let data: Vec<f64> = view
                        .data()
                        .chunks_exact(8)
                        .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
                        .collect();
                    tensors.insert(short.to_string(), Tensor { shape: view.shape().to_vec(), data });
                }
            }
            Case { name, meta: m, tensors }
        })
        .collect()
}

fn num(m: &serde_json::Value, key: &str) -> u64 {
    m[key].as_u64().unwrap_or_else(|| panic!("metadata `{key}` missing"))
}

/// Runs every case of `kind` through the mixer built from `table` (with the
/// case's dims and scale filled in) and compares every reference output.
fn check(kind: &str, mixer_kind: &str, extra: &str, output_map: &[(&str, &str)]) {
    let cases = load(kind);
    assert_eq!(cases.len(), 5, "{kind}: expected 5 cases");
    for case in cases {
        let m = &case.meta;
        let (h, dk, dv) = (num(m, "H"), num(m, "Dk"), num(m, "Dv"));
        let scale = m["scale"].as_f64().expect("scale");
        let table = if mixer_kind == "attention" {
            let hkv = num(m, "Hkv");
            let mut t = format!(
                "kind = \"attention\"\nheads = {h}\nkv_heads = {hkv}\nhead_dim = {dk}\ndv = {dv}\nscale = {scale:?}\n"
            );
            if let Some(w) = m["window"].as_u64() {
                t += &format!("window = {w}\n");
            }
            let sinks = m["sinks"].as_u64().unwrap_or(0);
            if sinks > 0 {
                t += &format!("sinks = {sinks}\n");
            }
            t
        } else {
            format!("kind = \"{mixer_kind}\"\nheads = {h}\ndk = {dk}\ndv = {dv}\nscale = {scale:?}\n{extra}")
        };
        let g = mixers::build(kind, &cfg(&table)).unwrap_or_else(|e| panic!("{}: {e}", case.name));
        let input_names: Vec<String> = g.inputs().iter().map(|(n, _, _)| n.to_string()).collect();
        let ins: BTreeMap<String, Tensor> =
            case.tensors.iter().filter(|(n, _)| input_names.contains(n)).map(|(n, t)| (n.clone(), t.clone())).collect();
        let mut ins = ins;
        if let Some(im) = ins.get_mut("initial_m") {
            // The reference stores m as [B, H] already; keep as is.
            let _ = im;
        }
        let out = interp::run(&g, &ins).unwrap_or_else(|e| panic!("{} / {}: {e}", kind, case.name));
        for (ref_name, ours) in output_map {
            let Some(want) = case.tensors.get(*ref_name) else { continue };
            let got = &out[*ours];
            assert_eq!(got.shape, want.shape, "{} {}: shape of {ref_name}", kind, case.name);
            let axes = slice_axes(want.shape.len(), *ref_name == "o");
            let err = rel_err_slices(got, want, &axes);
            assert!(err <= 1e-10, "{kind} {}: {ref_name} relative error {err:e} > 1e-10", case.name);
        }
    }
}

const STATE_OUT: &[(&str, &str)] = &[("o", "o"), ("final_state", "final_state")];

#[test]
fn golden_gla() {
    check("gla", "gla", "", STATE_OUT);
}

#[test]
fn golden_simple_gla() {
    check("simple_gla", "simple_gla", "", STATE_OUT);
}

#[test]
fn golden_linear_attn() {
    check("linear_attn", "linear_attn", "", STATE_OUT);
}

#[test]
fn golden_delta_rule() {
    check("delta_rule", "deltanet", "", STATE_OUT);
}

#[test]
fn golden_gated_delta_rule() {
    check("gated_delta_rule", "gated_deltanet", "", STATE_OUT);
}

#[test]
fn golden_mlstm() {
    check(
        "mlstm",
        "mlstm",
        "",
        &[("o", "o"), ("final_state", "final_state"), ("final_n", "final_n"), ("final_m", "final_m")],
    );
}

#[test]
fn golden_attention() {
    check("attention", "attention", "", &[("o", "o")]);
}
