//! Measuring a trained guard: benchmark readers ([`datasets`]), classifier metrics ([`metrics`]), judges
//! ([`judge`], [`llm_judge`], the paper's 1–10 judge in [`paper`]), the evaluation run ([`run`], [`respond`]), the
//! written report ([`report`]) and temperature fitting ([`calibrate`]).
pub mod calibrate;
pub mod canary;
pub mod datasets;
pub mod judge;
pub mod llm_judge;
pub mod metrics;
pub mod paper;
pub mod report;
pub mod respond;
pub mod run;

pub use calibrate::{CalibrationFit, fit_calibration};
pub use canary::choose_canary;
pub use datasets::{EvalItem, EvalSet, FIGSTEP_PROMPT, Format, ReadOptions, read_benchmark};
pub use judge::{Judge, JudgeKind, PhraseMatch, REFUSAL_PHRASES, RefusalPhrases};
pub use llm_judge::{HARMBENCH_PROMPT, JudgeStyle, LLAMA_GUARD_PROMPT, LlmJudge, LocalLm, REFUSAL_PROMPT};
pub use metrics::ReliabilityBin;
pub use paper::{SCORE_GUIDES, ScoreJudge};
pub use report::write_report;
pub use respond::{ItemResponse, JudgeRates, PolicyMetrics, ResponseCounts, SubsetResponses, SubsetScore};
pub use run::{EvalOptions, EvalReport, REPORT_VERSION, SubsetFlags, evaluate};
