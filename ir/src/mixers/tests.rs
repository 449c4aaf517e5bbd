//! The optional keys that real checkpoints need (output gate, output-norm
//! epsilon, beta activation): each one changes the graph exactly as its
//! definition says, checked on the reference interpreter.

use super::build;
use crate::interp::{run, Tensor};
use crate::mixers::random_inputs;
use crate::model::parse_model;
use std::collections::BTreeMap;

fn graph(table: &str) -> crate::graph::Graph {
    let file = parse_model(&format!("[mixer.m]\n{table}"), "test.toml").unwrap_or_else(|e| panic!("{e}"));
    build("m", &file.mixer["m"]).unwrap_or_else(|e| panic!("{e}"))
}

fn inputs(g: &crate::graph::Graph) -> BTreeMap<String, Tensor> {
    let sizes: BTreeMap<&str, usize> = [("B", 1), ("T", 5)].into_iter().collect();
    random_inputs(g, &sizes, 7, false)
}

fn o(g: &crate::graph::Graph, inputs: &BTreeMap<String, Tensor>) -> Vec<f64> {
    run(g, inputs).unwrap_or_else(|e| panic!("{e}"))["o"].data.clone()
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

const GDN: &str = "kind = \"gated_deltanet\"\nheads = 2\ndk = 8\ndv = 4\ngate = { activation = \"mamba\" }\n\
                   qk_norm = true\noutput_norm = true\n";

#[test]
fn output_gate_multiplies_the_normed_output_by_its_activation() {
    let plain = graph(GDN);
    for (act, f) in [("swish", (|x| x * sigmoid(x)) as fn(f64) -> f64), ("sigmoid", sigmoid)] {
        let gated = graph(&format!("{GDN}output_gate = \"{act}\"\n"));
        let ins = inputs(&gated);
        let gate = ins["o_gate"].clone();
        assert_eq!(gate.shape, vec![1, 5, 2, 4]);
        let mut plain_ins = ins.clone();
        plain_ins.remove("o_gate");
        let want: Vec<f64> = o(&plain, &plain_ins).iter().zip(&gate.data).map(|(a, g)| a * f(*g)).collect();
        let got = o(&gated, &ins);
        let err = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        // The interpreter rounds f32 values to f32 between ops.
        assert!(err < 1e-6, "{act}: {err}");
    }
}

#[test]
fn beta_activation_sigmoid_equals_feeding_sigmoid_beta() {
    let raw = graph(GDN);
    let act = graph(&format!("{GDN}beta_activation = \"sigmoid\"\n"));
    let ins = inputs(&act);
    let mut pre = ins.clone();
    if let Some(b) = pre.get_mut("beta") {
        b.data.iter_mut().for_each(|x| *x = sigmoid(*x));
    }
    let (a, b) = (o(&act, &ins), o(&raw, &pre));
    let err = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
    assert!(err < 1e-6, "{err}");
    // `none` is the default: the same graph as no key.
    let none = graph(&format!("{GDN}beta_activation = \"none\"\n"));
    assert_eq!(crate::text::print(&none), crate::text::print(&raw));
}

#[test]
fn norm_eps_sets_the_output_norm_epsilon() {
    let default = crate::text::print(&graph(GDN));
    let set = crate::text::print(&graph(&format!("{GDN}norm_eps = 1e-6\n")));
    assert!(default.contains("eps = 0.00001") || default.contains("eps = 1e-5"), "{default}");
    assert_ne!(default, set);
    assert_eq!(set, default.replace("0.00001", "0.000001").replace("1e-5", "1e-6"));
}

#[test]
fn new_keys_are_checked() {
    for (table, words) in [
        ("kind = \"gla\"\nheads = 1\ndk = 4\ndv = 4\ngate = { activation = \"none\" }\nnorm_eps = 1e-6\n", "output_norm"),
        ("kind = \"gla\"\nheads = 1\ndk = 4\ndv = 4\ngate = { activation = \"none\" }\nbeta_activation = \"sigmoid\"\n", "does not apply"),
        ("kind = \"deltanet\"\nheads = 1\ndk = 4\ndv = 4\noutput_norm = true\nnorm_eps = -1.0\n", "norm_eps"),
        ("kind = \"deltanet\"\nheads = 1\ndk = 4\ndv = 4\noutput_gate = \"relu\"\n", "relu"),
    ] {
        let err = parse_model(&format!("[mixer.m]\n{table}"), "t.toml").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains(words), "{table}: {err}");
    }
    let model = "[model]\nvocab = 8\nd_model = 4\nlayers = 1\npattern = [\"m\"]\nnorm_eps = 1e-5\n\
                 [mixer.m]\nkind = \"deltanet\"\nheads = 1\ndk = 4\ndv = 4\n";
    let file = parse_model(
        &format!("{model}[weights]\nnames = \"hf\"\nrename = {{ \"a.{{i}}.b\" = \"layers.{{i}}.c\" }}\n"),
        "t.toml",
    );
    assert!(file.is_ok(), "{file:?}");
    for (rule, words) in [
        ("\"a.{i}.{i}\" = \"b\"", "more than once"),
        ("\"a*.b\" = \"c\"", "before its end"),
        ("\"a\" = \"layers.{i}.b\"", "does not"),
        ("\"a.*\" = \"b\"", "both names"),
    ] {
        let err = parse_model(&format!("{model}[weights]\nrename = {{ {rule} }}\n"), "t.toml")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains(words) && err.contains("t.toml"), "{rule}: {err}");
    }
}
