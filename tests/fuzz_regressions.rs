//! Replays, on the stable toolchain, what the cargo-fuzz targets in `fuzz/` start from and everything they found:
//! the seeds (`fuzz/seeds/<target>/` and the fixture files listed in `fuzz/seeds.txt`) and every input that once
//! crashed a target or the project (`fuzz/regressions/<target>/`). None may panic, each valid seed must still be
//! accepted, and each past crash, all of them malformed, must be refused.
use std::path::{Path, PathBuf};

use psa_vlm::fuzzing::{TARGETS, run};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Seed directories of a target, from `fuzz/seeds.txt` (`target dir` per line), plus its own seed and regression
/// folders.
fn inputs(target: &str) -> Vec<PathBuf> {
    let listed = std::fs::read_to_string(root().join("fuzz/seeds.txt")).unwrap();
    let mut dirs: Vec<PathBuf> = listed
        .lines()
        .filter_map(|l| l.split_once(' '))
        .filter(|(t, _)| *t == target)
        .map(|(_, dir)| root().join(dir.trim()))
        .collect();
    dirs.push(root().join("fuzz/seeds").join(target));
    dirs.push(root().join("fuzz/regressions").join(target));
    let mut files: Vec<PathBuf> = dirs
        .iter()
        .filter(|d| d.is_dir())
        .flat_map(|d| std::fs::read_dir(d).unwrap().map(|e| e.unwrap().path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

fn accepted(target: &str, file: &Path) -> bool {
    run(target, &std::fs::read(file).unwrap()).unwrap()
}

#[test]
fn every_seed_and_past_crash_replays_without_a_panic() {
    for target in TARGETS {
        let files = inputs(target);
        assert!(!files.is_empty(), "{target} has no inputs");
        let ok = files.iter().filter(|f| accepted(target, f)).count();
        eprintln!("{target}: {} inputs replayed, {ok} accepted", files.len());
    }
    let valid = [
        ("gguf", "fixtures/tiny_gguf/bpe.gguf"),
        ("onnx", "fixtures/tiny_onnx/tiny_focus.onnx"),
        ("safetensors_header", "fixtures/tiny_psa/model/model.safetensors"),
        ("jsonl", "fuzz/seeds/jsonl/both.jsonl"),
        ("policy", "fuzz/seeds/policy/rules.toml"),
        ("policy", "fuzz/seeds/policy/patch.json"),
        ("http_body", "fuzz/seeds/http_body/classify.bin"),
        ("http_body", "fuzz/seeds/http_body/chat.bin"),
    ];
    for (target, file) in valid {
        assert!(accepted(target, &root().join(file)), "{target} refused the valid {file}");
    }
    assert_eq!(run("nothing", b""), None);
}

#[test]
fn every_past_crash_is_now_refused() {
    let mut n = 0;
    for target in TARGETS {
        let dir = root().join("fuzz/regressions").join(target);
        for file in std::fs::read_dir(&dir).into_iter().flatten().map(|e| e.unwrap().path()) {
            assert!(!accepted(target, &file), "{target} accepted the malformed {}", file.display());
            n += 1;
        }
    }
    assert!(n >= 4, "only {n} regression inputs");
}
