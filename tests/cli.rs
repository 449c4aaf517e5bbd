//! The `mixc` command line: help, every zoo model, and every kind of bad
//! input (a one-paragraph error naming the place, exit code 1, no panic).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

fn mixc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mixc"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap_or_else(|e| panic!("cannot run mixc: {e}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A file under the temp dir with a name no other test (or test run) uses.
struct TempFile(PathBuf);

impl TempFile {
    fn new(tag: &str, ext: &str, contents: &str) -> TempFile {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("mixc-cli-{}-{n}-{tag}.{ext}", std::process::id()));
        std::fs::write(&path, contents).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        TempFile(path)
    }

    fn arg(&self) -> &str {
        self.0.to_str().unwrap_or_else(|| panic!("temp path is not UTF-8"))
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Runs `mixc compile FILE --emit graph` on a bad file and checks the error:
/// exit code 1, no panic, one `error:` paragraph naming the file; returns it.
fn compile_fails(tag: &str, ext: &str, contents: &str) -> (String, String) {
    let file = TempFile::new(tag, ext, contents);
    let out = mixc(&["compile", file.arg(), "--emit", "graph"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{tag}: exit status {:?}, stderr: {stderr}", out.status);
    assert!(!stderr.contains("panicked"), "{tag}: panicked: {stderr}");
    assert!(stderr.starts_with("error: "), "{tag}: not an `error:` line: {stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{tag}: more than one line: {stderr}");
    assert!(stderr.contains(file.arg()), "{tag}: does not name the file: {stderr}");
    assert!(out.stdout.is_empty(), "{tag}: printed output too: {}", text(&out.stdout));
    (stderr, file.arg().to_string())
}

/// Asserts that `stderr` names `path:line:` and each of `words`.
fn names(stderr: &str, path: &str, line: usize, words: &[&str]) {
    assert!(stderr.contains(&format!("{path}:{line}:")), "does not name line {line}: {stderr}");
    for w in words {
        assert!(stderr.contains(w), "does not say {w:?}: {stderr}");
    }
}

const GLA: &str = r#"[mixer.gla]
kind = "gla"
heads = 4
dk = 16
dv = 16
gate = { activation = "logsigmoid", tau = 16.0 }
"#;

#[test]
fn help_explains_the_tool_and_each_subcommand() {
    let out = mixc(&["--help"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let help = text(&out.stdout);
    for w in ["compile", "--emit", "graph", "model file"] {
        assert!(help.contains(w), "`mixc --help` does not mention {w:?}:\n{help}");
    }
    let out = mixc(&["compile", "--help"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let help = text(&out.stdout);
    for w in ["FILE", "--emit", "graph", ".mix"] {
        assert!(help.contains(w), "`mixc compile --help` does not mention {w:?}:\n{help}");
    }
}

#[test]
fn usage_errors_exit_2() {
    let out = mixc(&["compile", "models/gla.toml", "--emit", "nonsense"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(!text(&out.stderr).contains("panicked"));
}

#[test]
fn every_zoo_model_compiles_to_graphs() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    assert!(files.len() >= 15, "expected the whole zoo, found {files:?}");
    let mut failures = Vec::new();
    for f in &files {
        let arg = f.to_str().unwrap_or_else(|| panic!("path is not UTF-8"));
        let out = mixc(&["compile", arg, "--emit", "graph"]);
        let stdout = text(&out.stdout);
        let stderr = text(&out.stderr);
        if !out.status.success() {
            failures.push(format!("{}: {}", f.display(), stderr.trim()));
        } else if !stdout.starts_with("# mixer ") {
            failures.push(format!("{}: output does not start with `# mixer`", f.display()));
        }
        assert!(!stderr.contains("panicked"), "{}: panicked: {stderr}", f.display());
    }
    assert!(failures.is_empty(), "models that do not compile:\n{}", failures.join("\n"));
}

#[test]
fn graph_text_prints_back_unchanged() {
    // The graph of one zoo mixer, printed, read back as a `.mix` file, printed again.
    let out = mixc(&["compile", "models/gla.toml", "--emit", "graph"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let printed = text(&out.stdout);
    let graph: String = printed.lines().skip(1).map(|l| format!("{l}\n")).collect();
    let file = TempFile::new("roundtrip", "mix", &graph);
    let again = mixc(&["compile", file.arg(), "--emit", "graph"]);
    assert!(again.status.success(), "{}", text(&again.stderr));
    assert_eq!(text(&again.stdout), graph);
}

#[test]
fn malformed_toml_names_the_line() {
    let (err, path) = compile_fails("malformed", "toml", "[mixer.gla]\nkind = \"gla\"\nheads = = 4\n");
    names(&err, &path, 3, &["malformed TOML"]);
}

#[test]
fn unknown_key_names_the_key_and_line() {
    let (err, path) = compile_fails("unknown-key", "toml", &format!("{GLA}windw = 3\n"));
    names(&err, &path, 7, &["`mixer.gla.windw`", "unknown key `windw`"]);
}

#[test]
fn unknown_mixer_kind_is_named() {
    let (err, path) = compile_fails("unknown-kind", "toml", &GLA.replace("\"gla\"\nheads", "\"glaa\"\nheads"));
    names(&err, &path, 2, &["`mixer.gla.kind`", "unknown mixer kind `glaa`"]);
}

#[test]
fn kv_heads_must_divide_heads() {
    let src = "[mixer.attn]\nkind = \"attention\"\nheads = 4\nkv_heads = 3\nhead_dim = 16\n";
    let (err, path) = compile_fails("kv-heads", "toml", src);
    names(&err, &path, 4, &["`mixer.attn.kv_heads`", "does not divide heads = 4"]);
}

#[test]
fn window_must_be_positive() {
    let src = "[mixer.swa]\nkind = \"attention\"\nheads = 4\nhead_dim = 16\nwindow = 0\n";
    let (err, path) = compile_fails("window-0", "toml", src);
    names(&err, &path, 5, &["`mixer.swa.window`", "window = 0"]);
}

#[test]
fn top_k_must_not_exceed_memories() {
    let src = "[mixer.mom]\nkind = \"mom\"\nheads = 2\ndk = 8\ndv = 8\nmemories = 2\ntop_k = 3\n";
    let (err, path) = compile_fails("top-k", "toml", src);
    names(&err, &path, 7, &["`mixer.mom.top_k`", "top_k = 3", "2 memories"]);
}

#[test]
fn pattern_must_name_defined_mixers() {
    let src = format!("[model]\nvocab = 16\nd_model = 16\nlayers = 2\npattern = [\"gla\", \"swa\"]\n\n{GLA}");
    let (err, path) = compile_fails("pattern", "toml", &src);
    names(&err, &path, 5, &["`model.pattern[1]`", "`swa`"]);
}

#[test]
fn override_index_must_be_a_layer() {
    let src = format!(
        "[model]\nvocab = 16\nd_model = 16\nlayers = 2\npattern = [\"gla\"]\noverrides = {{ 7 = \
         \"gla\" }}\n\n{GLA}"
    );
    let (err, path) = compile_fails("override", "toml", &src);
    names(&err, &path, 6, &["`model.overrides.7`", "layer 7", "2 layers"]);
}

#[test]
fn graph_text_that_does_not_parse_names_the_place() {
    let (err, _) = compile_fails("garbage", "mix", "graph g {\n  %0 = ??? \n");
    // `path:line:col:`
    let after_path = err.split(".mix:").nth(1).unwrap_or("");
    let mut parts = after_path.splitn(3, ':');
    let line = parts.next().unwrap_or("");
    let col = parts.next().unwrap_or("");
    assert!(line.parse::<usize>().is_ok() && col.parse::<usize>().is_ok(), "does not name line and column: {err}");
}

#[test]
fn missing_file_is_named() {
    let path = std::env::temp_dir().join(format!("mixc-cli-{}-missing.toml", std::process::id()));
    let arg = path.to_str().unwrap_or_else(|| panic!("temp path is not UTF-8"));
    let out = mixc(&["compile", arg, "--emit", "graph"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.starts_with("error: ") && stderr.contains(arg), "{stderr}");

    let mix = std::env::temp_dir().join(format!("mixc-cli-{}-missing.mix", std::process::id()));
    let arg = mix.to_str().unwrap_or_else(|| panic!("temp path is not UTF-8"));
    let out = mixc(&["compile", arg]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.starts_with("error: ") && stderr.contains(arg), "{stderr}");
}

const GLA_H16: &str = "[mixer.gla]\nkind = \"gla\"\nheads = 16\ndk = 128\ndv = 128\ngate = { activation = \"none\" }\n";

#[test]
fn explain_prints_the_cost_table_and_the_pick() {
    let file = TempFile::new("explain", "toml", GLA_H16);
    for (tag, args) in [
        ("h100_b8_t8192", vec!["--target", "sm_90", "--sizes", "B=8,T=8192"]),
        ("h100_b1_t8192", vec!["--target", "sm_90", "--sizes", "B=1,T=8192"]),
        ("h100_decode_b64", vec!["--target", "h100", "--sizes", "B=64,T=1"]),
        ("cpu_b1_t2048", vec!["--target", "cpu"]),
    ] {
        let mut all = vec!["explain", file.arg(), "--top", "4"];
        all.extend(args);
        let out = mixc(&all);
        assert!(out.status.success(), "{tag}: {}", text(&out.stderr));
        insta::assert_snapshot!(format!("explain_{tag}"), text(&out.stdout));
    }
}

#[test]
fn explain_rejects_unknown_targets_and_bad_sizes() {
    let file = TempFile::new("explain-bad", "toml", GLA_H16);
    let out = mixc(&["explain", file.arg(), "--target", "sm_75"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("unknown target `sm_75`"));
    let out = mixc(&["explain", file.arg(), "--sizes", "B=eight"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("`B=eight` is not DIM=N"));
}

#[test]
fn tile_stage_prints_the_program() {
    let file = TempFile::new("tile", "toml", GLA_H16);
    let out = mixc(&["compile", file.arg(), "--emit", "tile", "--chunk", "32", "--split"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let s = text(&out.stdout);
    assert!(s.contains("kernel o_states(") && s.contains("kernel o_outputs("), "{s}");
    assert!(s.contains("dot[trans_a = false, trans_b = true]"), "{s}");
    let bad = mixc(&["compile", file.arg(), "--emit", "tile", "--chunk", "48"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(text(&bad.stderr).contains("chunk 48 must be a power of two"), "{}", text(&bad.stderr));
}

#[test]
fn every_zoo_model_lowers_to_tile_programs() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("models"))
        .unwrap_or_else(|e| panic!("models/: {e}"))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    for f in files {
        let path = f.to_str().unwrap_or_else(|| panic!("non-UTF-8 path"));
        for split in [false, true] {
            let mut args = vec!["compile", path, "--emit", "tile"];
            if split {
                args.push("--split");
            }
            let out = mixc(&args);
            assert!(out.status.success(), "{path} (split {split}): {}", text(&out.stderr));
            assert!(text(&out.stdout).contains("launch "), "{path}: no launches");
        }
    }
}

/// Random inputs for a zoo mixer, written to a safetensors file.
fn write_inputs(
    g: &mixc::ir::Graph,
    b: usize,
    t: usize,
    seed: u64,
) -> (TempFile, std::collections::BTreeMap<String, mixc::ir::interp::Tensor>) {
    let sizes = std::collections::BTreeMap::from([("B", b), ("T", t), ("S", 3), ("Sr_", 3), ("Ss_", 3)]);
    let ins = mixc::ir::mixers::random_inputs(g, &sizes, seed, true);
    let host: std::collections::BTreeMap<String, mixc::runtime::HostTensor> = g
        .inputs()
        .into_iter()
        .filter_map(|(n, v, _)| {
            ins.get(n).map(|t| (n.to_string(), mixc::runtime::HostTensor::from_f64(t, !g.ty(v).dtype.is_float())))
        })
        .collect();
    let file = TempFile::new("inputs", "safetensors", "");
    mixc::runtime::st::save(&file.0, &host).unwrap_or_else(|e| panic!("{e}"));
    // What the kernels see: f32-rounded floats.
    let rounded = host.iter().map(|(n, t)| (n.clone(), t.to_f64())).collect();
    (file, rounded)
}

#[test]
fn exec_runs_every_zoo_mixer_and_matches_the_reference() {
    for model in [
        "gla",
        "retnet",
        "mamba2",
        "mlstm",
        "deltanet",
        "gated-deltanet",
        "llama",
        "swa",
        "liger",
        "lizard",
        "duo-attention",
        "mom",
        "linear-attn",
        "simple-gla",
    ] {
        let path = format!("models/{model}.toml");
        let graphs = mixc::graphs_of_file(Path::new(env!("CARGO_MANIFEST_DIR")).join(&path).as_path())
            .unwrap_or_else(|e| panic!("{e}"));
        for g in graphs {
            let (inputs, reference_in) = write_inputs(&g.graph, 2, 21, 5);
            let out = TempFile::new("outputs", "safetensors", "");
            for mode in ["prefill", "decode"] {
                let res = mixc(&[
                    "exec",
                    &path,
                    "--mixer",
                    &g.name,
                    "--inputs",
                    inputs.arg(),
                    "-o",
                    out.arg(),
                    "--mode",
                    mode,
                    "--chunk",
                    "16",
                ]);
                assert!(res.status.success(), "{path} {} {mode}: {}", g.name, text(&res.stderr));
                let got = mixc::runtime::st::load(&out.0).unwrap_or_else(|e| panic!("{e}"));
                let want = mixc::ir::interp::run(&g.graph, &reference_in).unwrap_or_else(|e| panic!("{e}"));
                for (name, w) in &want {
                    let o = got.get(name).unwrap_or_else(|| panic!("{path}: no output `{name}`")).to_f64();
                    assert_eq!(o.shape, w.shape, "{path} {name}");
                    let num: f64 = o.data.iter().zip(&w.data).map(|(a, b)| (a - b) * (a - b)).sum();
                    let den: f64 = w.data.iter().map(|b| b * b).sum();
                    let err = if den > 0.0 { (num / den).sqrt() } else { num.sqrt() };
                    assert!(err <= 1e-4, "{path} {} {mode}: `{name}` relative error {err:e}", g.name);
                }
            }
        }
    }
}

#[test]
fn exec_names_the_bad_tensor() {
    let path = "models/gla.toml";
    let graphs = mixc::graphs_of_file(Path::new(env!("CARGO_MANIFEST_DIR")).join(path).as_path())
        .unwrap_or_else(|e| panic!("{e}"));
    let g = &graphs[0].graph;
    let sizes = std::collections::BTreeMap::from([("B", 1), ("T", 5)]);
    let good = mixc::ir::mixers::random_inputs(g, &sizes, 1, false);
    let host = |m: &std::collections::BTreeMap<String, mixc::ir::interp::Tensor>| -> std::collections::BTreeMap<String, mixc::runtime::HostTensor> {
        m.iter().map(|(n, t)| (n.clone(), mixc::runtime::HostTensor::from_f64(t, false))).collect()
    };
    let out = TempFile::new("bad-out", "safetensors", "");
    let cases: Vec<(&str, std::collections::BTreeMap<String, mixc::runtime::HostTensor>, &str)> = {
        let mut missing = host(&good);
        missing.remove("k");
        let mut extra = host(&good);
        extra.insert("bogus".into(), mixc::runtime::HostTensor::f32(vec![1], vec![0.0]));
        let mut misshapen = host(&good);
        misshapen.insert("v".into(), mixc::runtime::HostTensor::f32(vec![1, 5, 2, 7], vec![0.0; 70]));
        let mut ints = host(&good);
        let q = &good["q"];
        ints.insert("q".into(), mixc::runtime::HostTensor::from_f64(q, true));
        let mut nan = host(&good);
        if let Some(mixc::runtime::HostTensor { data: mixc::runtime::Data::F32(v), .. }) = nan.get_mut("g") {
            v[0] = f32::NAN;
        }
        vec![
            ("missing", missing, "missing input `k`"),
            ("extra", extra, "unknown input `bogus`"),
            ("misshapen", misshapen, "input `v`: dim `Dv` is 7, but 32 is expected"),
            ("ints", ints, "input `q` must hold f32 values, found integers"),
            ("nan", nan, "input `g` holds NaN or infinity"),
        ]
    };
    for (tag, tensors, want) in cases {
        let f = TempFile::new(tag, "safetensors", "");
        mixc::runtime::st::save(&f.0, &tensors).unwrap_or_else(|e| panic!("{e}"));
        let res = mixc(&["exec", path, "--inputs", f.arg(), "-o", out.arg()]);
        assert_eq!(res.status.code(), Some(1), "{tag}");
        let err = text(&res.stderr);
        assert!(err.contains(want) && !err.contains("panicked"), "{tag}: {err}");
    }
    let res = mixc(&["exec", path, "--inputs", "/nonexistent.safetensors", "-o", out.arg()]);
    assert_eq!(res.status.code(), Some(1));
    assert!(text(&res.stderr).contains("/nonexistent.safetensors"));
}

#[test]
fn kernel_bundles_round_trip_and_refuse_mismatches() {
    let graphs = mixc::graphs_of_file(Path::new(env!("CARGO_MANIFEST_DIR")).join("models/gla.toml").as_path())
        .unwrap_or_else(|e| panic!("{e}"));
    let g = &graphs[0];
    let schedule = mixc::passes::Schedule::with_chunk(32);
    let program = mixc::lower_graph(&g.name, &g.graph, &schedule).unwrap_or_else(|e| panic!("{e}"));
    let kernels: Vec<mixc::bundle::KernelImage> = program
        .kernels
        .iter()
        .map(|k| mixc::bundle::KernelImage {
            name: k.name.clone(),
            code: format!("// {}", k.name),
            threads: 128,
            shared_bytes: 0,
            scratch_bytes: 0,
        })
        .collect();
    let entry = mixc::bundle::BundledProgram {
        mixer: g.name.clone(),
        mode: "prefill".into(),
        graph: g.graph.clone(),
        schedule,
        program: program.clone(),
        kernels: kernels.clone(),
    };
    let dir = std::env::temp_dir().join(format!("mixc-bundle-{}", std::process::id()));
    mixc::bundle::write(&dir, "sm_90", &[entry]).unwrap_or_else(|e| panic!("{e}"));
    let (target, back) = mixc::bundle::read(&dir).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(target, "sm_90");
    assert_eq!(back.len(), 1);
    assert_eq!(back[0].program, program);
    assert_eq!(back[0].kernels, kernels);
    // A manifest that names other kernels is refused.
    let manifest = dir.join("manifest.toml");
    let text = std::fs::read_to_string(&manifest).unwrap_or_default();
    std::fs::write(&manifest, text.replacen("name = \"", "name = \"other_", 1)).unwrap_or_else(|e| panic!("{e}"));
    let err = mixc::bundle::read(&dir).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("do not match"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Prefill of T tokens then N decode steps gives the logits of a prefill of
/// T + N tokens, for every model of the zoo, on random weights.
#[test]
fn decode_after_prefill_equals_longer_prefill_for_every_model() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{e}"))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    let mut checked = 0;
    for f in files {
        let Ok(w) = mixc::Model::init_weights(&f, 3) else { continue }; // mixer-only files
        let ids: Vec<u32> = (0..9).map(|i| (i * 37 + 5) % 200).collect();
        let (t, n) = (6, 3);
        let mut a = mixc::Model::load(&f, w.clone(), mixc::jit::Target::Cpu).unwrap_or_else(|e| panic!("{e}"));
        let vocab = a.vocab();
        let full = a.forward(&ids, false).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        let mut b = mixc::Model::load(&f, w, mixc::jit::Target::Cpu).unwrap_or_else(|e| panic!("{e}"));
        let mut got = b.forward(&ids[..t], false).unwrap_or_else(|e| panic!("{e}"));
        for id in &ids[t..t + n] {
            got.extend(b.forward(&[*id], true).unwrap_or_else(|e| panic!("{e}")));
        }
        let (x, y) = (&got[..], &full[..(t + n) * vocab]);
        let num: f64 = x.iter().zip(y).map(|(p, q)| ((p - q) as f64).powi(2)).sum();
        let den: f64 = y.iter().map(|q| (*q as f64).powi(2)).sum();
        let err = (num / den).sqrt();
        assert!(err <= 1e-4, "{}: decode after prefill differs from prefill by {err:e}", f.display());
        checked += 1;
    }
    assert!(checked >= 12, "only {checked} models checked");
}

/// Recurrent and windowed layers keep a cache whose size does not grow with
/// the number of generated tokens; full attention's grows.
#[test]
fn cache_memory_is_constant_for_recurrent_and_windowed_layers() {
    for (model, constant) in [("models/gla.toml", true), ("models/swa.toml", true), ("models/llama.toml", false)] {
        let f = Path::new(env!("CARGO_MANIFEST_DIR")).join(model);
        let w = mixc::Model::init_weights(&f, 1).unwrap_or_else(|e| panic!("{e}"));
        let mut m = mixc::Model::load(&f, w, mixc::jit::Target::Cpu).unwrap_or_else(|e| panic!("{e}"));
        // Past the window (16 in swa.toml) before measuring.
        let prompt: Vec<u32> = (0..40).collect();
        m.forward(&prompt, false).unwrap_or_else(|e| panic!("{e}"));
        let before = m.cache_bytes();
        for id in 0..4 {
            m.forward(&[id], true).unwrap_or_else(|e| panic!("{e}"));
        }
        let after = m.cache_bytes();
        assert_eq!(before == after, constant, "{model}: {before:?} -> {after:?}");
    }
}

#[test]
fn devices_lists_the_builtin_profiles() {
    let out = mixc(&["devices"]);
    assert!(out.status.success());
    let s = text(&out.stdout);
    assert!(s.contains("sm_90") && s.contains("680.00 TFLOP/s") && s.contains("3.00 TB/s") && s.contains("cpu"), "{s}");
}

#[test]
fn explain_draws_the_roofline() {
    let file = TempFile::new("plot", "toml", GLA_H16);
    let svg = TempFile::new("roofline", "svg", "");
    let out = mixc(&["explain", file.arg(), "--plot", svg.arg(), "--top", "1"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let body = std::fs::read_to_string(&svg.0).unwrap_or_default();
    assert!(body.contains("<svg") && body.contains("matrix unit") && body.contains("gla/o_fused"), "{body}");
}
