//! Model files: every zoo file loads; every kind of bad input gives an error
//! that names the file, line and key.

use mixc_ir::model::{load_model, parse_model, ModelError, ModelFile};
use std::path::{Path, PathBuf};

fn models_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("models")
}

fn toml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    files
}

fn parse(src: &str) -> Result<ModelFile, ModelError> {
    parse_model(src, "test.toml")
}

#[test]
fn every_zoo_file_loads_and_validates() {
    let dir = models_dir();
    let mut files = toml_files(&dir);
    files.extend(toml_files(&dir.join("bench")));
    assert!(files.len() >= 16, "expected the whole zoo, found {files:?}");
    let mut failures = Vec::new();
    for f in &files {
        match load_model(f) {
            Ok(m) => {
                if m.distinct_mixers().is_empty() {
                    failures.push(format!("{}: no mixers in use", f.display()));
                }
            }
            Err(e) => failures.push(e.to_string()),
        }
    }
    assert!(failures.is_empty(), "zoo files that do not load:\n{}", failures.join("\n"));
}

#[test]
fn zoo_covers_every_mixer_kind() {
    use mixc_ir::model::MixerKind;
    let mut seen = Vec::new();
    for f in toml_files(&models_dir()) {
        let m = load_model(&f).unwrap_or_else(|e| panic!("{e}"));
        seen.extend(m.mixer.values().map(|c| c.kind));
    }
    for kind in MixerKind::ALL {
        assert!(seen.contains(&kind), "no zoo file uses kind `{}`", kind.name());
    }
}

#[test]
fn layer_mixers_repeat_the_pattern_then_apply_overrides() {
    let m = load_model(&models_dir().join("hybrid.toml")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(m.layer_mixers(), ["swa", "gla", "gla", "attn"]);
    assert_eq!(m.distinct_mixers(), ["swa", "gla", "attn"]);

    let src = r#"
[model]
vocab = 8
d_model = 8
layers = 5
pattern = ["b", "a"]
overrides = { 3 = "c", 1 = "b" }
[mixer.a]
kind = "retnet"
heads = 1
dk = 4
dv = 4
[mixer.b]
kind = "retnet"
heads = 1
dk = 4
dv = 4
[mixer.c]
kind = "retnet"
heads = 1
dk = 4
dv = 4
[mixer.unused]
kind = "retnet"
heads = 1
dk = 4
dv = 4
"#;
    let m = parse(src).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(m.layer_mixers(), ["b", "b", "b", "c", "b"]);
    // `a` is overridden everywhere it would appear; `unused` is never used.
    assert_eq!(m.distinct_mixers(), ["b", "c"]);
}

#[test]
fn mixer_only_files_describe_all_their_mixers_in_name_order() {
    let m = load_model(&models_dir().join("linear-attn.toml")).unwrap_or_else(|e| panic!("{e}"));
    assert!(m.model.is_none());
    assert!(m.layer_mixers().is_empty());
    assert_eq!(m.distinct_mixers(), ["normalized", "plain"]);
}

const GLA_OK: &str = r#"[mixer.gla]
kind = "gla"
heads = 4
dk = 16
dv = 16
gate = { activation = "logsigmoid", tau = 16.0 }
"#;

/// A bad input, what its error must say, and where.
struct Case {
    name: &'static str,
    src: String,
    /// The variant: "syntax", "schema" or "invalid".
    class: &'static str,
    /// The key path the error must name, if any.
    key: Option<&'static str>,
    /// The line the error must name.
    line: usize,
    /// Words the message must contain.
    says: &'static [&'static str],
}

fn case(
    name: &'static str,
    src: &str,
    class: &'static str,
    key: Option<&'static str>,
    line: usize,
    says: &'static [&'static str],
) -> Case {
    Case { name, src: src.to_string(), class, key, line, says }
}

/// GLA_OK with one line replaced or added (`key = value`).
fn gla_with(line: &str) -> String {
    let key = line.split('=').next().unwrap_or("").trim();
    let mut out = String::new();
    let mut replaced = false;
    for l in GLA_OK.lines() {
        if l.split('=').next().unwrap_or("").trim() == key {
            out.push_str(line);
            replaced = true;
        } else {
            out.push_str(l);
        }
        out.push('\n');
    }
    if !replaced {
        out.push_str(line);
        out.push('\n');
    }
    out
}

fn attn(extra: &str) -> String {
    format!("[mixer.a]\nkind = \"attention\"\nheads = 4\nhead_dim = 8\n{extra}\n")
}

fn mom(extra: &str) -> String {
    format!("[mixer.m]\nkind = \"mom\"\nheads = 2\ndk = 8\ndv = 8\n{extra}\n")
}

fn model(extra: &str) -> String {
    format!(
        "[model]\nvocab = 16\nd_model = 16\nlayers = 2\n{extra}\n\n[mixer.gla]\nkind = \
         \"retnet\"\nheads = 2\ndk = 8\ndv = 8\n"
    )
}

fn bad_cases() -> Vec<Case> {
    vec![
        case("syntax", "[mixer.gla]\nkind = \"gla\"\nheads = = 4\n", "syntax", None, 3, &[]),
        case("unclosed header", "\n[mixer.gla\n", "syntax", None, 2, &["table header"]),
        case(
            "unknown key",
            &gla_with("windw = 3"),
            "schema",
            Some("mixer.gla.windw"),
            7,
            &["unknown key `windw` in a `gla` mixer", "expected one of", "`gate`"],
        ),
        case(
            "unknown key in inline table",
            &gla_with("gate = { activation = \"logsigmoid\", tua = 16.0 }"),
            "schema",
            Some("mixer.gla.gate.tua"),
            6,
            &["unknown key `tua`"],
        ),
        case(
            "unknown top-level table",
            "[mixers.gla]\nkind = \"gla\"\n",
            "schema",
            Some("mixers"),
            1,
            &["unknown key `mixers`"],
        ),
        case(
            "unknown kind",
            &gla_with("kind = \"glaa\""),
            "schema",
            Some("mixer.gla.kind"),
            2,
            &["unknown mixer kind `glaa`", "`gla`"],
        ),
        case(
            "wrong type",
            &gla_with("heads = \"four\""),
            "schema",
            Some("mixer.gla.heads"),
            3,
            &["expected a whole number"],
        ),
        case(
            "negative",
            &gla_with("dk = -16"),
            "schema",
            Some("mixer.gla.dk"),
            4,
            &["-16"],
        ),
        case(
            "missing heads",
            "[mixer.gla]\nkind = \"gla\"\n",
            "schema",
            Some("mixer.gla"),
            1,
            &["missing required key `heads`"],
        ),
        case(
            "bad chunk word",
            &gla_with("chunk = \"fast\""),
            "schema",
            Some("mixer.gla.chunk"),
            7,
            &["\"auto\""],
        ),
        case(
            "missing dk",
            "[mixer.gla]\nkind = \"gla\"\nheads = 4\ndv = 16\ngate = { activation = \"logsigmoid\" }\n",
            "invalid",
            Some("mixer.gla.dk"),
            1,
            &["needs `dk`"],
        ),
        case("heads 0", &gla_with("heads = 0"), "invalid", Some("mixer.gla.heads"), 3, &["≥ 1"]),
        case("dv 0", &gla_with("dv = 0"), "invalid", Some("mixer.gla.dv"), 5, &["≥ 1"]),
        case(
            "window on gla",
            &gla_with("window = 4"),
            "invalid",
            Some("mixer.gla.window"),
            7,
            &["does not apply to a `gla` mixer", "accepts", "`dk`", "`gate`"],
        ),
        case(
            "head_dim on gla",
            &gla_with("head_dim = 4"),
            "invalid",
            Some("mixer.gla.head_dim"),
            7,
            &["does not apply"],
        ),
        case(
            "chunk not a power of two",
            &gla_with("chunk = 48"),
            "invalid",
            Some("mixer.gla.chunk"),
            7,
            &["power of two"],
        ),
        case("chunk too big", &gla_with("chunk = 512"), "invalid", Some("mixer.gla.chunk"), 7, &["256"]),
        case(
            "tau 0",
            &gla_with("gate = { activation = \"logsigmoid\", tau = 0.0 }"),
            "invalid",
            Some("mixer.gla.gate.tau"),
            6,
            &["> 0"],
        ),
        case(
            "tau with mamba",
            &gla_with("gate = { activation = \"mamba\", tau = 2.0 }"),
            "invalid",
            Some("mixer.gla.gate.tau"),
            6,
            &["logsigmoid"],
        ),
        case(
            "gate from y",
            &gla_with("gate = { activation = \"logsigmoid\", from = \"y\" }"),
            "invalid",
            Some("mixer.gla.gate.from"),
            6,
            &["\"x\"", "\"k\""],
        ),
        case("scale nan", &gla_with("scale = nan"), "invalid", Some("mixer.gla.scale"), 7, &["finite"]),
        case("scale negative", &gla_with("scale = -1.0"), "invalid", Some("mixer.gla.scale"), 7, &["> 0"]),
        case("short conv 0", &gla_with("short_conv = 0"), "invalid", Some("mixer.gla.short_conv"), 7, &["≥ 1"]),
        case(
            "kv_heads not dividing",
            &attn("kv_heads = 3"),
            "invalid",
            Some("mixer.a.kv_heads"),
            5,
            &["does not divide heads = 4"],
        ),
        case("kv_heads 0", &attn("kv_heads = 0"), "invalid", Some("mixer.a.kv_heads"), 5, &["≥ 1"]),
        case("window 0", &attn("window = 0"), "invalid", Some("mixer.a.window"), 5, &["window = 0", "≥ 1"]),
        case("sinks without window", &attn("sinks = 4"), "invalid", Some("mixer.a.sinks"), 5, &["window"]),
        case(
            "attention without head_dim",
            "[mixer.a]\nkind = \"attention\"\nheads = 4\n",
            "invalid",
            Some("mixer.a.head_dim"),
            1,
            &["needs `head_dim`"],
        ),
        case(
            "dk on attention",
            &attn("dk = 8"),
            "invalid",
            Some("mixer.a.dk"),
            5,
            &["does not apply to a `attention` mixer", "`head_dim`"],
        ),
        case(
            "top_k > memories",
            &mom("memories = 2\ntop_k = 3"),
            "invalid",
            Some("mixer.m.top_k"),
            7,
            &["top_k = 3", "2 memories"],
        ),
        case("top_k 0", &mom("memories = 2\ntop_k = 0"), "invalid", Some("mixer.m.top_k"), 7, &["top_k = 0"]),
        case("memories 0", &mom("memories = 0\ntop_k = 0"), "invalid", Some("mixer.m.memories"), 6, &["≥ 1"]),
        case(
            "mom gated memory without gate",
            &mom("memories = 4\ntop_k = 2\nmemory = \"gated_deltanet\""),
            "invalid",
            Some("mixer.m.gate"),
            1,
            &["gate"],
        ),
        case(
            "mix count",
            "[mixer.l]\nkind = \"liger\"\nheads = 2\nhead_dim = 8\nwindow = 8\nmix = [0.5, 0.3, 0.2]\n",
            "invalid",
            Some("mixer.l.mix"),
            6,
            &["3 weight", "expected 2"],
        ),
        case(
            "mix with shared combine",
            "[mixer.l]\nkind = \"lizard\"\nheads = 2\nhead_dim = 8\nwindow = 8\ncombine = \"shared\"\nmix = [0.5, 0.5]\n",
            "invalid",
            Some("mixer.l.mix"),
            7,
            &["shared"],
        ),
        case(
            "retrieval head out of range",
            "[mixer.d]\nkind = \"duo\"\nheads = 4\nkv_heads = 2\nhead_dim = 8\nwindow = 8\nretrieval_heads = [0, 2]\n",
            "invalid",
            Some("mixer.d.retrieval_heads[1]"),
            7,
            &["retrieval head 2", "0 to 1"],
        ),
        case(
            "mixer name not an identifier",
            "[mixer.\"my mixer\"]\nkind = \"retnet\"\nheads = 1\ndk = 4\ndv = 4\n",
            "invalid",
            Some("mixer.\"my mixer\""),
            1,
            &["identifier"],
        ),
        case("no mixers", "[runtime]\nstate_dtype = \"f32\"\n", "invalid", Some("mixer"), 0, &["no mixer"]),
        case(
            "undefined mixer in pattern",
            &model("pattern = [\"gla\", \"swa\"]"),
            "invalid",
            Some("model.pattern[1]"),
            5,
            &["`swa`", "does not define", "`gla`"],
        ),
        case("empty pattern", &model("pattern = []"), "invalid", Some("model.pattern"), 5, &["empty"]),
        case(
            "override index out of range",
            &model("pattern = [\"gla\"]\noverrides = { 2 = \"gla\" }"),
            "invalid",
            Some("model.overrides.2"),
            6,
            &["layer 2", "2 layers", "0 to 1"],
        ),
        case(
            "override key not a number",
            &model("pattern = [\"gla\"]\noverrides = { first = \"gla\" }"),
            "invalid",
            Some("model.overrides.first"),
            6,
            &["not a layer index"],
        ),
        case(
            "undefined mixer in override",
            &model("pattern = [\"gla\"]\noverrides = { 1 = \"attn\" }"),
            "invalid",
            Some("model.overrides.1"),
            6,
            &["`attn`"],
        ),
        case("layers 0", &model("pattern = [\"gla\"]").replace("layers = 2", "layers = 0"), "invalid", Some("model.layers"), 4, &["≥ 1"]),
        case(
            "too many layers",
            &model("pattern = [\"gla\"]").replace("layers = 2", "layers = 4000000000"),
            "invalid",
            Some("model.layers"),
            4,
            &["at most"],
        ),
        case(
            "bad state dtype",
            &format!("{GLA_OK}\n[runtime]\nstate_dtype = \"f64\"\n"),
            "invalid",
            Some("runtime.state_dtype"),
            9,
            &["`f64`", "`bf16`"],
        ),
        case(
            "decode threshold 0",
            &format!("{GLA_OK}\n[runtime]\ndecode_threshold = 0\n"),
            "invalid",
            Some("runtime.decode_threshold"),
            9,
            &["≥ 1"],
        ),
    ]
}

#[test]
fn bad_inputs_name_their_place() {
    // The base cases are valid.
    for ok in [GLA_OK.to_string(), attn(""), mom("memories = 4\ntop_k = 2"), model("pattern = [\"gla\"]")] {
        if let Err(e) = parse(&ok) {
            panic!("base case does not parse: {e}\n{ok}");
        }
    }
    let mut failures = Vec::new();
    for c in bad_cases() {
        let e = match parse(&c.src) {
            Ok(_) => {
                failures.push(format!("{}: accepted", c.name));
                continue;
            }
            Err(e) => e,
        };
        let class = match &e {
            ModelError::Syntax { .. } => "syntax",
            ModelError::Schema { .. } => "schema",
            ModelError::Invalid { .. } => "invalid",
            ModelError::Io { .. } => "io",
        };
        let text = e.to_string();
        let mut wrong = Vec::new();
        if class != c.class {
            wrong.push(format!("class {class}, expected {}", c.class));
        }
        if text.contains('\n') {
            wrong.push("more than one line".to_string());
        }
        if !text.starts_with("test.toml") {
            wrong.push("does not start with the file name".to_string());
        }
        let place = e.place().cloned();
        let key = place.as_ref().and_then(|p| p.key.clone());
        if key.as_deref() != c.key {
            wrong.push(format!("key {key:?}, expected {:?}", c.key));
        }
        let line = place.as_ref().and_then(|p| p.line_col).map_or(0, |(l, _)| l);
        if line != c.line {
            wrong.push(format!("line {line}, expected {}", c.line));
        }
        if c.line > 0 && !text.contains(&format!("test.toml:{}:", c.line)) {
            wrong.push("the text does not name the line".to_string());
        }
        if let Some(k) = c.key {
            if !text.contains(&format!("`{k}`")) {
                wrong.push("the text does not name the key".to_string());
            }
        }
        for word in c.says {
            if !text.contains(word) {
                wrong.push(format!("does not say {word:?}"));
            }
        }
        if !wrong.is_empty() {
            failures.push(format!("{}: {}\n    got: {text}", c.name, wrong.join("; ")));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn columns_count_characters() {
    let e = parse("[mixer.gla]\nkind = \"gla\"\nheads = 4\ndk = 16\ndv = 16\n  gate = { activation = \"logsigmoid\", tau = -1.0 }\n")
        .err()
        .unwrap_or_else(|| panic!("accepted"));
    let at = e.place().cloned().unwrap_or_else(|| panic!("no place"));
    // The value `-1.0` starts at column 45 of line 6.
    assert_eq!(at.line_col, Some((6, 45)), "{e}");
}

#[test]
fn missing_file_names_the_path() {
    let path = std::env::temp_dir().join("mixc-no-such-model-file.toml");
    let e = load_model(&path).err().unwrap_or_else(|| panic!("accepted"));
    assert!(matches!(e, ModelError::Io { .. }), "{e}");
    assert!(e.to_string().contains("mixc-no-such-model-file.toml"), "{e}");
}

#[test]
fn validate_checks_a_parsed_file_separately() {
    // `validate` works on a file that came from elsewhere (here, plain serde).
    let src = attn("window = 0");
    let file: ModelFile = toml::from_str(&src).unwrap_or_else(|e| panic!("{e}"));
    let e = mixc_ir::model::validate(&file, &src, "x.toml").err().unwrap_or_else(|| panic!("accepted"));
    assert!(e.to_string().starts_with("x.toml:5:"), "{e}");
}
