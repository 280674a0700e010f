//! Stage II: LoRA on the tiny PSA model's LLM lowers the LM loss while only adapter weights move; adapters
//! round-trip through the PEFT layout and merge into the base weights.
mod common;

use common::*;
use psa_vlm::burn::module::Module;
use psa_vlm::burn::tensor::Device;
use psa_vlm::import::{LoadOptions, load_peft_adapter, load_psa, save_peft_adapter};
use psa_vlm::models::lora::{LoraConfig, LoraTargets};
use psa_vlm::train::Recipe;
use psa_vlm::train::trainer::{RunOptions, train_stage2};

/// Flex seeds one process-wide RNG: tests that depend on seeded draws must not interleave.
static RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn lora_stage2_trains_only_adapters_and_round_trips_through_peft() {
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let dir = scratch("stage2");
    let file = dataset(&dir, "s2", 8, 11);
    let device = Device::flex().autodiff();
    device.seed(3);
    let (model, _, _) = load_psa(&fixtures().join("tiny_psa/model"), &device, &LoadOptions::default()).unwrap();
    let (data, _) = prepare_file(&model, &file, &dir, false, &device).unwrap();
    let before = snapshot(&model);

    let lora = LoraConfig {
        r: 4,
        lora_alpha: 8.0,
        lora_dropout: 0.0,
        target_modules: LoraTargets::AllLinear("all-linear".into()),
    };
    let recipe = Recipe { lr: 1e-2, warmup_steps: 2, epochs: 12, batch_size: 8, grad_accum: 1, ..Recipe::stage2() };
    let (model, metrics) = train_stage2(model, &lora, &data, &recipe, 998, &Default::default(), |_| {}).unwrap();
    let first = metrics[..2].iter().map(|m| m.lm_loss).sum::<f64>() / 2.0;
    let last = metrics[metrics.len() - 2..].iter().map(|m| m.lm_loss).sum::<f64>() / 2.0;
    eprintln!("stage II: {} steps, LM loss {first:.3} → {last:.3}", metrics.len());
    assert!(last < 0.5 * first, "LM loss {first} → {last}");
    assert!(metrics.iter().all(|m| m.ce_level == 0.0 && m.ce_type == 0.0), "no concept loss in stage II");

    let after = snapshot(&model);
    for (name, old) in &before {
        assert_eq!(old, &after[name], "non-LoRA tensor {name} changed");
    }
    let adapters: Vec<&String> = after.keys().filter(|k| k.contains(".lora.")).collect();
    assert_eq!(adapters.len(), 2 * 7 * 2, "2 layers × 7 projections × (A, B)");
    assert!(adapters.iter().all(|k| !k.contains("lm_head")));
    assert!(
        adapters.iter().filter(|k| k.contains("lora_b")).all(|k| after[*k].iter().any(|&v| v != 0.0)),
        "every B moved"
    );

    // PEFT round trip.
    let out = dir.join("adapter");
    save_peft_adapter(&model.llava.language_model, &lora, true, &out).unwrap();
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(
        (cfg["r"].as_u64(), cfg["lora_alpha"].as_f64(), cfg["peft_type"].as_str()),
        (Some(4), Some(8.0), Some("LORA"))
    );
    let keys = read_fixture(&out.join("adapter_model.safetensors"));
    let a = &keys["base_model.model.language_model.model.layers.0.self_attn.q_proj.lora_A.weight"];
    let b = &keys["base_model.model.language_model.model.layers.1.mlp.down_proj.lora_B.weight"];
    assert_eq!((a.shape.clone(), b.shape.clone()), (vec![4, 64], vec![64, 4]));
    assert_eq!(keys.len(), 28);

    let plain = Device::flex();
    let (fresh, _, _) = load_psa(&fixtures().join("tiny_psa/model"), &plain, &LoadOptions::default()).unwrap();
    let (lm, loaded_cfg, _) = load_peft_adapter(fresh.llava.language_model, &out, true, &plain).unwrap();
    assert_eq!(loaded_cfg.target_modules.names().len(), 7);
    let ids = vec![vec![1u32, 40, 41, 42, 43, 44, 45]];
    let trained = model.llava.language_model.valid();
    let want = host(trained.forward(&ids, None, &device.clone().without_autodiff()));
    let got = host(lm.forward(&ids, None, &plain));
    let diff = max_abs_diff("want.1 vs got.1", &want.1, &got.1);
    assert!(diff < 1e-6, "PEFT reload changes logits by {diff:e}");
    let merged = host(lm.merge_lora().forward(&ids, None, &plain));
    let diff = max_abs_diff("got.1 vs merged.1", &got.1, &merged.1);
    eprintln!("merge: max |Δlogits| {diff:.2e}");
    assert!(diff < 1e-4, "merged weights change logits by {diff:e}");

    // A reference-style adapter with an lm_head entry is refused by name.
    edit_safetensors_header(&out.join("adapter_model.safetensors"), |h, len| {
        h.insert(
            "base_model.model.language_model.lm_head.lora_A.weight".into(),
            serde_json::json!({"dtype": "F32", "shape": [4, 64], "data_offsets": [len, len + 1024]}),
        );
        vec![0u8; 1024]
    });
    let (fresh, _, _) = load_psa(&fixtures().join("tiny_psa/model"), &plain, &LoadOptions::default()).unwrap();
    let err = load_peft_adapter(fresh.llava.language_model, &out, true, &plain).unwrap_err().to_string();
    assert!(err.contains("lm_head.lora_A.weight"), "{err}");
}

#[test]
fn stage2_with_lora_dropout_resumes_exactly() {
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let dir = scratch("stage2-resume");
    let file = dataset(&dir, "s2r", 3, 17);
    let device = Device::flex().autodiff();
    let load = || {
        device.seed(5);
        load_psa(&fixtures().join("tiny_psa/model"), &device, &LoadOptions::default()).unwrap().0
    };
    let model = load();
    let (data, _) = prepare_file(&model, &file, &dir, false, &device).unwrap();
    let lora = LoraConfig {
        r: 4,
        lora_alpha: 8.0,
        lora_dropout: 0.2,
        target_modules: LoraTargets::AllLinear("all-linear".into()),
    };
    // 15 samples, batch 4, accumulation 2: 2 steps per epoch, 3 epochs = 6 steps; interrupt after 3 (mid-epoch).
    let recipe = Recipe { lr: 5e-3, warmup_steps: 1, epochs: 3, batch_size: 4, grad_accum: 2, ..Recipe::stage2() };
    let (full, full_metrics) = train_stage2(model, &lora, &data, &recipe, 998, &RunOptions::default(), |_| {}).unwrap();
    assert_eq!(full_metrics.len(), 6);
    let ckpt = dir.join("ckpt");
    let first = RunOptions { checkpoint_dir: Some(ckpt.clone()), checkpoint_every: Some(3), ..Default::default() };
    let (_, part1) =
        train_stage2(load(), &lora, &data, &recipe, 998, &RunOptions { max_steps: Some(3), ..first }, |_| {}).unwrap();
    let stored = read_fixture(&ckpt.join("checkpoint-3/trainable.safetensors"));
    assert!(!stored.is_empty() && stored.keys().all(|k| k.contains(".lora.")), "only adapters are checkpointed");
    let resume = RunOptions { resume_from: Some(ckpt.join("checkpoint-3")), ..Default::default() };
    // A differently seeded fresh adapter: the checkpoint must replace it.
    device.seed(1234);
    let fresh = load_psa(&fixtures().join("tiny_psa/model"), &device, &LoadOptions::default()).unwrap().0;
    let (resumed, part2) = train_stage2(fresh, &lora, &data, &recipe, 998, &resume, |_| {}).unwrap();
    for (a, b) in full_metrics.iter().zip(part1.iter().chain(&part2)) {
        assert_eq!((a.step, a.lr, a.loss), (b.step, b.lr, b.loss), "step {} differs after resume", a.step);
    }
    assert_eq!(snapshot(&full), snapshot(&resumed), "final weights differ");
    // Dropout is live: the same run without it takes other steps.
    let no_dropout = LoraConfig { lora_dropout: 0.0, ..lora };
    let (_, plain) = train_stage2(load(), &no_dropout, &data, &recipe, 998, &RunOptions::default(), |_| {}).unwrap();
    assert_ne!(plain[5].loss, full_metrics[5].loss, "dropout had no effect");
}

#[test]
fn stage2_on_a_bf16_base_trains_f32_adapters_with_checkpointing() {
    use psa_vlm::burn::tensor::DType;
    use psa_vlm::models::Precision;
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let dir = scratch("stage2-bf16");
    let file = dataset(&dir, "s2h", 8, 11);
    let device = Device::flex().autodiff();
    device.seed(3);
    let opts = LoadOptions::default().with_precision(Precision::Bf16);
    let (model, _, _) = load_psa(&fixtures().join("tiny_psa/model"), &device, &opts).unwrap();
    let (data, _) = prepare_file(&model, &file, &dir, false, &device).unwrap();
    let before = snapshot(&model);
    let lora = LoraConfig {
        r: 4,
        lora_alpha: 8.0,
        lora_dropout: 0.05,
        target_modules: LoraTargets::AllLinear("all-linear".into()),
    };
    let recipe = Recipe { lr: 1e-2, warmup_steps: 2, epochs: 12, batch_size: 8, grad_accum: 1, ..Recipe::stage2() };
    let run = RunOptions { activation_checkpointing: true, ..Default::default() };
    let (model, metrics) = train_stage2(model, &lora, &data, &recipe, 998, &run, |_| {}).unwrap();
    let first = metrics[..2].iter().map(|m| m.lm_loss).sum::<f64>() / 2.0;
    let last = metrics[metrics.len() - 2..].iter().map(|m| m.lm_loss).sum::<f64>() / 2.0;
    eprintln!("stage II on a bf16 base, checkpointed: {} steps, LM loss {first:.3} → {last:.3}", metrics.len());
    assert!(last < 0.5 * first, "LM loss {first} → {last}");
    let lm = &model.llava.language_model.model;
    let adapter = lm.layers[0].self_attn.q_proj.lora.as_ref().expect("adapted");
    assert_eq!((lm.dtype(), adapter.lora_b.weight.val().dtype()), (DType::BF16, DType::F32));
    let after = snapshot(&model);
    for (name, old) in &before {
        assert_eq!(old, &after[name], "non-LoRA tensor {name} changed");
    }
    // Merging sums in f32 and stores in the base's dtype.
    let merged = model.llava.language_model.clone().merge_lora();
    assert_eq!(merged.model.layers[0].self_attn.q_proj.weight.val().dtype(), DType::BF16);
    assert_ne!(
        host(merged.model.layers[0].self_attn.q_proj.weight.val()),
        host(model.llava.language_model.model.layers[0].self_attn.q_proj.weight.val()),
        "the adapter moved the merged weight"
    );
}
