//! # psa-vlm
//!
//! PSA-VLM (arXiv 2411.11543) on Burn 0.22: a safety concept bottleneck on a LLaVA-1.5 vision-language model.
//! This facade re-exports the member crates and owns the device selection shared by examples, tests and tools.
//!
//! - [`core`] (`psa-core`): the concept bottleneck.
//! - [`models`] (`psa-models`): vision towers, LLaMA with LoRA, LLaVA, generation, the PSA-VLM model.
//! - [`import`] (`psa-import`): weights in and out (safetensors, PyTorch, PEFT, GGUF, ONNX).
//! - [`pipeline`] (`psa-pipeline`): image and text processors, model directories, guarded inference.
//! - [`train`] (`psa-train`): the two-stage schedule.
//!
//! Models are written against [`burn::tensor::Device`]; pick one with [`device::parse_device`]. With the `serve`
//! feature (on by default through `cli`), [`serve`] is the HTTP server behind `psa serve`; with `cli`, [`batch`]
//! runs `psa batch`. The quickstart's demo data and assets live outside the library, in `examples/demo`.
#[cfg(feature = "cli")]
pub mod batch;
pub mod device;
#[cfg(feature = "serve")]
pub mod fuzzing;
#[cfg(feature = "serve")]
pub mod serve;

pub use burn;
pub use psa_core as core;
pub use psa_import as import;
pub use psa_models as models;
pub use psa_pipeline as pipeline;
pub use psa_train as train;

/// The book's chapters as doctests: `cargo test` compiles every Rust block of `book/src` against this crate and runs
/// those not marked `no_run`, so the tutorials' code cannot drift from the library.
#[cfg(doctest)]
mod book {
    macro_rules! chapters {
        ($($name:ident => $file:literal),* $(,)?) => {
            $(
                #[doc = include_str!(concat!("../book/src/", $file))]
                struct $name;
            )*
        };
    }
    chapters! {
        Introduction => "introduction.md",
        Quickstart => "quickstart.md",
        Architecture => "architecture.md",
        Llava => "llava.md",
        Weights => "weights.md",
        Parity => "parity.md",
        ConceptBottleneck => "concept-bottleneck.md",
        Stage1 => "stage1.md",
        Stage2 => "stage2.md",
        SafetyControl => "safety-control.md",
        Serving => "serving.md",
        Evaluation => "evaluation.md",
        RealWeights => "real-weights.md",
        Benchmarks => "benchmarks.md",
        Precision => "precision.md",
    }
}
