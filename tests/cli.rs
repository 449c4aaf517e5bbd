//! The `mixc` command line: help, every zoo model, and every kind of bad
//! input (a one-paragraph error naming the place, exit code 1, no panic).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

fn mixc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mixc"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        // No calibrated CPU profile or tuned schedules from the machine's own
        // cache folder: outputs (and the explain snapshots) stay deterministic.
        .env("MIXC_HOME", std::env::temp_dir().join("mixc-cli-tests-empty-home"))
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

/// `--attention-blocks QxK` sets attention's blocks (the tile program's
/// header and kernel shapes say so); malformed values are usage errors that
/// say what is expected.
#[test]
fn attention_blocks_are_set_by_flag() {
    let out =
        mixc(&["compile", "models/llama.toml", "--target", "sm_90", "--emit", "tile", "--attention-blocks", "32x16"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let tile = text(&out.stdout);
    assert!(tile.contains("(q32 k16, blocks from --attention-blocks)"), "{}", &tile[..tile.len().min(400)]);
    assert!(tile.contains("launch flash_attention[cdiv(T, 32)"), "no 32-query blocks in\n{tile}");
    for (bad, says) in
        [("100x32", "powers of two"), ("64", "expected QxK"), ("64xz", "not a number"), ("512x64", "powers of two")]
    {
        let out = mixc(&["compile", "models/llama.toml", "--emit", "tile", "--attention-blocks", bad]);
        assert_eq!(out.status.code(), Some(2), "{bad}: {}", text(&out.stderr));
        assert!(text(&out.stderr).contains(says), "{bad}: {}", text(&out.stderr));
    }
}

/// `--warp-rows` takes 16, 32 or auto (PTX of a llama with bf16 dots: the
/// register tier's attention then runs 128 or 256 threads, q128 k32); anything
/// else is a usage error that says what it takes. `explain --matmul` plans
/// with the named `dot` mode and refuses others.
#[test]
fn warp_rows_and_explain_matmul_are_flags() {
    let ptx_threads = |rows: &str| {
        let args = ["compile", "models/llama.toml", "--target", "sm_90", "--emit", "ptx", "--matmul", "bf16"];
        let out = mixc(&[&args[..], &["--attention-blocks", "128x32", "--warp-rows", rows]].concat());
        assert!(out.status.success(), "{rows}: {}", text(&out.stderr));
        let ptx = text(&out.stdout);
        let at = ptx.find(".entry flash_attention(").unwrap_or_else(|| panic!("{rows}: no flash_attention entry"));
        let tail = &ptx[at..];
        let n = tail.find(".maxntid").map(|i| &tail[i + 9..]).unwrap_or_default();
        n.split(|c: char| !c.is_ascii_digit()).next().unwrap_or_default().to_string()
    };
    assert_eq!(ptx_threads("16"), "256");
    assert_eq!(ptx_threads("32"), "128");
    let out = mixc(&["compile", "models/llama.toml", "--emit", "tile", "--warp-rows", "24"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("16 or 32"), "{}", text(&out.stderr));
    let out = mixc(&["explain", "models/llama.toml", "--matmul", "bf16", "--top", "1"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("pick:"), "{}", text(&out.stdout));
    let out = mixc(&["explain", "models/llama.toml", "--matmul", "fp8"]);
    assert!(!out.status.success(), "{}", text(&out.stdout));
    assert!(text(&out.stderr).contains("tf32x3, bf16 or simt"), "{}", text(&out.stderr));
}

/// `--emit ptx` heads each kernel with its tier and, outside the register
/// tier, why: attention with bf16 dots in registers, with tf32x3 not (the
/// tier takes bf16 dots only), everything with `--shared-tiles` not.
#[test]
fn ptx_headers_say_the_tier() {
    let header = |extra: &[&str]| {
        let args = ["compile", "models/llama.toml", "--target", "sm_90", "--emit", "ptx"];
        let out = mixc(&[&args[..], extra].concat());
        assert!(out.status.success(), "{extra:?}: {}", text(&out.stderr));
        let ptx = text(&out.stdout);
        let line = ptx.lines().find(|l| l.starts_with("// mixer attn kernel flash_attention ("));
        line.unwrap_or_else(|| panic!("{extra:?}: no header for flash_attention")).to_string()
    };
    assert!(header(&["--matmul", "bf16"]).contains("(register tier;"), "{}", header(&["--matmul", "bf16"]));
    let tf32 = header(&[]);
    assert!(tf32.contains("shared-memory tier: the register tier takes bf16 dots only;"), "{tf32}");
    let off = header(&["--matmul", "bf16", "--shared-tiles"]);
    assert!(off.contains("shared-memory tier (--shared-tiles);"), "{off}");
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
    // --scan: a program per chunk for the contributions, the walk, the outputs.
    let out = mixc(&["compile", file.arg(), "--emit", "tile", "--chunk", "32", "--scan"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let s = text(&out.stdout);
    assert!(s.contains("kernel o_deltas(") && s.contains("kernel o_scan(") && s.contains("kernel o_outputs("), "{s}");
    assert!(!s.contains("kernel o_states("), "{s}");
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

/// `--kv-split N`: attention split over keys in the printed tile program (a
/// partial and a combine kernel); a value that is not a multiple of the key
/// block is a usage error naming the flag; bundles record the split in their
/// schedules — GPU decode steps split by default, `--kv-split 0` turns that off.
#[test]
fn kv_split_flag_reaches_programs_and_bundles() {
    let out = mixc(&["compile", "models/llama.toml", "--emit", "tile", "--kv-split", "128"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let tile = text(&out.stdout);
    assert!(tile.contains("flash_attention_partial") && tile.contains("flash_attention_combine"), "{tile}");
    assert!(tile.contains("kv128"), "the header names the split: {tile}");
    let out = mixc(&["compile", "models/llama.toml", "--emit", "tile"]);
    assert!(!text(&out.stdout).contains("flash_attention_partial"), "no split by default");
    fails_with(&mixc(&["compile", "models/llama.toml", "--emit", "tile", "--kv-split", "100"]), &["--kv-split 100"]);
    let help = text(&mixc(&["compile", "--help"]).stdout);
    assert!(help.contains("--kv-split <N>"), "{help}");
    if cfg!(feature = "llvm") {
        let decode_split = |extra: &[&str]| {
            let dir = std::env::temp_dir().join(format!("mixc-cli-kv-split-{}-{}", std::process::id(), extra.len()));
            let dir_arg = dir.to_str().unwrap_or_else(|| panic!("temp path is not UTF-8"));
            let args = [&["compile", "models/llama.toml", "--target", "sm_90", "-o", dir_arg][..], extra].concat();
            let out = mixc(&args);
            assert!(out.status.success(), "{}", text(&out.stderr));
            let bundle = mixc::bundle::read_bundle(&dir).unwrap_or_else(|e| panic!("{e}"));
            let split = |mode: &str| {
                let p = bundle.programs.iter().find(|p| p.mode == mode).unwrap_or_else(|| panic!("no {mode}"));
                let kernels = p.kernels.iter().any(|k| k.name == "flash_attention_partial");
                assert_eq!(kernels, p.schedule.kv_split > 0, "{mode}: kernels follow the schedule");
                p.schedule.kv_split
            };
            let got = (split("prefill"), split("decode"));
            let _ = std::fs::remove_dir_all(&dir);
            got
        };
        let gpu = mixc::passes::schedule::GPU_DECODE_KV_SPLIT;
        assert_eq!(decode_split(&[]), (0, gpu), "GPU decode steps split by default");
        assert_eq!(decode_split(&["--kv-split", "256"]), (256, 256));
        assert_eq!(decode_split(&["--kv-split", "0", "--storage", "bf16"]), (0, 0));
    }
}

/// `--storage bf16`: the tile program stores activations in bf16, a bundle
/// records it in every program's schedule (and re-lowers to bf16 buffers),
/// `exec` on the CPU computes the reference of the rounded inputs; a dtype
/// that is no storage is a usage error naming the choices.
#[test]
fn storage_flag_reaches_programs_bundles_and_exec() {
    let out = mixc(&["compile", "models/gla.toml", "--emit", "tile", "--storage", "bf16"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let tile = text(&out.stdout);
    assert!(tile.contains("bf16 storage") && tile.contains("*bf16"), "{tile}");
    let out = mixc(&["compile", "models/gla.toml", "--emit", "tile"]);
    assert!(!text(&out.stdout).contains("bf16"), "f32 storage by default");
    for bad in [["--storage", "f8"], ["--storage", "i32"]] {
        let out = mixc(&[&["compile", "models/gla.toml", "--emit", "tile"][..], &bad[..]].concat());
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(stderr.contains(bad[1]) && stderr.contains("f32, bf16 or f16"), "{stderr}");
    }
    if cfg!(feature = "llvm") {
        let dir = std::env::temp_dir().join(format!("mixc-cli-storage-bundle-{}", std::process::id()));
        let dir_arg = dir.to_str().unwrap_or_else(|| panic!("temp path is not UTF-8"));
        let out = mixc(&["compile", "models/gla.toml", "--target", "sm_90", "--storage", "bf16", "-o", dir_arg]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let manifest = std::fs::read_to_string(dir.join("manifest.toml")).unwrap_or_default();
        assert_eq!(manifest.matches("storage = \"bf16\"").count(), 2, "prefill and decode: {manifest}");
        let bundle = mixc::bundle::read_bundle(&dir).unwrap_or_else(|e| panic!("{e}"));
        for p in &bundle.programs {
            assert_eq!(p.schedule.storage, mixc::passes::Storage::Bf16, "{} {}", p.mixer, p.mode);
            let q = p.program.buffers.iter().find(|b| b.name == "q").map(|b| b.dtype);
            assert_eq!(q, Some(mixc::ir::DType::BF16), "{} {}", p.mixer, p.mode);
        }
        // Its schedules are fixed: --storage with --kernels is refused.
        let args = ["exec", "models/gla.toml", "--inputs", "/x.safetensors", "-o", "/dev/null", "--target", "cuda"];
        let out = mixc(&[&args[..], &["--kernels", dir_arg, "--storage", "f16"]].concat());
        fails_with(&out, &["--storage", "bundle"]);
        let _ = std::fs::remove_dir_all(&dir);
    }
    // exec on the CPU: the reference of bf16-rounded activations (the states
    // stay f32), `o` within bf16's output rounding.
    let graphs = mixc::graphs_of_file(Path::new(env!("CARGO_MANIFEST_DIR")).join("models/gla.toml").as_path())
        .unwrap_or_else(|e| panic!("{e}"));
    let g = &graphs[0];
    let (inputs, mut reference_in) = write_inputs(&g.graph, 2, 21, 5);
    for (name, t) in reference_in.iter_mut() {
        if ["q", "k", "v", "g"].contains(&name.as_str()) {
            t.data.iter_mut().for_each(|x| *x = mixc::ir::DType::BF16.round(*x));
        }
    }
    let out = TempFile::new("outputs", "safetensors", "");
    let res = mixc(&["exec", "models/gla.toml", "--inputs", inputs.arg(), "-o", out.arg(), "--storage", "bf16"]);
    assert!(res.status.success(), "{}", text(&res.stderr));
    let got = mixc::runtime::st::load(&out.0).unwrap_or_else(|e| panic!("{e}"));
    let want = mixc::ir::interp::run(&g.graph, &reference_in).unwrap_or_else(|e| panic!("{e}"));
    for (name, tol) in [("o", 4e-3), ("final_state", 1e-4)] {
        let (o, w) = (got[name].to_f64(), &want[name]);
        let num: f64 = o.data.iter().zip(&w.data).map(|(a, b)| (a - b) * (a - b)).sum();
        let den: f64 = w.data.iter().map(|b| b * b).sum();
        let err = (num / den).sqrt();
        assert!(err <= tol, "`{name}` relative error {err:e} > {tol:e}");
    }
    let o = got["o"].to_f64();
    assert!(o.data.iter().all(|x| mixc::ir::DType::BF16.round(*x) == *x), "o holds values that are not bf16");
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

/// The last position's logits alone (what generation asks for: the head on
/// one row) are the last row of every position's, and leave the same caches.
#[test]
fn last_logits_are_the_last_row_of_all() {
    use mixc::runner::Logits;
    for model in ["models/gla.toml", "models/llama.toml", "models/hybrid.toml"] {
        let f = Path::new(env!("CARGO_MANIFEST_DIR")).join(model);
        let w = mixc::Model::init_weights(&f, 2).unwrap_or_else(|e| panic!("{e}"));
        let m = mixc::Model::load(&f, w, mixc::jit::Target::Cpu).unwrap_or_else(|e| panic!("{e}"));
        let vocab = m.vocab();
        let ids: Vec<u32> = (0..11).map(|i| (i * 29 + 3) % 200).collect();
        let (mut a, mut b) = (m.new_cache(), m.new_cache());
        let all = m.forward_in_logits(&mut a, &ids, false, Logits::All).unwrap_or_else(|e| panic!("{e}"));
        let last = m.forward_in_logits(&mut b, &ids, false, Logits::Last).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((all.len(), last.len()), (ids.len() * vocab, vocab), "{model}");
        let tail = &all[(ids.len() - 1) * vocab..];
        let err = tail.iter().zip(&last).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
        let scale = tail.iter().map(|x| x.abs()).fold(0.0f32, f32::max);
        assert!(err <= 1e-5 * scale.max(1.0), "{model}: {err} (scale {scale})");
        // The next step from either cache gives the same logits.
        let x = m.forward_in(&mut a, &[7], true).unwrap_or_else(|e| panic!("{e}"));
        let y = m.forward_in(&mut b, &[7], true).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(x, y, "{model}");
    }
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

/// Row-wise relative error `‖a_t − b_t‖ / ‖b_t‖`, the largest over rows of `n`.
fn max_row_rel(a: &[f32], b: &[f32], n: usize) -> f64 {
    a.chunks(n)
        .zip(b.chunks(n))
        .map(|(x, y)| {
            let num: f64 = x.iter().zip(y).map(|(p, q)| ((p - q) as f64).powi(2)).sum();
            let den: f64 = y.iter().map(|q| (*q as f64).powi(2)).sum();
            (num / den).sqrt()
        })
        .fold(0.0, f64::max)
}

/// Logits of the same architecture run by third-party code on the same
/// weights (`tests/golden/hf/*`, written by `bench/gpu/goldens.py` on an H200:
/// flash-linear-attention's GLA and Gated DeltaNet, transformers' Llama, f32)
/// match mixc's CPU path, loading the Hugging Face names through
/// `[weights] names = "hf"`: prefill of the whole prompt, and prefill of part
/// of it followed by decode steps.
#[test]
fn hf_goldens_match_mixc() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/hf");
    for name in ["gla", "gdn", "llama"] {
        let dir = root.join(name);
        let load = |f: &str| mixc::runtime::st::load(&dir.join(f)).unwrap_or_else(|e| panic!("{name}: {e}"));
        let golden = load("golden.safetensors");
        let ids: Vec<u32> = match golden.get("input_ids").map(|t| &t.data) {
            Some(mixc::runtime::Data::I32(v)) => v.iter().map(|x| *x as u32).collect(),
            _ => panic!("{name}: golden has no integer input_ids"),
        };
        let want = match golden.get("logits").map(|t| &t.data) {
            Some(mixc::runtime::Data::F32(v)) => v.clone(),
            _ => panic!("{name}: golden has no logits"),
        };
        let file = dir.join("model.toml");
        let mut m = mixc::Model::load(&file, load("weights.safetensors"), mixc::jit::Target::Cpu)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let vocab = m.vocab();
        let got = m.prefill(&ids).unwrap_or_else(|e| panic!("{name}: {e}"));
        let err = max_row_rel(&got, &want, vocab);
        eprintln!("{name}: prefill of {} tokens, max row-wise relative error {err:.2e}", ids.len());
        assert!(err <= 1e-4, "{name}: prefill logits differ from the third party's by {err:e}");
        m.reset();
        let split = 17;
        let mut got = m.prefill(&ids[..split]).unwrap_or_else(|e| panic!("{name}: {e}"));
        for id in &ids[split..] {
            got.extend(m.decode_step(*id).unwrap_or_else(|e| panic!("{name}: {e}")));
        }
        let err = max_row_rel(&got, &want, vocab);
        eprintln!("{name}: prefill {split} + decode {}, max row-wise relative error {err:.2e}", ids.len() - split);
        assert!(err <= 1e-4, "{name}: prefill + decode logits differ from the third party's by {err:e}");
    }
}

/// A batch of sequences of different lengths, each with its own caches, gives
/// every sequence the logits it gets alone, through prefill and decode: nothing
/// of one reaches another's state, normalizer, convolution tail or KV cache.
#[test]
fn batch_sequences_do_not_leak_into_each_other() {
    let prompts: [&[u32]; 3] = [&[5, 17, 3, 99, 42, 7, 1, 8, 60, 2, 11], &[200, 4], &[31, 32, 33, 34, 35, 36]];
    let steps: [u32; 3] = [9, 77, 150];
    for model in ["models/mlstm.toml", "models/gated-deltanet.toml", "models/swa.toml", "models/llama.toml"] {
        let f = Path::new(env!("CARGO_MANIFEST_DIR")).join(model);
        let w = mixc::Model::init_weights(&f, 5).unwrap_or_else(|e| panic!("{e}"));
        let m = mixc::Model::load(&f, w, mixc::jit::Target::Cpu).unwrap_or_else(|e| panic!("{model}: {e}"));
        let vocab = m.vocab();
        // Each sequence alone.
        let alone: Vec<Vec<f32>> = prompts
            .iter()
            .map(|p| {
                let mut c = m.new_cache();
                let mut l = m.forward_in(&mut c, p, false).unwrap_or_else(|e| panic!("{model}: {e}"));
                for s in steps {
                    l.extend(m.forward_in(&mut c, &[s], true).unwrap_or_else(|e| panic!("{model}: {e}")));
                }
                l
            })
            .collect();
        // All together: prefill each, then decode steps interleaved across the batch.
        let mut caches: Vec<mixc::runner::Cache> = prompts.iter().map(|_| m.new_cache()).collect();
        let mut got = m.forward_batch(&mut caches, &prompts, false).unwrap_or_else(|e| panic!("{model}: {e}"));
        for s in steps {
            let step: Vec<&[u32]> = prompts.iter().map(|_| std::slice::from_ref(&s)).collect();
            let l = m.forward_batch(&mut caches, &step, true).unwrap_or_else(|e| panic!("{model}: {e}"));
            got.iter_mut().zip(l).for_each(|(g, x)| g.extend(x));
        }
        for (b, (x, y)) in got.iter().zip(&alone).enumerate() {
            assert_eq!(x.len(), y.len());
            let err = max_row_rel(x, y, vocab);
            assert!(err <= 1e-6, "{model}: sequence {b} in a batch differs from alone by {err:e}");
        }
        assert_eq!(caches[1].position(), prompts[1].len() + steps.len());
        let err = m.forward_batch(&mut caches[..1], &prompts, false).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("3 sequences") && err.contains("caches"), "{err}");
    }
}

/// `mixc run` with several prompts prints one line of generated ids per
/// prompt, the same as each prompt run alone; prompts come as repeated
/// `--prompt-ids` or separated by `;`, and as text through a tokenizer.
#[test]
fn run_bench_repeats_the_run_and_prices_the_decode_step() {
    let out = mixc(&["run", "models/gla.toml", "--bench", "--bench-runs", "2", "--max-new-tokens", "3"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let s = text(&out.stdout);
    assert!(s.contains("weights made (random)"), "{s}");
    assert!(s.contains("prefill: 64 tokens"), "the default prompt: {s}");
    assert!(s.contains("bench (2 runs after the one above, medians): prefill 64 tokens"), "{s}");
    let line = s.lines().find(|l| l.starts_with("bench: decode")).unwrap_or_else(|| panic!("{s}"));
    // The floor is the model's f32 weights at the profile's bandwidth, a
    // positive time (a tiny model's weights sit in cache: the ratio only has
    // to be a number).
    let times_floor: f64 = line
        .split("× the floor")
        .next()
        .and_then(|t| t.rsplit(": ").next())
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    assert!(times_floor > 0.0 && times_floor.is_finite(), "{line}");
    assert!(line.contains("MB of weights at"), "{line}");
    // The floor with the caches adds the recurrent state, read and written.
    let cache_mb: f64 = line
        .split("with the caches read and written (")
        .nth(1)
        .and_then(|t| t.split(" MB)").next())
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    assert!(cache_mb > 0.0, "GLA carries a state: {line}");
    // Without --bench, weights are required.
    let out = mixc(&["run", "models/gla.toml", "--prompt-ids", "1 2"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("no weights: expected --weights"), "{}", text(&out.stderr));
}

#[test]
fn run_generates_for_a_batch_of_prompts() {
    let w = TempFile::new("batch-w", "safetensors", "");
    let out = mixc(&["init-weights", "models/gla.toml", "-o", w.arg(), "--seed", "2"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let run = |extra: &[&str]| {
        let mut args = vec!["run", "models/gla.toml", "--weights", w.arg(), "--max-new-tokens", "4"];
        args.extend(extra);
        let out = mixc(&args);
        assert!(out.status.success(), "{extra:?}: {}", text(&out.stderr));
        text(&out.stdout)
    };
    let first_line = |s: &str| s.lines().next().unwrap_or_default().to_string();
    let a = first_line(&run(&["--prompt-ids", "1 2 3 4 5"]));
    let b = first_line(&run(&["--prompt-ids", "9 8"]));
    for batch in [run(&["--prompt-ids", "1 2 3 4 5", "--prompt-ids", "9 8"]), run(&["--prompt-ids", "1 2 3 4 5; 9 8"])]
    {
        let lines: Vec<&str> = batch.lines().collect();
        assert_eq!(lines[..2], [a.as_str(), b.as_str()], "{batch}");
        assert!(batch.contains("7 tokens in 2 sequences"), "{batch}");
    }
    assert_eq!(a.split_whitespace().count(), 4);
    // An empty prompt in a batch is named.
    let out = mixc(&["run", "models/gla.toml", "--weights", w.arg(), "--prompt-ids", "1 2;;3"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("prompt 2 is empty"), "{}", text(&out.stderr));
    // --prompt needs --tokenizer.
    let out = mixc(&["run", "models/gla.toml", "--weights", w.arg(), "--prompt", "hello"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    // Text prompts through a word-level tokenizer.json (default feature `tokenizer`).
    if !cfg!(feature = "tokenizer") {
        return;
    }
    let tok = TempFile::new(
        "tokenizer",
        "json",
        r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],"normalizer":null,
            "pre_tokenizer":{"type":"Whitespace"},"post_processor":null,"decoder":null,
            "model":{"type":"WordLevel","vocab":{"[UNK]":0,"one":1,"two":2,"three":3,"four":4,"five":5,"nine":9,"eight":8},
            "unk_token":"[UNK]"}}"#,
    );
    let out = run(&["--tokenizer", tok.arg(), "--prompt", "one two three four five", "--prompt-ids", "9 8"]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[..2], [b.as_str(), a.as_str()], "{out}");
    assert!(lines[2].starts_with("text: ") && lines[3].starts_with("text: "), "{out}");
}

/// Mixers small enough to time in a test: a GLA and causal attention.
const BENCH_MIXERS: &str =
    "[mixer.gla]\nkind = \"gla\"\nheads = 2\ndk = 16\ndv = 16\ngate = { activation = \"none\" }\n\n\
                            [mixer.attn]\nkind = \"attention\"\nheads = 2\nhead_dim = 16\n";

/// A cache folder (`MIXC_HOME`) of one test's own, removed afterwards.
struct TempHome(PathBuf);

impl TempHome {
    fn new(tag: &str) -> TempHome {
        let path = std::env::temp_dir().join(format!("mixc-cli-home-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        TempHome(path)
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_mixc"))
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("MIXC_HOME", &self.0)
            .output()
            .unwrap_or_else(|e| panic!("cannot run mixc: {e}"))
    }
}

impl Drop for TempHome {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn bench_prints_its_table() {
    let file = TempFile::new("bench", "toml", BENCH_MIXERS);
    let out = mixc(&["bench", file.arg(), "--target", "cpu", "--sizes", "B=1,H=2,T=64", "--runs", "1"]);
    let s = text(&out.stdout);
    assert!(out.status.success(), "{}\n{s}", text(&out.stderr));
    for w in ["built in", "kernel ms", "GFLOP/s", "%DRAM", "compile"] {
        assert!(s.contains(w), "does not say {w:?}:\n{s}");
    }
    for (mixer, phase) in [("gla", "prefill"), ("gla", "decode"), ("attn", "prefill"), ("attn", "decode")] {
        assert!(
            // The compile column is a time, or `cached` where the phase runs
            // the kernels another phase already compiled (GLA's step form).
            s.lines()
                .any(|l| l.starts_with(mixer) && l.contains(phase) && (l.contains(" ms ") || l.contains("cached"))),
            "no {mixer} {phase} row:\n{s}"
        );
    }
    assert!(!s.contains("not measured at") && !s.contains("NaN"), "{s}");
    // Another head count rebuilds the mixer; --mode picks the phase.
    let out =
        mixc(&["bench", file.arg(), "--sizes", "B=2,H=4,T=32", "--mode", "decode", "--runs", "1", "--mixer", "gla"]);
    let s = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let rows: Vec<&str> = s.lines().filter(|l| l.starts_with("gla")).collect();
    assert_eq!(rows.len(), 1, "{s}");
    assert!(rows[0].contains("decode") && rows[0].split_whitespace().nth(3) == Some("4"), "{s}");
}

#[test]
fn bench_sweep_marks_the_pick_and_tune_caches_the_winner() {
    let file = TempFile::new("sweep", "toml", BENCH_MIXERS);
    let home = TempHome::new("sweep");
    let args = ["bench", file.arg(), "--sweep", "--sizes", "B=1,H=2,T=64", "--runs", "1", "--mixer", "gla"];
    let out = home.run(&[&args[..], &["--max-candidates", "3", "--tune"]].concat());
    let s = text(&out.stdout);
    assert!(out.status.success(), "{}\n{s}", text(&out.stderr));
    for w in ["sweep at", "predicted ms", "<- pick", "fastest", "pick: ", "tuned: "] {
        assert!(s.contains(w), "does not say {w:?}:\n{s}");
    }
    let measured = s.lines().filter(|l| l.trim_start().starts_with(['1', '2', '3'])).count();
    assert_eq!(measured, 3, "{s}");
    // The winner is cached and used by a later run at the same sizes.
    assert!(home.0.join("tuned.toml").exists());
    let out = home.run(&[
        "bench",
        file.arg(),
        "--sizes",
        "B=1,H=2,T=64",
        "--runs",
        "1",
        "--mode",
        "prefill",
        "--mixer",
        "gla",
    ]);
    assert!(text(&out.stdout).contains("(tuned)"), "{}", text(&out.stdout));
    // A corrupt cache is ignored.
    std::fs::write(home.0.join("tuned.toml"), "[[entry]]\ngraph = 3\nnot toml at all [")
        .unwrap_or_else(|e| panic!("{e}"));
    let out = home.run(&[
        "bench",
        file.arg(),
        "--sizes",
        "B=1,H=2,T=64",
        "--runs",
        "1",
        "--mode",
        "prefill",
        "--mixer",
        "gla",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!text(&out.stdout).contains("(tuned)"), "{}", text(&out.stdout));
}

#[test]
fn bench_rejects_bad_sizes_and_options() {
    let file = TempFile::new("bench-bad", "toml", BENCH_MIXERS);
    for (extra, want) in [
        (vec!["--sizes", "B=one"], "`B=one` is not DIM=N"),
        (vec!["--sizes", "B=1,Q=3"], "unknown dim `Q`"),
        (vec!["--sizes", "T=64,Dk=64"], "Dk is 16 in mixer `gla`"),
        (vec!["--sizes", "T=0"], "T must be at least 1"),
        (vec!["--sizes", "T=4,T=8"], "T is given twice"),
        (vec!["--runs", "0"], "--runs must be at least 1"),
        (vec!["--mixer", "nope"], "no mixer `nope`"),
        (vec!["--threads", "0"], "--threads must be at least 1"),
    ] {
        let out = mixc(&[&["bench", file.arg()][..], &extra].concat());
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{extra:?}: {stderr}");
        assert!(stderr.starts_with("error: ") && stderr.contains(want), "{extra:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    // The targets are cpu and cuda: a GPU architecture is not one (that is `explain`'s).
    let out = mixc(&["bench", file.arg(), "--target", "sm_90"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("cuda"), "{}", text(&out.stderr));
}

/// Exit code 1, no panic, one `error:` line saying each of `words`.
fn fails_with(out: &Output, words: &[&str]) {
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "exit status {:?}, stderr: {stderr}", out.status);
    assert!(!stderr.contains("panicked"), "panicked: {stderr}");
    assert!(stderr.starts_with("error: "), "not an `error:` line: {stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "more than one line: {stderr}");
    for w in words {
        assert!(stderr.contains(w), "does not say {w:?}: {stderr}");
    }
}

/// What `--target cuda` says on this machine when it cannot run: a build
/// without CUDA says how to build one; a CUDA build without a driver says so.
/// `None` where a GPU is present (the GPU paths are checked on the GPU).
fn no_gpu_words() -> Option<&'static [&'static str]> {
    #[cfg(feature = "cuda")]
    {
        if mixc::runtime::cuda::available() {
            return None;
        }
        Some(&["no CUDA driver", "--target cpu"])
    }
    #[cfg(not(feature = "cuda"))]
    {
        Some(&["built without CUDA", "cargo build --release --features cuda"])
    }
}

#[test]
fn cuda_target_without_a_gpu_says_why() {
    let Some(words) = no_gpu_words() else { return };
    let file = TempFile::new("cuda", "toml", BENCH_MIXERS);
    let out = mixc(&[
        "exec",
        "models/gla.toml",
        "--inputs",
        "/nonexistent.safetensors",
        "-o",
        "/dev/null",
        "--target",
        "cuda",
    ]);
    fails_with(&out, words);
    let out = mixc(&["bench", file.arg(), "--target", "cuda", "--mixer", "gla", "--runs", "1"]);
    fails_with(&out, words);
    let out = mixc(&["bench", file.arg(), "--target", "cuda", "--sweep"]);
    fails_with(&out, words);
    let out = mixc(&[
        "run",
        "models/gla.toml",
        "--weights",
        "/nonexistent.safetensors",
        "--prompt-ids",
        "1",
        "--target",
        "cuda",
    ]);
    let stderr = text(&out.stderr);
    assert!(out.status.code() == Some(1) && !stderr.contains("panicked"), "{stderr}");
}

#[test]
fn cuda_options_are_checked_before_the_gpu_is_needed() {
    let file = TempFile::new("cuda-opts", "toml", BENCH_MIXERS);
    let dir = std::env::temp_dir().join(format!("mixc-cli-cuda-bundle-{}", std::process::id()));
    let dir_arg = dir.to_str().unwrap_or_else(|| panic!("temp path is not UTF-8"));
    // --kernels only with --target cuda.
    let out = mixc(&["bench", file.arg(), "--kernels", dir_arg]);
    fails_with(&out, &["--kernels", "--target cuda"]);
    let out = mixc(&[
        "exec",
        "models/gla.toml",
        "--inputs",
        "/nonexistent.safetensors",
        "-o",
        "/dev/null",
        "--kernels",
        dir_arg,
    ]);
    fails_with(&out, &["--kernels", "--target cuda"]);
    // A bundle's schedules are fixed.
    let args = ["exec", "models/gla.toml", "--inputs", "/x.safetensors", "-o", "/dev/null", "--target", "cuda"];
    let out = mixc(&[&args[..], &["--kernels", dir_arg, "--chunk", "32"]].concat());
    fails_with(&out, &["--chunk", "bundle"]);
    // Options that make no sense on a GPU.
    let out = mixc(&["bench", file.arg(), "--target", "cuda", "--threads", "2"]);
    fails_with(&out, &["--threads", "--target cpu"]);
    let out = mixc(&["bench", file.arg(), "--target", "cuda", "--sweep", "--kernels", dir_arg]);
    fails_with(&out, &["--sweep", "--kernels"]);
    // A bundle without the file's mixer is refused, naming what it has (a
    // CUDA build reads the bundle before it opens the GPU).
    if cfg!(feature = "cuda") {
        let graphs = mixc::graphs_of_file(Path::new(env!("CARGO_MANIFEST_DIR")).join("models/retnet.toml").as_path())
            .unwrap_or_else(|e| panic!("{e}"));
        let g = &graphs[0];
        let schedule = mixc::passes::Schedule::decode();
        let program = mixc::lower_graph(&g.name, &g.graph, &schedule).unwrap_or_else(|e| panic!("{e}"));
        let kernels = program
            .kernels
            .iter()
            .map(|k| mixc::bundle::KernelImage {
                name: k.name.clone(),
                code: String::new(),
                threads: 128,
                shared_bytes: 0,
                scratch_bytes: 0,
            })
            .collect();
        let entry = mixc::bundle::BundledProgram {
            mixer: g.name.clone(),
            mode: "decode".into(),
            graph: g.graph.clone(),
            schedule,
            program,
            kernels,
        };
        mixc::bundle::write(&dir, "sm_90", &[entry]).unwrap_or_else(|e| panic!("{e}"));
        let out = mixc(&[&args[..], &["--kernels", dir_arg]].concat());
        fails_with(&out, &["no prefill program for mixer `gla`", &format!("{} decode", g.name), dir_arg]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn help_mentions_the_cuda_target() {
    for cmd in ["exec", "bench"] {
        let out = mixc(&[cmd, "--help"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let help = text(&out.stdout);
        for w in ["cuda", "--kernels", "--features cuda", "mixc compile FILE --target sm_90 -o DIR"] {
            assert!(help.contains(w), "`mixc {cmd} --help` does not mention {w:?}:\n{help}");
        }
    }
}

#[test]
fn calibrate_writes_a_profile_that_explain_and_devices_use() {
    let home = TempHome::new("calibrate");
    let out = home.run(&["calibrate", "--seconds", "0.2"]);
    let s = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    for w in ["GFLOP/s", "128-bit", "GB/s", "copy", "cpu-profile.toml"] {
        assert!(s.contains(w), "does not say {w:?}:\n{s}");
    }
    let src = std::fs::read_to_string(home.0.join("cpu-profile.toml")).unwrap_or_else(|e| panic!("{e}"));
    let p = mixc::passes::device::DeviceProfile::from_toml(&src).unwrap_or_else(|e| panic!("{e}\n{src}"));
    assert_eq!(p.kind, mixc::passes::device::DeviceKind::Cpu);
    assert_eq!(p.name, "cpu-calibrated");
    assert!(p.vector_flops > 1e8 && p.dram_bw > 1e8 && p.units >= 1, "{p:?}");
    // explain and devices use it and say so; --profile builtin opts out.
    let file = TempFile::new("calibrated", "toml", GLA_H16);
    let out = home.run(&["explain", file.arg(), "--target", "cpu", "--top", "1"]);
    let s = text(&out.stdout);
    assert!(s.starts_with("# profile: `cpu-calibrated`") && s.contains("on cpu-calibrated ("), "{s}");
    let out = home.run(&["explain", file.arg(), "--target", "cpu", "--top", "1", "--profile", "builtin"]);
    let s = text(&out.stdout);
    assert!(s.starts_with("# mixer gla on cpu ("), "{s}");
    let s = text(&home.run(&["devices"]).stdout);
    assert!(s.contains("measured on this machine by `mixc calibrate`"), "{s}");
    // A corrupt profile is ignored with a note, never trusted.
    std::fs::write(home.0.join("cpu-profile.toml"), "name = 3\n").unwrap_or_else(|e| panic!("{e}"));
    let out = home.run(&["explain", file.arg(), "--target", "cpu", "--top", "1"]);
    let s = text(&out.stdout);
    assert!(out.status.success() && s.contains("# note: ") && s.contains("# mixer gla on cpu ("), "{s}");
    // -o writes elsewhere.
    let other = home.0.join("elsewhere.toml");
    let out = home.run(&["calibrate", "--seconds", "0.05", "-o", other.to_str().unwrap_or_default()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        mixc::passes::device::DeviceProfile::from_toml(&std::fs::read_to_string(&other).unwrap_or_default()).is_ok()
    );
}

/// `[runtime] kv_cache = "int8"` keeps attention caches as int8 with a scale
/// per group: the memory report shows about a quarter of the f32 bytes, and
/// the logits stay close to those of the f32 cache.
#[test]
fn int8_kv_cache_is_smaller_and_close_to_f32() {
    let base = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("models/llama.toml"))
        .unwrap_or_else(|e| panic!("{e}"));
    let base = base.replace("[runtime]\ndecode_threshold = 1\n", "");
    let f32_file = TempFile::new("kv-f32", "toml", &base);
    let int8_file =
        TempFile::new("kv-int8", "toml", &format!("{base}\n[runtime]\nkv_cache = \"int8\"\nkv_group = 16\n"));
    let w = mixc::Model::init_weights(&f32_file.0, 4).unwrap_or_else(|e| panic!("{e}"));
    let mut runs = Vec::new();
    for file in [&f32_file, &int8_file] {
        let mut m = mixc::Model::load(&file.0, w.clone(), mixc::jit::Target::Cpu).unwrap_or_else(|e| panic!("{e}"));
        let prompt: Vec<u32> = (0..24).map(|i| (i * 29 + 3) % 500).collect();
        m.prefill(&prompt).unwrap_or_else(|e| panic!("{e}"));
        let mut logits = Vec::new();
        for id in [7, 300, 41, 42] {
            logits.extend(m.decode_step(id).unwrap_or_else(|e| panic!("{e}")));
        }
        runs.push((logits, m.cache_bytes()));
    }
    let (ref x, ref bytes_f32) = runs[0];
    let (ref y, ref bytes_i8) = runs[1];
    let err = max_row_rel(y, x, 512);
    eprintln!("int8 KV cache: largest row-wise relative error of the decode logits {err:.2e}");
    assert!(err > 0.0 && err <= 2e-2, "int8 KV cache changes the logits by {err:e}");
    for (a, b) in bytes_f32.iter().zip(bytes_i8) {
        // 28 rows × 2 kv heads × 16 × 2 (k and v): 4 bytes each, or 1 byte + 4 per 16.
        assert_eq!((*a, *b), (28 * 2 * 16 * 2 * 4, 28 * 2 * 16 * 2 * 5 / 4), "{bytes_f32:?} vs {bytes_i8:?}");
    }
    // A group that does not divide the head dim is refused, naming it.
    let bad = TempFile::new("kv-bad", "toml", &format!("{base}\n[runtime]\nkv_cache = \"int8\"\nkv_group = 5\n"));
    let err = mixc::Model::load(&bad.0, w, mixc::jit::Target::Cpu).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("kv_group = 5") && err.contains("k_cache"), "{err}");
}

/// `--emit clif` prints one Cranelift function per kernel of the tile
/// program, and none of them calls anything.
#[test]
fn clif_stage_prints_a_function_per_kernel_without_calls() {
    let file = TempFile::new("clif", "toml", GLA_H16);
    let sched = ["--chunk", "32", "--split"];
    let tile = mixc(&[&["compile", file.arg(), "--emit", "tile"][..], &sched].concat());
    assert!(tile.status.success(), "{}", text(&tile.stderr));
    let kernels: Vec<String> = text(&tile.stdout)
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("kernel ")?.split('(').next().map(str::to_string))
        .collect();
    assert!(kernels.len() >= 2, "{kernels:?}");
    let out = mixc(&[&["compile", file.arg(), "--target", "cpu", "--emit", "clif"][..], &sched].concat());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let s = text(&out.stdout);
    assert_eq!(s.lines().filter(|l| l.starts_with("function ")).count(), kernels.len(), "{s}");
    for k in &kernels {
        assert!(s.contains(&format!("; mixer gla kernel {k}\n")), "no function for kernel `{k}`");
    }
    for l in s.lines().map(str::trim) {
        let call =
            l.contains(" call ") || l.starts_with("call ") || l.contains("call_indirect") || l.contains("return_call");
        assert!(!call, "a call in the generated code: {l}");
    }
    let gpu = mixc(&["compile", file.arg(), "--target", "sm_90", "--emit", "clif"]);
    assert_eq!(gpu.status.code(), Some(1));
    assert!(text(&gpu.stderr).contains("--emit clif"), "{}", text(&gpu.stderr));
}

/// Through a name map, errors name both the mixc tensor and the checkpoint's;
/// a Hugging Face checkpoint loaded without one says which map to use.
#[test]
fn hf_weight_errors_name_the_checkpoint_tensor() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/hf/gdn");
    let weights = mixc::runtime::st::load(&dir.join("weights.safetensors")).unwrap_or_else(|e| panic!("{e}"));
    let load = |file: &Path, w: std::collections::BTreeMap<String, mixc::runtime::HostTensor>| {
        mixc::Model::load(file, w, mixc::jit::Target::Reference).err().map(|e| e.to_string()).unwrap_or_default()
    };
    let file = dir.join("model.toml");
    let mut w = weights.clone();
    if let Some(t) = w.get_mut("model.layers.1.attn.b_proj.weight") {
        t.shape = vec![1, 128];
    }
    let err = load(&file, w);
    assert!(
        err.contains("layers.1.mixer.beta_proj.weight") && err.contains("model.layers.1.attn.b_proj.weight"),
        "{err}"
    );
    let mut w = weights.clone();
    w.remove("model.layers.0.attn.A_log");
    let err = load(&file, w);
    assert!(err.contains("missing tensor `layers.0.mixer.A_log`"), "{err}");
    // The same checkpoint with mixc's own names expected.
    let plain = TempFile::new(
        "gdn-plain",
        "toml",
        &std::fs::read_to_string(&file).unwrap_or_default().replace("[weights]\nnames = \"hf\"\n", ""),
    );
    let err = load(&plain.0, weights);
    assert!(err.contains("missing tensor `embed.weight`") && err.contains("names = \"hf\""), "{err}");
}
