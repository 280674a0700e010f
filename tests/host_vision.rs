//! The host vision engine (encoder layers on the CPU with packed weights) against transformers' hidden states on the
//! tiny CLIP (MHA and GQA LLaVA fixtures) and DINOv2 fixtures, and against the tensor path; the host C-Abstractor
//! against PyTorch (timm) on the tiny PSA fixtures.
mod common;

use common::*;
use psa_vlm::burn::tensor::{Device, Tensor, TensorData};
use psa_vlm::import::{LoadOptions, load_dinov2, load_psa, load_psa_with_safety};
use psa_vlm::models::PaddingMask;
use psa_vlm::models::vision::VisionTower;
use psa_vlm::models::{HostAbstractor, HostVision, PsaInput};
use psa_vlm::pipeline::{GuardRequest, LogitRows};

/// Largest difference measured against transformers here: 1.8e-6 (CLIP) and 5.7e-6 (DINOv2, whose tensor path is
/// as far).
const TOL: f64 = 2e-5;
/// The C-Abstractor's output against PyTorch: 2.3e-6 measured (the tensor path 2.5e-6); the head's logits from it
/// against the tensor path: 1.8e-7.
const ABSTRACTOR_TOL: f64 = 1e-5;

fn pixels(r: &Ref, device: &Device) -> Tensor<4> {
    let shape: [usize; 4] = r.shape.clone().try_into().unwrap();
    Tensor::from_data(TensorData::new(r.values.iter().map(|&v| v as f32).collect::<Vec<_>>(), shape), device)
}

#[test]
fn host_vision_matches_transformers_and_the_tensor_path() {
    for (backend, device) in devices() {
        for variant in ["tiny_llava", "tiny_llava_gqa"] {
            let fx = read_fixture(&fixtures().join(variant).join("fixture.safetensors"));
            let llava = load_tiny_llava(variant, &device);
            let px = pixels(&fx["inputs.pixel_values"], &device);
            let host = HostVision::new(&llava).unwrap().selected_features(px.clone()).unwrap();
            let d = assert_close(
                &format!("{variant}/{backend} host features"),
                host.clone(),
                &fx["vision.selected_features"],
                TOL,
            );
            let tensor = llava.selected_features(px);
            let (_, a) = common::host(host);
            let (_, b) = common::host(tensor);
            let t = max_abs_diff("a vs b", &a, &b);
            eprintln!("{variant}/{backend}: host vs transformers {d:.2e}, vs tensor path {t:.2e}");
        }
        // DINOv2 as the tower (LayerScale, exact GELU, resized position table), the LLaVA feature layer 1.
        let mut llava = load_tiny_llava("tiny_llava", &device);
        let dir = fixtures().join("tiny_dinov2");
        let (dino, _, _) = load_dinov2(&dir.join("model"), &device, &LoadOptions::strict()).unwrap();
        llava.vision_tower = VisionTower::Dinov2(dino);
        let engine = HostVision::new(&llava).unwrap();
        let fx = read_fixture(&dir.join("fixture.safetensors"));
        let layer = llava.feature_layer();
        for case in ["down", "up"] {
            let px = pixels(&fx[&format!("{case}.pixel_values")], &device);
            let got = engine.selected_features(px.clone()).unwrap();
            let want = &fx[&format!("{case}.hidden_states.{layer}")];
            let t = want.shape[1];
            let want = Ref {
                shape: vec![want.shape[0], t - 1, want.shape[2]],
                values: want.values.chunks(t * want.shape[2]).flat_map(|img| img[want.shape[2]..].to_vec()).collect(),
            };
            let d = assert_close(&format!("dinov2 {case}/{backend} host features"), got, &want, TOL);
            let tensor = max_diff(llava.selected_features(px), &want);
            eprintln!(
                "dinov2 {case}/{backend}: host vs transformers {d:.2e}, tensor path vs transformers {tensor:.2e}"
            );
        }
    }
}

#[test]
fn pipeline_on_the_host_vision_engine_gives_the_same_logits() {
    let plain = tiny_pipeline("llava_v1");
    assert!(!plain.host_vision());
    let requests: Vec<GuardRequest> = (0..3)
        .map(|i| GuardRequest {
            id: None,
            image: image::DynamicImage::ImageRgb8(draw(i, 40 + i as u64)),
            question: format!("What is in picture {i}?"),
            policy: None,
        })
        .collect();
    let want = plain.concept_logits(&requests).unwrap();
    let hosted = tiny_pipeline("llava_v1").with_host_vision(true).unwrap();
    assert!(hosted.host_vision());
    let got = hosted.concept_logits(&requests).unwrap();
    let rows = |r: &LogitRows| r.level.iter().chain(&r.risk_type).flatten().copied().collect::<Vec<f32>>();
    let d = max_abs_diff("concept logits", &rows(&got), &rows(&want));
    eprintln!("concept logits, host vision against the tensor path: max abs diff {d:.2e}");
    assert!(d <= 1e-5, "concept logits differ by {d:e}");
}

#[test]
fn host_abstractor_matches_pytorch_and_the_head_gives_the_tensor_paths_logits() {
    let device = Device::flex();
    let base = fixtures().join("tiny_llava/hub_f32");
    let opts = LoadOptions::strict();
    let tiny = load_psa(&fixtures().join("tiny_psa/model"), &device, &opts).unwrap();
    let pool4 =
        load_psa_with_safety(&base, &fixtures().join("tiny_psa_pool4/safety_modules.safetensors"), &device, &opts)
            .unwrap();
    for (name, (model, cfg, _)) in [("tiny_psa", tiny), ("tiny_psa_pool4", pool4)] {
        let fx = read_fixture(&fixtures().join(name).join("fixture.safetensors"));
        let f = &fx["vision.selected_features"];
        let shape: [usize; 3] = f.shape.clone().try_into().unwrap();
        let features = Tensor::<3>::from_data(
            TensorData::new(f.values.iter().map(|&v| v as f32).collect::<Vec<_>>(), shape),
            &device,
        );
        let host = HostAbstractor::new(&model.safety, &cfg.safety).unwrap();
        let h_s = host.project(features.clone()).unwrap();
        let d = assert_close(&format!("{name} host h_s"), h_s.clone(), &fx["safety.h_s"], ABSTRACTOR_TOL);
        let tensor = max_diff(model.safety.project(features.clone()), &fx["safety.h_s"]);
        eprintln!("{name}: host h_s vs PyTorch {d:.2e}, tensor path vs PyTorch {tensor:.2e}");
        // The head on the host's h_s against the whole tensor path, on the fixture's prompts.
        let ids = fx["inputs.input_ids"].ids();
        let mask_rows: Vec<Vec<i64>> = fx["inputs.attention_mask"]
            .values
            .chunks(ids[0].len())
            .map(|r| r.iter().map(|&v| v as i64).collect())
            .collect();
        let mask = PaddingMask::from_attention_mask(&mask_rows);
        let got = model.classify(PsaInput::projected(h_s, &ids).mask(&mask)).unwrap();
        let want = model.classify(PsaInput::features(features, &ids).mask(&mask)).unwrap();
        let (_, a) = common::host(got.level);
        let (_, b) = common::host(want.level);
        let l = max_abs_diff("a vs b", &a, &b);
        eprintln!("{name}: level logits from host h_s vs the tensor path {l:.2e}");
        assert!(l <= ABSTRACTOR_TOL, "{name}: level logits differ by {l:e}");
    }
    let (model, cfg, _) = load_psa(&fixtures().join("tiny_psa/model"), &device, &opts).unwrap();
    let host = HostAbstractor::new(&model.safety, &cfg.safety).unwrap();
    let err = host.project(Tensor::<3>::zeros([1, 15, 64], &device)).unwrap_err();
    assert!(err.to_string().contains("square patch grid"), "{err}");
}
