//! The PSA-VLM safety concept bottleneck (arXiv 2411.11543): taxonomy, safety projector (C-Abstractor), the two
//! safety-token sets, the safety head, the concept loss, machine-readable assessments and the safety-control policy.
//!
//! Every width comes from [`SafetyConfig`]; modules are written against [`burn::tensor::Device`].
pub mod assessment;
pub mod calibration;
pub mod compare;
pub mod config;
pub mod error;
pub mod finite;
pub mod head;
pub mod init;
pub mod loss;
pub mod modules;
pub mod path;
pub mod policy;
pub mod projector;
pub mod taxonomy;

pub use assessment::SafetyAssessment;
pub use calibration::Calibration;
pub use config::{QueryMode, SafetyConfig};
pub use error::{CoreError, UnknownName};
pub use head::{ConceptLogits, PackedMultiheadAttention, SafetyHead};
pub use loss::{ConceptLoss, concept_loss, cross_entropy};
pub use modules::{SafeMmProjector, SafetyModules};
pub use policy::{Action, Decision, SafetyPolicy};
pub use projector::CAbstractor;
pub use taxonomy::Taxonomy;
