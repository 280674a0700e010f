//! Conversation templates: `llava_v1` (Vicuna v1, LLaVA-1.5's own), `llava_llama_2` (the PSA-VLM reference
//! training template), `ref_inference` (the reference's inference strings, for parity runs)
//! and `chatml` (SmolLM2 and others). The same template must be used for training and inference.
use serde::{Deserialize, Serialize};

use crate::error::TextError;

/// Vicuna v1 system prompt used by LLaVA-1.5.
pub const VICUNA_SYSTEM: &str = "A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the human's questions.";
/// LLaVA LLaMA-2 system prompt.
pub const LLAMA2_SYSTEM: &str = "You are a helpful language and vision assistant. You are able to understand the visual content that the user provides, and assist the user with a variety of tasks using natural language.";

/// Who speaks a turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The user (`USER`, `human`).
    User,
    /// The model (`ASSISTANT`, `gpt`).
    Assistant,
}

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Speaker.
    pub role: Role,
    /// Text; may contain `<image>`.
    pub content: String,
}

impl Message {
    /// A user turn.
    pub fn user(content: impl Into<String>) -> Self {
        Self { role: Role::User, content: content.into() }
    }

    /// An assistant turn.
    pub fn assistant(content: impl Into<String>) -> Self {
        Self { role: Role::Assistant, content: content.into() }
    }
}

/// A conversation template with its system prompt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Template {
    /// `SYSTEM USER: q ASSISTANT: a</s>USER: …` (LLaVA `conv_vicuna_v1`); an empty system gives the llava-hf
    /// model-card format `USER: q ASSISTANT:`.
    LlavaV1 {
        /// System prompt.
        system: String,
    },
    /// `[INST] <<SYS>>\nSYSTEM\n<</SYS>>\n\nq [/INST] a </s><s>[INST] …` (LLaVA `conv_llava_llama_2`).
    LlavaLlama2 {
        /// System prompt.
        system: String,
    },
    /// The reference inference layout: `SYSTEM<image>\n USER: q \nASSISTANT:`, the system text
    /// joined with no separator; with a hint `SYSTEM<image>\n \n USER: q  \n Safe Hint: h \n ASSISTANT:  `.
    RefInference {
        /// System prompt.
        system: String,
    },
    /// `<|im_start|>role\ntext<|im_end|>\n` turns.
    ChatMl {
        /// Optional system prompt.
        system: Option<String>,
    },
}

/// The byte range of the user's `question` (its `<image>` marks removed, trimmed) inside `rendered`, found after the
/// first `<image>`; `None` when the question is empty or not there.
pub fn question_span(rendered: &str, question: &str) -> Option<std::ops::Range<usize>> {
    let q = crate::processor::text::strip_marks(question, "<image>");
    let q = q.trim();
    if q.is_empty() {
        return None;
    }
    let from = rendered.find("<image>").map_or(0, |i| i + "<image>".len());
    rendered[from..].find(q).map(|i| from + i..from + i + q.len())
}

impl Template {
    /// A template by name (`llava_v1`, `llava_hf`, `llava_llama_2`, `ref_inference`, `chatml`) with its default
    /// system prompt.
    pub fn by_name(name: &str) -> Result<Self, TextError> {
        match name {
            "llava_v1" | "vicuna_v1" => Ok(Self::LlavaV1 { system: VICUNA_SYSTEM.into() }),
            "llava_hf" => Ok(Self::LlavaV1 { system: String::new() }),
            "llava_llama_2" | "llama2_ref" => Ok(Self::LlavaLlama2 { system: LLAMA2_SYSTEM.into() }),
            "ref_inference" => Ok(Self::RefInference { system: LLAMA2_SYSTEM.into() }),
            "chatml" => Ok(Self::ChatMl { system: None }),
            other => Err(TextError::UnknownTemplate(other.into())),
        }
    }

    /// The same template with another system prompt.
    pub fn with_system(self, system: impl Into<String>) -> Self {
        let system = system.into();
        match self {
            Self::LlavaV1 { .. } => Self::LlavaV1 { system },
            Self::LlavaLlama2 { .. } => Self::LlavaLlama2 { system },
            Self::RefInference { .. } => Self::RefInference { system },
            Self::ChatMl { .. } => Self::ChatMl { system: Some(system) },
        }
    }

    /// Renders the conversation; with `generation_prompt` the text ends where the assistant's answer starts.
    pub fn render(&self, messages: &[Message], generation_prompt: bool) -> String {
        match self {
            Self::LlavaV1 { system } => {
                let mut s = if system.is_empty() { String::new() } else { format!("{system} ") };
                for m in messages {
                    match m.role {
                        Role::User => s.push_str(&format!("USER: {} ", m.content)),
                        Role::Assistant => s.push_str(&format!("ASSISTANT: {}</s>", m.content)),
                    }
                }
                if generation_prompt {
                    s.push_str("ASSISTANT:");
                }
                s
            }
            Self::LlavaLlama2 { system } => {
                let mut s = String::new();
                for (i, m) in messages.iter().enumerate() {
                    match m.role {
                        Role::User => {
                            let content = if i == 0 && !system.is_empty() {
                                format!("<<SYS>>\n{system}\n<</SYS>>\n\n{}", m.content)
                            } else {
                                m.content.clone()
                            };
                            if i > 0 {
                                s.push_str("<s>");
                            }
                            s.push_str(&format!("[INST] {content} [/INST]"));
                        }
                        Role::Assistant => s.push_str(&format!(" {} </s>", m.content)),
                    }
                }
                s
            }
            Self::RefInference { system } => {
                let mut s = system.clone();
                for m in messages {
                    match m.role {
                        Role::User => match m.content.strip_prefix("<image>\n") {
                            Some(rest) => s.push_str(&format!("<image>\n USER: {rest} \n")),
                            None => s.push_str(&format!("USER: {} \n", m.content)),
                        },
                        Role::Assistant => s.push_str(&format!("ASSISTANT: {}</s>", m.content)),
                    }
                }
                if generation_prompt {
                    s.push_str("ASSISTANT:");
                }
                s
            }
            Self::ChatMl { system } => {
                let mut s = String::new();
                if let Some(sys) = system {
                    s.push_str(&format!("<|im_start|>system\n{sys}<|im_end|>\n"));
                }
                for m in messages {
                    let role = match m.role {
                        Role::User => "user",
                        Role::Assistant => "assistant",
                    };
                    s.push_str(&format!("<|im_start|>{role}\n{}<|im_end|>\n", m.content));
                }
                if generation_prompt {
                    s.push_str("<|im_start|>assistant\n");
                }
                s
            }
        }
    }

    /// [`image_prompt`](Self::image_prompt) and the byte range of the question in it (`None` when the question is
    /// empty): the tokens the safety head's text-aware queries come from.
    pub fn image_prompt_with_question(&self, question: &str) -> (String, Option<std::ops::Range<usize>>) {
        let prompt = self.image_prompt(question);
        let span = question_span(&prompt, question);
        (prompt, span)
    }

    /// A single-turn prompt asking `question` about one image (`<image>` placed first, as LLaVA does).
    pub fn image_prompt(&self, question: &str) -> String {
        self.guarded_prompt(question, None)
    }

    /// [`image_prompt`](Self::image_prompt) with an optional safety hint: `ref_inference` uses the reference's
    /// exact layout; the others append `\nSafe Hint: {hint}` to the user turn.
    pub fn guarded_prompt(&self, question: &str, hint: Option<&str>) -> String {
        let q = crate::processor::text::strip_marks(question, "<image>");
        let q = q.trim();
        match (self, hint) {
            (Self::RefInference { system }, Some(h)) => {
                format!("{system}<image>\n \n USER: {q}  \n Safe Hint: {h} \n ASSISTANT:  ")
            }
            (_, Some(h)) => self.render(&[Message::user(format!("<image>\n{q}\nSafe Hint: {h}"))], true),
            (_, None) => self.render(&[Message::user(format!("<image>\n{q}"))], true),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llava_v1_matches_the_llava_hf_prompt_format() {
        let t = Template::by_name("llava_v1").unwrap();
        let p =
            t.render(&[Message::user("<image>\nWhat?"), Message::assistant("A cat."), Message::user("Sure?")], true);
        assert_eq!(p, format!("{VICUNA_SYSTEM} USER: <image>\nWhat? ASSISTANT: A cat.</s>USER: Sure? ASSISTANT:"));
    }

    #[test]
    fn llama2_matches_the_reference_training_layout() {
        let t = Template::by_name("llava_llama_2").unwrap();
        let p = t.render(&[Message::user("<image>\nQ"), Message::assistant("A")], false);
        assert_eq!(p, format!("[INST] <<SYS>>\n{LLAMA2_SYSTEM}\n<</SYS>>\n\n<image>\nQ [/INST] A </s>"));
        let p2 = t.render(&[Message::user("Q"), Message::assistant("A"), Message::user("Q2")], true);
        assert!(p2.ends_with(" A </s><s>[INST] Q2 [/INST]"), "{p2}");
    }

    #[test]
    fn chatml_and_image_prompt() {
        let t = Template::by_name("chatml").unwrap().with_system("Be brief.");
        assert_eq!(
            t.image_prompt("What is this? <image>"),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n<image>\nWhat is this?<|im_end|>\n<|im_start|>assistant\n"
        );
        assert!(matches!(Template::by_name("alpaca"), Err(TextError::UnknownTemplate(_))));
        // Marks spliced into one another leave none behind.
        assert_eq!(t.image_prompt("<ima<image>ge>What?"), t.image_prompt("What?"));
        let hf = Template::by_name("llava_hf").unwrap();
        assert_eq!(
            hf.image_prompt("What's the content of the image?"),
            "USER: <image>\nWhat's the content of the image? ASSISTANT:"
        );
    }
}
