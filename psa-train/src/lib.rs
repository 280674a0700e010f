//! PSA-VLM progressive two-stage training (psa-vlm.md §4): data, tokenisation with correct LLaVA masking,
//! stage-I balancing, recipes, the stage-I loop with a frozen-encoder feature cache, atomic checkpoints with
//! exact resume. LoRA stage II and the `psa` tool follow (issue #4).
pub mod checkpoint;
pub mod data;
pub mod error;
pub mod recipe;
pub mod trainer;

pub use error::DataError;
pub use recipe::Recipe;
