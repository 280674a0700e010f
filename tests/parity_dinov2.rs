//! DINOv2 parity with transformers' `Dinov2Model` on `fixtures/tiny_dinov2` (random weights, 5×5 position
//! table): a 4×4 input grid exercises anti-aliased bicubic downsampling of the position embeddings, a 7×7 grid
//! upsampling. Tolerances (max abs) are small multiples of the differences measured on flex, ndarray and wgpu
//! (2026-12-04) and below 15× the smallest each covers: position embeddings 1.2e-7 (down) and 1.7e-6 (up), hidden
//! states 3.8e-6 … 1.1e-5, last hidden state and pooler 5.8e-7 … 2.6e-6.
mod common;

use common::*;
use psa_vlm::burn::tensor::{Tensor, TensorData};
use psa_vlm::import::{LoadOptions, load_dinov2};

#[test]
fn dinov2_hidden_states_match_transformers() {
    for (backend, device) in devices() {
        let dir = fixtures().join("tiny_dinov2");
        let (model, _, _) = load_dinov2(&dir.join("model"), &device, &LoadOptions::strict()).unwrap();
        let fx = read_fixture(&dir.join("fixture.safetensors"));
        for case in ["down", "up"] {
            let p = &fx[&format!("{case}.pixel_values")];
            let shape: [usize; 4] = p.shape.clone().try_into().unwrap();
            let pixels = Tensor::<4>::from_data(
                TensorData::new(p.values.iter().map(|&v| v as f32).collect::<Vec<_>>(), shape),
                &device,
            );
            let grid = shape[2] / 14;
            let pos = model.embeddings.position_embeddings_for(grid, grid).unsqueeze::<3>();
            let pos_tol = if case == "down" { 1e-6 } else { 8e-6 };
            assert_close(&format!("{backend} {case}.pos_embed"), pos, &fx[&format!("{case}.pos_embed")], pos_tol);
            let out = model.forward(pixels, None);
            for (i, h) in out.hidden_states.into_iter().enumerate() {
                assert_close(
                    &format!("{backend} {case}.hidden_states.{i}"),
                    h,
                    &fx[&format!("{case}.hidden_states.{i}")],
                    3e-5,
                );
            }
            let last = out.last_hidden_state.unwrap();
            assert_close(
                &format!("{backend} {case}.last_hidden_state"),
                last.clone(),
                &fx[&format!("{case}.last_hidden_state")],
                6e-6,
            );
            let [b, _, d] = last.dims();
            let pooled = last.slice([0..b, 0..1, 0..d]).reshape([b, d]);
            assert_close(
                &format!("{backend} {case}.pooler_output"),
                pooled,
                &fx[&format!("{case}.pooler_output")],
                6e-6,
            );
        }
    }
}
