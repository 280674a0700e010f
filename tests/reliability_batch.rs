//! `psa batch` loses and duplicates nothing: a request the model fails on is named by `file:line` and id (or
//! skipped) while the rest of its pass is kept, the output is locked against a second run, a last line without
//! its newline is repaired before appending, the input is never the output, and a byte-order mark is accepted.
mod common;

use std::path::{Path, PathBuf};

use common::*;
use psa_vlm::batch::{BatchError, BatchOptions, run_batch};
use psa_vlm::pipeline::GuardedPipeline;
use serde_json::Value;

fn options(p: &GuardedPipeline, dir: &Path, skip_bad: bool) -> BatchOptions {
    BatchOptions {
        batch_size: 4,
        guard: true,
        skip_bad,
        image_root: dir.into(),
        generation: p.generation_config(3),
        progress: false,
    }
}

/// A scratch directory with three images and a request file of `lines` (`{id, image index, question}`).
fn setup(name: &str, lines: &[(&str, usize, &str)]) -> (PathBuf, PathBuf, PathBuf) {
    let dir = scratch(name);
    for i in 0..3 {
        draw(i + 1, i as u64).save(dir.join(format!("{i}.png"))).unwrap();
    }
    let text: Vec<String> = lines
        .iter()
        .map(|(id, image, q)| serde_json::json!({"id": id, "image": format!("{image}.png"), "question": q}).to_string())
        .collect();
    let input = dir.join("requests.jsonl");
    std::fs::write(&input, text.join("\n")).unwrap();
    let output = dir.join("answers.jsonl");
    (dir, input, output)
}

fn output_ids(output: &Path) -> Vec<String> {
    std::fs::read_to_string(output)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("{l:?}: {e}"))["id"].as_str().unwrap().into()
        })
        .collect()
}

#[test]
fn a_request_the_model_fails_on_is_named_and_the_rest_of_its_pass_is_kept() {
    let p = tiny_pipeline("llava_hf");
    // Within the question limit (the 128-token context), too long once the image's tokens join it.
    let long = "tell me more about this picture ".repeat(10);
    let (dir, input, output) =
        setup("batch-long", &[("a", 0, "What is it?"), ("long", 1, &long), ("c", 2, "Colours?")]);
    let err = run_batch(&p, &input, &output, &options(&p, &dir, false)).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, BatchError::Line { line: 2, .. }), "{text}");
    assert!(text.contains("requests.jsonl:2") && text.contains("id \"long\"") && text.contains("exceeds"), "{text}");
    assert_eq!(output_ids(&output), ["a"], "the answer before the failure is kept");

    let report = run_batch(&p, &input, &output, &options(&p, &dir, true)).unwrap();
    assert_eq!((report.already_done, report.answered, report.skipped.len()), (1, 1, 1), "{report:?}");
    assert!(report.skipped[0].contains("requests.jsonl:2 (id \"long\")"), "{:?}", report.skipped);
    assert_eq!(output_ids(&output), ["a", "c"]);
    let again = run_batch(&p, &input, &output, &options(&p, &dir, true)).unwrap();
    assert_eq!((again.already_done, again.answered), (2, 0));
    assert_eq!(output_ids(&output), ["a", "c"], "no duplicates");
}

#[test]
fn a_second_run_on_a_locked_output_is_refused() {
    let p = tiny_pipeline("llava_hf");
    let (dir, input, output) = setup("batch-lock", &[("a", 0, "What is it?")]);
    let holder = std::fs::OpenOptions::new().create(true).append(true).open(&output).unwrap();
    holder.lock().unwrap();
    let err = run_batch(&p, &input, &output, &options(&p, &dir, false)).unwrap_err();
    assert!(matches!(err, BatchError::Locked { .. }) && err.to_string().contains("another run"), "{err}");
    drop(holder);
    run_batch(&p, &input, &output, &options(&p, &dir, false)).unwrap();
    assert_eq!(output_ids(&output), ["a"]);
}

#[test]
fn a_last_line_without_its_newline_is_ended_before_appending() {
    let p = tiny_pipeline("llava_hf");
    let (dir, input, output) = setup("batch-newline", &[("a", 0, "What is it?"), ("b", 1, "Colours?")]);
    run_batch(&p, &input, &output, &options(&p, &dir, false)).unwrap();
    let full = std::fs::read_to_string(&output).unwrap();
    let first = full.lines().next().unwrap();
    std::fs::write(&output, first).unwrap();
    let report = run_batch(&p, &input, &output, &options(&p, &dir, false)).unwrap();
    assert!(report.repaired_output && report.answered == 1, "{report:?}");
    assert_eq!(output_ids(&output), ["a", "b"]);
    assert!(std::fs::read_to_string(&output).unwrap().ends_with('\n'));
}

#[test]
fn the_input_is_never_the_output_and_a_byte_order_mark_is_accepted() {
    let p = tiny_pipeline("llava_hf");
    let (dir, input, output) = setup("batch-same", &[("a", 0, "What is it?")]);
    let before = std::fs::read(&input).unwrap();
    for same in [input.clone(), dir.join(".").join("requests.jsonl")] {
        let err = run_batch(&p, &input, &same, &options(&p, &dir, false)).unwrap_err();
        assert!(matches!(err, BatchError::SameFile { .. }), "{err}");
    }
    assert_eq!(std::fs::read(&input).unwrap(), before, "the input is untouched");

    let mut with_bom = "\u{feff}".as_bytes().to_vec();
    with_bom.extend_from_slice(&before);
    std::fs::write(&input, with_bom).unwrap();
    let report = run_batch(&p, &input, &output, &options(&p, &dir, false)).unwrap();
    assert_eq!(report.answered, 1);
    assert_eq!(output_ids(&output), ["a"]);
}

#[test]
fn a_pass_whose_every_image_is_bad_is_skipped_whole() {
    let p = tiny_pipeline("llava_hf");
    let (dir, input, output) = setup("batch-all-bad", &[("x", 7, "What?"), ("y", 8, "Where?")]);
    let report = run_batch(&p, &input, &output, &options(&p, &dir, true)).unwrap();
    assert_eq!((report.answered, report.skipped.len()), (0, 2), "{report:?}");
    assert!(report.skipped[0].contains("requests.jsonl:1 (id \"x\")") && report.skipped[0].contains("7.png"));
    assert_eq!(std::fs::read_to_string(&output).unwrap(), "");
}

#[test]
fn oversized_questions_special_files_and_paths_outside_the_root_are_skipped_without_reading_them() {
    let p = tiny_pipeline("llava_hf");
    let dir = scratch("batch-hostile");
    let root = dir.join("images");
    std::fs::create_dir_all(&root).unwrap();
    draw(1, 0).save(root.join("ok.png")).unwrap();
    draw(2, 1).save(dir.join("outside.png")).unwrap();
    std::os::unix::fs::symlink(dir.join("outside.png"), root.join("link.png")).unwrap();
    let fifo = root.join("fifo.png");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let huge = "x".repeat(9 << 20);
    let lines = [
        ("a", "ok.png", "What is it?".to_string()),
        ("huge", "ok.png", huge),
        ("zero", "/dev/zero", "What is it?".to_string()),
        ("fifo", "fifo.png", "What is it?".to_string()),
        ("up", "../outside.png", "What is it?".to_string()),
        ("link", "link.png", "What is it?".to_string()),
        ("b", "ok.png", "Colours?".to_string()),
    ];
    let text: Vec<String> = lines
        .iter()
        .map(|(id, image, q)| serde_json::json!({"id": id, "image": image, "question": q}).to_string())
        .collect();
    let input = dir.join("requests.jsonl");
    std::fs::write(&input, text.join("\n")).unwrap();
    let output = dir.join("answers.jsonl");
    let opts = BatchOptions { image_root: root.clone(), ..options(&p, &dir, true) };
    let start = std::time::Instant::now();
    let report = run_batch(&p, &input, &output, &opts).unwrap();
    assert!(start.elapsed() < std::time::Duration::from_secs(60), "took {:?}", start.elapsed());
    assert_eq!(output_ids(&output), ["a", "b"], "{report:?}");
    let reason = |id: &str| report.skipped.iter().find(|s| s.contains(&format!("(id {id:?})"))).cloned().unwrap();
    assert!(reason("huge").contains("9437184 bytes; the limit is 65536"), "{}", reason("huge"));
    assert!(reason("zero").contains("must be relative"), "{}", reason("zero"));
    assert!(reason("fifo").contains("not a regular file"), "{}", reason("fifo"));
    assert!(reason("up").contains("without `..`"), "{}", reason("up"));
    assert!(reason("link").contains("leaves the image root"), "{}", reason("link"));
}
