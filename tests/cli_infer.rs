//! `psa classify`, `psa generate` and `psa batch` on the tiny PSA model: JSON verdicts and answers, `--no-guard`,
//! resumable batches, precise errors for bad input lines.
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;
use serde_json::Value;

/// A taxonomy with short hints (the paper's overflow the tiny model's 128 positions).
fn short_taxonomy(dir: &Path) -> PathBuf {
    let path = dir.join("taxonomy.json");
    std::fs::write(&path, serde_json::to_string(&short_hint_taxonomy()).unwrap()).unwrap();
    path
}

fn psa(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_psa"))
        .args(args)
        .arg("--model-dir")
        .arg(fixtures().join("tiny_psa/model"))
        .arg("--tokenizer")
        .arg(fixtures().join("tiny_tokenizer/tokenizer.json"))
        .args(["--template", "llava_hf", "--taxonomy"])
        .arg(short_taxonomy(dir))
        .output()
        .unwrap()
}

fn json_out(out: &Output) -> Value {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn classify_and_generate_print_json() {
    let dir = scratch("cli-infer");
    let image = dir.join("img.png");
    draw(2, 1).save(&image).unwrap();
    let image = image.to_str().unwrap();
    let verdict = json_out(&psa(&dir, &["classify", "--image", image, "--question", "What is this?"]));
    assert_eq!(verdict["assessment"]["type_probs"].as_array().unwrap().len(), 7);
    assert_eq!(verdict["decision"]["action"], "hint");

    let guarded =
        json_out(&psa(&dir, &["generate", "--image", image, "--question", "What is this?", "--max-new-tokens", "4"]));
    assert_eq!(guarded["prompt"], "USER: <image>\nWhat is this?\nSafe Hint: Mind the risk. ASSISTANT:");
    assert_eq!(guarded["completion_tokens"], 4);
    assert_eq!(guarded["assessment"], verdict["assessment"]);
    let plain = json_out(&psa(
        &dir,
        &["generate", "--image", image, "--question", "What is this?", "--max-new-tokens", "4", "--no-guard"],
    ));
    assert_eq!((plain["guarded"].as_bool(), plain["decision"].is_null()), (Some(false), true));
    assert_eq!(plain["prompt"], "USER: <image>\nWhat is this? ASSISTANT:");

    // `--decode auto` ran the host decoder on this CPU device; the device's own decode gives the same answer, and
    // the Q8_0 host decoder answers too.
    let ask = ["generate", "--image", image, "--question", "What is this?", "--max-new-tokens", "4"];
    let on_device = json_out(&psa(&dir, &[&ask[..], &["--decode", "device"]].concat()));
    assert_eq!(on_device["answer"], guarded["answer"]);
    let q8 = json_out(&psa(&dir, &[&ask[..], &["--decode", "host-q8_0"]].concat()));
    assert_eq!(q8["completion_tokens"], 4);
    let out = psa(&dir, &[&ask[..], &["--decode", "q4"]].concat());
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("host-q8_0"));

    let out = psa(&dir, &["classify", "--image", dir.join("missing.png").to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("missing.png"), "{err}");
}

#[test]
fn batch_resumes_and_names_bad_lines() {
    let dir = scratch("cli-batch");
    for (i, class) in [0usize, 2, 3, 4].iter().enumerate() {
        draw(*class, i as u64).save(dir.join(format!("{i}.png"))).unwrap();
    }
    let lines = [
        r#"{"id": "a", "image": "0.png", "question": "What is this?"}"#,
        r#"{"id": "b", "image": "1.png", "question": "Describe it.", "policy": {"default_action": "refuse", "refusal": "No."}}"#,
        r#"{"id": "c", "image": "gone.png", "question": "What?"}"#,
        r#"{"id": "d", "image": "2.png", "question": "Colours?"}"#,
        r#"{"id": "e", "image": "3.png", "question": "Shapes?"}"#,
    ];
    let input = dir.join("requests.jsonl");
    let output = dir.join("answers.jsonl");
    let batch = |extra: &[&str]| {
        let mut args = vec!["batch", "--input", input.to_str().unwrap(), "--output", output.to_str().unwrap()];
        args.extend(["--batch-size", "2", "--max-new-tokens", "3", "--quiet"]);
        args.extend(extra);
        psa(&dir, &args)
    };
    // First run: two requests.
    std::fs::write(&input, lines[..2].join("\n")).unwrap();
    let first = json_out(&batch(&[]));
    assert_eq!((first["answered"].as_u64(), first["already_done"].as_u64()), (Some(2), Some(0)));
    let before = std::fs::read_to_string(&output).unwrap();
    let answers: Vec<Value> = before.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(answers[1]["answer"], "No.", "per-line policy");
    assert_eq!(answers[1]["finish"], "refused");

    // Interrupted mid-write: a torn line. The full input then resumes, skipping a and b.
    std::fs::write(&output, format!("{before}{{\"id\": \"d\", \"answ")).unwrap();
    std::fs::write(&input, lines.join("\n")).unwrap();
    let out = batch(&[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("requests.jsonl:3") && err.contains("gone.png"), "{err}");
    let second = json_out(&batch(&["--skip-bad-images"]));
    assert_eq!(second["already_done"], 2);
    assert_eq!(second["answered"], 2);
    assert_eq!(second["skipped"].as_array().unwrap().len(), 1);
    let after = std::fs::read_to_string(&output).unwrap();
    assert!(after.starts_with(&before), "earlier answers untouched");
    let ids: Vec<String> =
        after.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()["id"].as_str().unwrap().into()).collect();
    assert_eq!(ids, ["a", "b", "d", "e"]);

    std::fs::write(&input, format!("{}\n{{\"id\": \"f\", \"image\": 3}}\n", lines[0])).unwrap();
    let out = batch(&[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("requests.jsonl:2:"), "{err}");
}
