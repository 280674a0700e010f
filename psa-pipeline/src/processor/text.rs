//! Tokenisation on the `tokenizers` crate (`tokenizer.json`), `<image>` expansion and batch padding.
use std::path::Path;

use tokenizers::Tokenizer;

use crate::error::TextError;
use psa_models::mask::PaddingMask;

/// Where padding goes in a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaddingSide {
    /// Pad before the tokens (usual for generation).
    Left,
    /// Pad after the tokens (usual for training).
    Right,
}

/// A tokenizer plus the image placeholder conventions of LLaVA.
#[derive(Debug, Clone)]
pub struct TextProcessor {
    tokenizer: Tokenizer,
    image_token_id: u32,
    image_token: String,
    /// The text of every special added token (`<s>`, `</s>`, `<|im_start|>`, …), longest first.
    control_tokens: Vec<String>,
}

/// Removes every `image_token` from `text` until none is left, so marks spliced into one another
/// (`<ima<image>ge>`) cannot leave one behind.
pub fn strip_marks(text: &str, image_token: &str) -> String {
    let mut out = text.to_string();
    while !image_token.is_empty() && out.contains(image_token) {
        out = out.replace(image_token, "");
    }
    out
}

/// For each token's byte offsets, whether it overlaps `span` (a SentencePiece token may carry the space before a word).
pub fn overlapping(offsets: &[(usize, usize)], span: Option<std::ops::Range<usize>>) -> Vec<bool> {
    offsets.iter().map(|&(s, e)| span.as_ref().is_some_and(|sp| e > s && s < sp.end && e > sp.start)).collect()
}

/// Per-token marks (e.g. [`TextProcessor::encode_marked`]'s) of a batch, right-padded with `false` to the longest
/// row, as [`TextProcessor::pad`] pads ids on the right.
pub fn pad_marks<'a>(rows: impl IntoIterator<Item = &'a [bool]>) -> Vec<Vec<bool>> {
    let rows: Vec<&[bool]> = rows.into_iter().collect();
    let len = rows.iter().map(|r| r.len()).max().unwrap_or(0);
    rows.iter().map(|r| r.iter().copied().chain(std::iter::repeat(false)).take(len).collect()).collect()
}

impl TextProcessor {
    /// Loads `tokenizer.json`; `image_token` (e.g. `<image>`) must be in its vocabulary.
    pub fn from_file(path: &Path, image_token: &str) -> Result<Self, TextError> {
        let tokenizer =
            Tokenizer::from_file(path).map_err(|e| TextError::Load { path: path.into(), reason: e.to_string() })?;
        Self::new(tokenizer, image_token)
    }

    /// Wraps a loaded tokenizer.
    pub fn new(tokenizer: Tokenizer, image_token: &str) -> Result<Self, TextError> {
        let image_token_id =
            tokenizer.token_to_id(image_token).ok_or_else(|| TextError::MissingToken(image_token.into()))?;
        let mut control_tokens: Vec<String> = tokenizer
            .get_added_tokens_decoder()
            .into_values()
            .filter(|t| t.special && !t.content.is_empty() && t.content != image_token)
            .map(|t| t.content)
            .collect();
        control_tokens.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        control_tokens.dedup();
        Ok(Self { tokenizer, image_token_id, image_token: image_token.into(), control_tokens })
    }

    /// A user's text as it enters a prompt: image marks removed ([`strip_marks`]), and refused when it holds the
    /// text of a special token, which the tokenizer would read as the real token (a typed `<|im_end|>` or `</s>`
    /// would end the user's turn and let the text forge a system or assistant turn around the safety hint).
    pub fn user_text(&self, text: &str) -> Result<String, TextError> {
        let text = strip_marks(text, &self.image_token);
        match self.control_tokens.iter().find(|t| text.contains(t.as_str())) {
            Some(token) => Err(TextError::UserText(format!(
                "the text holds the special token {token:?}, which only the conversation template may write"
            ))),
            None => Ok(text),
        }
    }

    /// The special tokens [`user_text`](Self::user_text) refuses, longest first.
    pub fn control_tokens(&self) -> &[String] {
        &self.control_tokens
    }

    /// The underlying tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Id of the image placeholder.
    pub fn image_token_id(&self) -> u32 {
        self.image_token_id
    }

    /// Id of a token string, if present.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.tokenizer.token_to_id(token)
    }

    /// Encodes text; `add_special_tokens` applies the post-processor (BOS for LLaMA tokenizers).
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, TextError> {
        let enc = self.tokenizer.encode(text, add_special_tokens).map_err(|e| TextError::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Encodes a prompt (special tokens added) and marks the tokens that overlap the byte range `span` (none when
    /// `None`): the question's tokens for the safety head's text-aware queries.
    pub fn encode_marked(
        &self,
        prompt: &str,
        span: Option<std::ops::Range<usize>>,
    ) -> Result<(Vec<u32>, Vec<bool>), TextError> {
        let enc = self.tokenizer.encode(prompt, true).map_err(|e| TextError::Tokenizer(e.to_string()))?;
        Ok((enc.get_ids().to_vec(), overlapping(enc.get_offsets(), span)))
    }

    /// Encodes a prompt; with `image_tokens = Some(n)` each `<image>` becomes `n` placeholder ids.
    pub fn encode_prompt(&self, prompt: &str, image_tokens: Option<usize>) -> Result<Vec<u32>, TextError> {
        let ids = self.encode(prompt, true)?;
        Ok(match image_tokens {
            None => ids,
            Some(n) => ids
                .into_iter()
                .flat_map(|id| std::iter::repeat_n(id, if id == self.image_token_id { n } else { 1 }))
                .collect(),
        })
    }

    /// Decodes ids to text.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String, TextError> {
        self.tokenizer.decode(ids, skip_special_tokens).map_err(|e| TextError::Tokenizer(e.to_string()))
    }

    /// Pads encoded rows to one length with `pad_id`.
    pub fn pad(rows: &[Vec<u32>], pad_id: u32, side: PaddingSide) -> (Vec<Vec<u32>>, PaddingMask) {
        let len = rows.iter().map(Vec::len).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(rows.len());
        let mut mask = Vec::with_capacity(rows.len());
        for r in rows {
            let fill = len - r.len();
            let (mut i, mut m) = (Vec::with_capacity(len), Vec::with_capacity(len));
            if side == PaddingSide::Left {
                i.extend(std::iter::repeat_n(pad_id, fill));
                m.extend(std::iter::repeat_n(false, fill));
            }
            i.extend_from_slice(r);
            m.extend(std::iter::repeat_n(true, r.len()));
            if side == PaddingSide::Right {
                i.extend(std::iter::repeat_n(pad_id, fill));
                m.extend(std::iter::repeat_n(false, fill));
            }
            ids.push(i);
            mask.push(m);
        }
        (ids, PaddingMask::new(mask))
    }
}
