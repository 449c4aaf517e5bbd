//! Snapshots of the printed graph of every mixer in the model zoo. A change to a
//! builder or to the printer shows up here as a diff (`cargo insta review`).

use mixc_ir::{mixers, model, text};
use std::path::PathBuf;

#[test]
fn every_zoo_mixer_prints_as_its_snapshot() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("models/ exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    assert!(files.len() >= 13, "the zoo should have a file per mixer family");
    for path in files {
        let file = model::load_model(&path).unwrap_or_else(|e| panic!("{e}"));
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("model").to_string();
        for name in file.distinct_mixers() {
            let g = mixers::build(&name, &file.mixer[&name]).unwrap_or_else(|e| panic!("{e}"));
            insta::assert_snapshot!(format!("{stem}__{name}"), text::print(&g));
        }
    }
}
