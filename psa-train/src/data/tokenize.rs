//! Supervised fine-tuning tokenisation with LLaVA masking: the whole conversation is the input;
//! labels are −100 everywhere except the assistant answers and their end-of-turn marker (EOS); right padding.
use psa_models::PaddingMask;
use psa_models::loss::IGNORE_INDEX;
use psa_pipeline::processor::template::question_span;
use psa_pipeline::processor::text::{overlapping, pad_marks};
use psa_pipeline::processor::{Message, Role, Template, TextProcessor};

/// One tokenised conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    /// Token ids (BOS first when the tokenizer adds one); one `<image>` id.
    pub input_ids: Vec<u32>,
    /// Targets per position: the id on assistant tokens, −100 elsewhere.
    pub labels: Vec<i64>,
    /// Whether the sequence was cut at the maximum length.
    pub truncated: bool,
    /// The tokens of the user's question (first user turn, without `<image>`): what the safety head's text-aware
    /// query modes pool, as at inference, so the answer never steers the classification. A turn without a question
    /// marks the prompt's text tokens before the first answer instead (what an inference prompt holds).
    pub question: Vec<bool>,
}

/// Moves `<image>` to the start of the first user turn (LLaVA's preprocessing); adds it when absent.
pub fn normalize_image_placeholder(messages: &[Message]) -> Vec<Message> {
    let mut out = messages.to_vec();
    if let Some(first) = out.iter_mut().find(|m| m.role == Role::User) {
        let text = first.content.replace("<image>", "");
        first.content = format!("<image>\n{}", text.trim());
    }
    for m in out.iter_mut().filter(|m| m.role == Role::User).skip(1) {
        m.content = m.content.replace("<image>", "").trim().to_string();
    }
    out
}

/// Tokenises `messages` with `template`, supervising every assistant turn; cuts at `max_len` tokens.
pub fn encode_conversation(
    text: &TextProcessor,
    template: &Template,
    messages: &[Message],
    max_len: usize,
) -> Result<Encoded, EncodeError> {
    let messages = normalize_image_placeholder(messages);
    let full = template.render(&messages, false);
    // Character spans of each assistant answer with its end-of-turn marker.
    let mut spans = Vec::new();
    for (i, _) in messages.iter().enumerate().filter(|(_, m)| m.role == Role::Assistant) {
        let start = template.render(&messages[..i], true);
        let end = template.render(&messages[..=i], false);
        if !full.starts_with(&start) || !full.starts_with(&end) || start.len() > end.len() {
            return Err(EncodeError::Misaligned { turn: i });
        }
        spans.push(start.len()..end.len());
    }
    let enc = text.tokenizer().encode(full.as_str(), true).map_err(EncodeError::Tokenizer)?;
    let ids = enc.get_ids().to_vec();
    let span = messages.iter().find(|m| m.role == Role::User).and_then(|m| question_span(&full, &m.content));
    let question = match span {
        Some(span) => overlapping(enc.get_offsets(), Some(span)),
        // No question (an image-only turn): the text tokens of the prompt before the first answer — what an
        // inference prompt without a question pools — and never a token that reaches into an answer.
        None => {
            let first_answer = messages.iter().position(|m| m.role == Role::Assistant).unwrap_or(messages.len());
            let prompt = template.render(&messages[..first_answer], true).len();
            ids.iter()
                .zip(enc.get_offsets())
                .map(|(&id, &(s, e))| e > s && e <= prompt && id != text.image_token_id())
                .collect()
        }
    };
    let labels: Vec<i64> = ids
        .iter()
        .zip(enc.get_offsets())
        .map(|(&id, &(s, e))| {
            let inside = e > s && spans.iter().any(|sp| s >= sp.start && e <= sp.end);
            if inside { id as i64 } else { IGNORE_INDEX }
        })
        .collect();
    if labels.iter().all(|&l| l == IGNORE_INDEX) {
        return Err(EncodeError::NothingSupervised);
    }
    let truncated = ids.len() > max_len;
    let keep = ids.len().min(max_len);
    let (input_ids, labels, question) = (ids[..keep].to_vec(), labels[..keep].to_vec(), question[..keep].to_vec());
    if labels.iter().all(|&l| l == IGNORE_INDEX) {
        return Err(EncodeError::TruncatedAway { max_len });
    }
    Ok(Encoded { input_ids, labels, truncated, question })
}

/// Why a conversation cannot become a training sample.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// The template renders a prefix of the conversation differently from the whole.
    #[error("template pieces of turn {turn} do not line up with the rendered conversation")]
    Misaligned {
        /// The assistant turn.
        turn: usize,
    },
    /// The tokenizer failed.
    #[error("tokenizer: {0}")]
    Tokenizer(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// No answer token is left to learn from.
    #[error("no assistant token survived tokenisation")]
    NothingSupervised,
    /// Truncation cut every answer token.
    #[error("truncation to {max_len} tokens removed every supervised token")]
    TruncatedAway {
        /// The length limit.
        max_len: usize,
    },
}

/// The question marks of a batch, right-padded (with `false`) like [`collate`]'s rows.
pub fn question_marks(batch: &[&Encoded]) -> Vec<Vec<bool>> {
    pad_marks(batch.iter().map(|e| e.question.as_slice()))
}

/// Right-pads a batch: ids with `pad_id`, labels with −100, mask 0 on padding.
pub fn collate(batch: &[&Encoded], pad_id: u32) -> (Vec<Vec<u32>>, PaddingMask, Vec<Vec<i64>>) {
    let len = batch.iter().map(|e| e.input_ids.len()).max().unwrap_or(0);
    let mut ids = Vec::with_capacity(batch.len());
    let mut labels = Vec::with_capacity(batch.len());
    let mut mask = Vec::with_capacity(batch.len());
    for e in batch {
        let fill = len - e.input_ids.len();
        ids.push(e.input_ids.iter().copied().chain(std::iter::repeat_n(pad_id, fill)).collect());
        labels.push(e.labels.iter().copied().chain(std::iter::repeat_n(IGNORE_INDEX, fill)).collect());
        mask.push(std::iter::repeat_n(true, e.input_ids.len()).chain(std::iter::repeat_n(false, fill)).collect());
    }
    (ids, PaddingMask::new(mask), labels)
}
