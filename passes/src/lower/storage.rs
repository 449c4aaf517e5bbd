//! Which buffers of a program take the schedule's storage dtype
//! ([`Schedule::storage`](crate::Schedule::storage)).
//!
//! **The rule.** A float graph input or output is an *activation*, stored in
//! the storage dtype (bf16 or f16, read into f32, rounded to nearest even when
//! written), when it has a free dim (batch, time: it carries per-call data)
//! and is not carried from one call to the next. Carried values are an output
//! whose next-call input ([`carried_input`]) the graph takes, and that input:
//! recurrent states, normalizers and stabilizers, KV caches, convolution and
//! delay tails. They stay f32, as flash-linear-attention keeps its states (a
//! state rounded at every call would drift over a long decode) — except KV
//! caches (`k_cache`, `v_cache`, `s_k_cache`, ...): written once and never
//! updated, they do not drift; they hold the keys and values attention
//! reads (copies of narrow activations, exact, or keys after RoPE, rounded
//! once, as inference engines store them), and narrow they halve what
//! attention reads and let its kernels copy key blocks to shared memory as
//! they are. Weights (no
//! free dim: `A_log`, convolution taps, norm weights, meta tokens), integer
//! values (positions) and scratch between kernels stay as they are (f32).
//! An activation is rounded where the program stores it; a kernel that reads
//! an output buffer back reads the rounded values.

use mixc_ir::graph::{Graph, ValueId};
use mixc_ir::mixers::carried_input;
use mixc_ir::ops::OpKind;
use mixc_ir::DType;

/// The graph's inputs that some output is carried into.
fn carried_inputs(g: &Graph) -> Vec<String> {
    let inputs: Vec<&str> = g.inputs().into_iter().map(|(n, _, _)| n).collect();
    g.outputs.iter().filter_map(|(name, _)| carried_input(name)).filter(|i| inputs.contains(&i.as_str())).collect()
}

/// Whether value `v` has a dim bound per call (not a fixed size).
fn has_free_dim(g: &Graph, v: ValueId) -> bool {
    g.ty(v).shape.iter().any(|d| g.dims.const_size(*d).is_none())
}

/// Whether a carried input is an attention KV cache (stored like the keys
/// and values it copies).
pub fn is_kv_cache(name: &str) -> bool {
    name.ends_with("k_cache") || name.ends_with("v_cache")
}

/// Whether output `name` (value `v`) is an activation.
fn output_is_activation(g: &Graph, name: &str, v: ValueId, carried: &[String]) -> bool {
    let carried_out = carried_input(name).is_some_and(|i| carried.contains(&i) && !is_kv_cache(&i));
    g.ty(v).dtype.is_float() && has_free_dim(g, v) && !carried_out
}

/// Whether the input op defining `v` reads an activation.
fn input_is_activation(g: &Graph, v: ValueId, carried: &[String]) -> bool {
    let OpKind::Input { name, .. } = &g.op(g.value(v).op).kind else { return false };
    g.ty(v).dtype.is_float() && has_free_dim(g, v) && (!carried.contains(name) || is_kv_cache(name))
}

/// Per graph value, the dtype of the buffer holding it: `storage` for
/// activation inputs and for values every one of whose output names is an
/// activation; f32 for other floats; their own dtype for the rest.
pub fn buffer_dtypes(g: &Graph, storage: DType) -> Vec<DType> {
    let carried = carried_inputs(g);
    (0..g.values.len())
        .map(|i| {
            let v = ValueId(i as u32);
            let dtype = g.ty(v).dtype;
            if !dtype.is_float() {
                return dtype;
            }
            let names: Vec<&str> = g.outputs.iter().filter(|(_, x)| *x == v).map(|(n, _)| n.as_str()).collect();
            let activation = if matches!(g.op(g.value(v).op).kind, OpKind::Input { .. }) {
                input_is_activation(g, v, &carried)
            } else {
                !names.is_empty() && names.iter().all(|n| output_is_activation(g, n, v, &carried))
            };
            if activation {
                storage
            } else {
                DType::F32
            }
        })
        .collect()
}

/// The dtype of a copy made for output `name` (an input returned as is, or a
/// value under a second name).
pub fn output_dtype(g: &Graph, name: &str, v: ValueId, storage: DType) -> DType {
    let dtype = g.ty(v).dtype;
    if !dtype.is_float() {
        return dtype;
    }
    if output_is_activation(g, name, v, &carried_inputs(g)) {
        storage
    } else {
        DType::F32
    }
}
