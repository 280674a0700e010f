//! Processors and pipelines around `psa-models`: images to pixels, conversations to token ids, complete model
//! directories, the plain LLaVA pipeline, and guarded inference (safety head → policy → LLM or refusal).
pub mod assemble;
pub mod canary;
pub mod error;
pub mod guard;
pub mod llava;
pub mod model_dir;
pub mod processor;

pub use canary::{Canary, CanaryInput, add_canary};
pub use error::{ImageError, PipelineError, TextError};
pub use guard::{Finish, GuardRequest, GuardedPipeline, GuardedResponse, LogitRows, QuestionLimits, Timings, Verdict};
pub use llava::{Answer, LlavaPipeline};
pub use model_dir::{ModelDirParts, TEMPLATE_KEY, save_model_dir, saved_template};
