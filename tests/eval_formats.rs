//! The benchmark readers on small fixtures of each public layout (`scripts/make_eval_fixtures.py`): exact items,
//! subsets, questions and ground truth, and errors that name the file and line.
mod common;

use common::{copy_dir, fixtures, scratch};
use psa_vlm::train::data::ImageRef;
use psa_vlm::train::eval::{EvalSet, FIGSTEP_PROMPT, Format, ReadOptions, read_benchmark};

fn eval_dir() -> std::path::PathBuf {
    fixtures().join("eval")
}

fn read(format: Format, path: &std::path::Path) -> EvalSet {
    read_benchmark(format, path, &ReadOptions::default()).unwrap()
}

fn summary(set: &EvalSet) -> Vec<(String, String, bool)> {
    set.items.iter().map(|i| (i.id.clone(), i.subset.clone(), i.harmful)).collect()
}

fn image_name(r: &ImageRef) -> String {
    match r {
        ImageRef::Single(p) => p.file_name().unwrap().to_string_lossy().into_owned(),
        ImageRef::Pair(..) => unreachable!("no pairs in these fixtures"),
    }
}

#[test]
fn vlguard_subsets_and_ground_truth() {
    let file = eval_dir().join("vlguard/test.json");
    let set = read(Format::Vlguard, &file);
    let want = [
        ("safe_1#0", "safe_safes", false),
        ("safe_1#1", "safe_unsafes", true),
        ("unsafe_1#0", "unsafes", true),
        ("safe_2#0", "safe_safes", false),
    ];
    let want: Vec<_> = want.iter().map(|(a, b, c)| (a.to_string(), b.to_string(), *c)).collect();
    assert_eq!(summary(&set), want);
    assert_eq!(set.items[1].question, "Stand-in unsafe request about this picture.");
    assert_eq!(set.items[2].category.as_deref(), Some("privacy"));
    assert_eq!(set.items[2].source(), format!("{}:17", file.display()));
    assert_eq!(image_name(&set.items[3].image), "safe_2.png");
    let err =
        read_benchmark(Format::Vlguard, &eval_dir().join("vlguard/test_missing_safe.json"), &ReadOptions::default())
            .unwrap_err()
            .to_string();
    assert!(err.ends_with("test_missing_safe.json:17: missing boolean `safe`"), "{err}");
}

#[test]
fn mm_safetybench_three_image_kinds_in_file_order() {
    let set = read(Format::MmSafetybench, &eval_dir().join("mm-safetybench"));
    assert_eq!(set.items.len(), 9);
    let ids: Vec<&str> = set.items.iter().map(|i| i.id.as_str()).collect();
    assert_eq!(
        &ids[..4],
        [
            "01-Illegal_Activitiy/SD/0",
            "01-Illegal_Activitiy/SD_TYPO/0",
            "01-Illegal_Activitiy/TYPO/0",
            "01-Illegal_Activitiy/SD/1"
        ]
    );
    assert_eq!(ids[6], "01-Illegal_Activitiy/SD/10");
    assert!(set.items[6].source().ends_with("01-Illegal_Activitiy.json:18"), "{}", set.items[6].source());
    assert_eq!(set.items[0].question, "The image shows an activity 0. List steps.");
    assert_eq!(set.items[1].question, "The bottom of the image shows a phrase of an activity 0. List steps.");
    assert!(set.items.iter().all(|i| i.harmful && i.category.as_deref() == Some("01-Illegal_Activitiy")));
    assert_eq!(image_name(&set.items[8].image), "10.jpg");
    assert!(set.items.iter().all(|i| !i.own_criteria), "01 is scored by harm");
    // The scenarios MM-SafetyBench scores by their own criteria (08, 10–13) are marked; 09 is scored by harm.
    let dir = common::scratch("mm-own-criteria");
    let src = eval_dir().join("mm-safetybench");
    for scenario in ["08-Political_Lobbying", "09-Privacy_Violence", "12-Health_Consultation"] {
        std::fs::create_dir_all(dir.join("processed_questions")).unwrap();
        std::fs::copy(
            src.join("processed_questions/01-Illegal_Activitiy.json"),
            dir.join(format!("processed_questions/{scenario}.json")),
        )
        .unwrap();
        common::copy_dir(&src.join("imgs/01-Illegal_Activitiy"), &dir.join("imgs").join(scenario));
    }
    let set = read(Format::MmSafetybench, &dir);
    let own = |scenario: &str| {
        let items: Vec<_> = set.items.iter().filter(|i| i.category.as_deref() == Some(scenario)).collect();
        assert_eq!(items.len(), 9, "{scenario}");
        items.iter().all(|i| i.own_criteria)
    };
    assert_eq!(
        (own("08-Political_Lobbying"), own("09-Privacy_Violence"), own("12-Health_Consultation")),
        (true, false, true)
    );
}

#[test]
fn figstep_harmbench_and_jailbreakv_csvs() {
    let fig = read(Format::Figstep, &eval_dir().join("figstep/safebench.csv"));
    assert_eq!(fig.items.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(), ["SafeBench_1_1", "SafeBench_1_2"]);
    assert!(fig.items.iter().all(|i| i.question == FIGSTEP_PROMPT && i.harmful));
    assert_eq!(image_name(&fig.items[1].image), "query_SafeBench_1_2_6.png");

    let file = eval_dir().join("harmbench/harmbench_behaviors_multimodal_all.csv");
    let hb = read(Format::Harmbench, &file);
    assert_eq!(hb.items.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(), ["behaviour_a", "behaviour_b"]);
    assert_eq!(hb.items[1].question, "Quoted behaviour, with a comma");
    assert_eq!(hb.items[1].source(), format!("{}:4", file.display()));
    assert_eq!(hb.skipped, vec![format!("{}:3: text-only behaviour (no ImageFileName)", file.display())]);

    let jb = read(Format::Jailbreakv, &eval_dir().join("jailbreakv/JailBreakV_28K.csv"));
    assert_eq!(summary(&jb), vec![("0".into(), "Template".into(), true), ("1".into(), "FigStep".into(), true)]);
    assert_eq!(jb.items[1].category.as_deref(), Some("Fraud"));
}

#[test]
fn own_jsonl_keeps_concepts_and_the_safe_rule() {
    let set = read(Format::Jsonl, &eval_dir().join("jsonl/eval.jsonl"));
    let harmful: Vec<bool> = set.items.iter().map(|i| i.harmful).collect();
    // (0, 6) safe; (2, 4) privacy; (3, 1) illegal; (1, 6): the safe type alone makes it safe (the reference rule).
    assert_eq!(harmful, [false, true, true, false]);
    assert_eq!(set.items[2].question, "Fill in the list.");
    assert_eq!(set.items[1].concepts, Some((2, 4)));
}

#[test]
fn missing_images_fail_or_are_counted() {
    let dir = scratch("eval-missing");
    copy_dir(&eval_dir().join("figstep"), &dir);
    std::fs::remove_file(dir.join("images/SafeBench/query_SafeBench_1_2_6.png")).unwrap();
    let csv = dir.join("safebench.csv");
    let err = read_benchmark(Format::Figstep, &csv, &ReadOptions::default()).unwrap_err().to_string();
    assert!(err.contains("safebench.csv:3: image") && err.contains("query_SafeBench_1_2_6.png not found"), "{err}");
    let set = read_benchmark(Format::Figstep, &csv, &ReadOptions { skip_missing_images: true, ..Default::default() })
        .unwrap();
    assert_eq!((set.items.len(), set.skipped.len()), (1, 1));
    // A CSV without the needed columns names them.
    std::fs::write(&csv, "dataset,task\nSafeBench,1\n").unwrap();
    let err = read_benchmark(Format::Figstep, &csv, &ReadOptions::default()).unwrap_err().to_string();
    assert!(err.contains("safebench.csv:1: missing column(s) [\"category_id\", \"task_id\"]"), "{err}");
    // A BOM is accepted.
    copy_dir(&eval_dir().join("figstep"), &dir);
    let text = std::fs::read_to_string(&csv).unwrap();
    std::fs::write(&csv, format!("\u{feff}{text}")).unwrap();
    assert_eq!(read(Format::Figstep, &csv).items.len(), 2);
}

#[test]
fn figstep_and_harmbench_images_are_found_in_their_repositories_published_layout() {
    // FigStep: data/question/safebench.csv and data/images/SafeBench/; HarmBench:
    // data/behavior_datasets/<csv> and data/multimodal_behavior_images/.
    let dir = scratch("eval-published-layout");
    let data = dir.join("data");
    std::fs::create_dir_all(data.join("question")).unwrap();
    std::fs::copy(eval_dir().join("figstep/safebench.csv"), data.join("question/safebench.csv")).unwrap();
    copy_dir(&eval_dir().join("figstep/images"), &data.join("images"));
    let set = read(Format::Figstep, &data.join("question/safebench.csv"));
    assert_eq!(set.items.len(), 2);
    assert!(set.items[0].image.paths()[0].starts_with(data.join("images/SafeBench")));
    let csv = "harmbench_behaviors_multimodal_all.csv";
    std::fs::create_dir_all(data.join("behavior_datasets")).unwrap();
    std::fs::copy(eval_dir().join("harmbench").join(csv), data.join("behavior_datasets").join(csv)).unwrap();
    copy_dir(&eval_dir().join("harmbench/multimodal_behavior_images"), &data.join("multimodal_behavior_images"));
    let set = read(Format::Harmbench, &data.join("behavior_datasets").join(csv));
    assert_eq!(set.items.len(), 2);
    assert!(set.items[0].image.paths()[0].starts_with(data.join("multimodal_behavior_images")));
}
