//! With `--features onnx-check`, burn-onnx converts the tiny CLIP vision tower (`fixtures/tiny_llava/vision_tower.onnx`)
//! into Rust for the cross-check in `tests/onnx_burn.rs`. Without the feature this does nothing.
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    #[cfg(feature = "onnx-check")]
    {
        println!("cargo:rerun-if-changed=fixtures/tiny_llava/vision_tower.onnx");
        burn_onnx::ModelGen::new().input("fixtures/tiny_llava/vision_tower.onnx").out_dir("onnx/").run_from_script();
    }
}
