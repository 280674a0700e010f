//! Training data: label files, images, stage-I balancing, tokenisation with LLaVA masking.
pub mod balance;
pub mod images;
pub mod jsonl;
pub mod tokenize;

pub use balance::{Balance, balance};
pub use jsonl::{ImageRef, LabelSpace, Sample, parse_jsonl, read_jsonl};
pub use tokenize::{Encoded, collate, encode_conversation, question_marks};
