//! Measuring a trained guard: benchmark readers ([`datasets`]), classifier metrics ([`metrics`]), refusal judges
//! ([`judge`]), the evaluation run ([`run`]), the written report ([`report`]) and temperature fitting
//! ([`calibrate`]).
pub mod calibrate;
pub mod datasets;
pub mod judge;
pub mod metrics;
pub mod report;
pub mod run;

pub use calibrate::{CalibrationFit, fit_calibration};
pub use datasets::{EvalItem, EvalSet, FIGSTEP_PROMPT, Format, ReadOptions, read_benchmark};
pub use judge::{JUDGE_PROMPT, Judge, LlmJudge, REFUSAL_PHRASES, RefusalPhrases};
pub use metrics::ReliabilityBin;
pub use report::write_report;
pub use run::{
    EvalOptions, EvalReport, ItemResponse, PolicyMetrics, REPORT_VERSION, ResponseCounts, SubsetFlags, SubsetResponses,
    evaluate,
};
