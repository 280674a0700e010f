//! Label files in JSON Lines: the reference LLaVA schema (`safe_type`, `safe_level`, `image`,
//! `conversations: [{from, value}]` with roles USER/ASSISTANT or human/gpt) and the TRL schema (`messages:
//! [{role, content}]`, `images`). Every error names the file and the line.
use std::path::{Path, PathBuf};

use psa_pipeline::processor::{Message, Role};
use serde_json::Value;

use crate::error::DataError;

/// The image of a sample: one file, or a `<split>` pair shown side by side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageRef {
    /// One image file.
    Single(PathBuf),
    /// Two images concatenated horizontally (left, right).
    Pair(PathBuf, PathBuf),
}

impl ImageRef {
    /// The image files, in order.
    pub fn paths(&self) -> Vec<&Path> {
        match self {
            Self::Single(p) => vec![p],
            Self::Pair(a, b) => vec![a, b],
        }
    }
}

/// One labelled training or evaluation sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Line in its file (1-based), for error messages and ids.
    pub line: usize,
    /// Optional `id` field.
    pub id: Option<String>,
    /// The image, resolved against the image root.
    pub image: ImageRef,
    /// The conversation; `<image>` may appear in the first user turn.
    pub messages: Vec<Message>,
    /// Risk level (`safe_level`).
    pub level: usize,
    /// Risk type (`safe_type`).
    pub risk_type: usize,
}

/// Class counts used to validate labels.
#[derive(Debug, Clone, Copy)]
pub struct LabelSpace {
    /// Number of risk levels.
    pub levels: usize,
    /// Number of risk types.
    pub types: usize,
}

impl Default for LabelSpace {
    fn default() -> Self {
        Self { levels: 4, types: 7 }
    }
}

/// Reads a JSONL label file. Blank lines are skipped; anything else malformed is an error naming the line.
pub fn read_jsonl(path: &Path, image_root: &Path, labels: LabelSpace) -> Result<Vec<Sample>, DataError> {
    let text = std::fs::read_to_string(path).map_err(|source| DataError::Io { path: path.into(), source })?;
    parse_jsonl(&text, path, image_root, labels)
}

/// Parses JSONL label text (a leading byte-order mark is accepted); `path` names the lines in errors.
pub fn parse_jsonl(text: &str, path: &Path, image_root: &Path, labels: LabelSpace) -> Result<Vec<Sample>, DataError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut samples = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        if raw.trim().is_empty() {
            continue;
        }
        let line = i + 1;
        let err = |source: SampleError| DataError::Sample { path: path.into(), line, source };
        let value: Value = serde_json::from_str(raw).map_err(|e| err(e.into()))?;
        samples.push(parse_sample(&value, line, image_root, labels).map_err(err)?);
    }
    Ok(samples)
}

fn label(v: &Value, key: &'static str, count: usize) -> Result<usize, SampleError> {
    let x = v.get(key).ok_or(SampleError::Missing(key))?;
    let n =
        x.as_u64().ok_or_else(|| SampleError::Type { key, expected: "a non-negative integer", got: x.to_string() })?;
    if n >= count as u64 {
        return Err(SampleError::Label { key, value: n, count });
    }
    Ok(n as usize)
}

fn role(from: &str) -> Result<Role, SampleError> {
    match from.to_ascii_lowercase().as_str() {
        "user" | "human" => Ok(Role::User),
        "assistant" | "gpt" => Ok(Role::Assistant),
        other => Err(SampleError::Role(other.into())),
    }
}

/// `v[key]` as a string.
pub(crate) fn text<'a>(v: &'a Value, key: &'static str) -> Result<&'a str, SampleError> {
    match v.get(key) {
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(SampleError::Type { key, expected: "a string", got: other.to_string() }),
        None => Err(SampleError::Missing(key)),
    }
}

/// `v[key]` as a list.
fn list<'a>(v: &'a Value, key: &'static str) -> Result<&'a [Value], SampleError> {
    match v.get(key) {
        Some(Value::Array(a)) => Ok(a),
        Some(other) => Err(SampleError::Type { key, expected: "a list", got: other.to_string() }),
        None => Err(SampleError::Missing(key)),
    }
}

fn parse_sample(v: &Value, line: usize, root: &Path, labels: LabelSpace) -> Result<Sample, SampleError> {
    let obj = v.as_object().ok_or(SampleError::NotAnObject)?;
    let level = label(v, "safe_level", labels.levels)?;
    let risk_type = label(v, "safe_type", labels.types)?;
    let (image, messages) = if obj.contains_key("conversations") {
        let image = text(v, "image")?;
        let messages = list(v, "conversations")?
            .iter()
            .map(|t| Ok(Message { role: role(text(t, "from")?)?, content: text(t, "value")?.to_string() }))
            .collect::<Result<Vec<_>, SampleError>>()?;
        (image.to_string(), messages)
    } else if obj.contains_key("messages") {
        let image = match list(v, "images")? {
            [one] => one.as_str().ok_or_else(|| SampleError::Type {
                key: "images",
                expected: "a list of paths",
                got: one.to_string(),
            })?,
            other => return Err(SampleError::ImageCount(other.len())),
        };
        let messages = list(v, "messages")?
            .iter()
            .map(|m| {
                let content = trl_content(m.get("content").ok_or(SampleError::Missing("content"))?)?;
                Ok(Message { role: role(text(m, "role")?)?, content })
            })
            .collect::<Result<Vec<_>, SampleError>>()?;
        (image.to_string(), messages)
    } else {
        return Err(SampleError::Schema);
    };
    if messages.is_empty() {
        return Err(SampleError::Conversation("empty conversation"));
    }
    if !messages.iter().any(|m| m.role == Role::Assistant) {
        return Err(SampleError::Conversation("the conversation has no assistant turn to learn from"));
    }
    if messages[0].role != Role::User {
        return Err(SampleError::Conversation("the conversation must start with a user turn"));
    }
    let image = match image.split_once("<split>") {
        Some((a, b)) => ImageRef::Pair(root.join(a.trim()), root.join(b.trim())),
        None => ImageRef::Single(root.join(image.trim())),
    };
    let id = obj.get("id").map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string));
    Ok(Sample { line, id, image, messages, level, risk_type })
}

/// TRL content: a string, or parts `{"type": "text", "text": …}` / `{"type": "image"}` (→ `<image>`).
fn trl_content(c: &Value) -> Result<String, SampleError> {
    if let Some(s) = c.as_str() {
        return Ok(s.to_string());
    }
    let parts = c.as_array().ok_or_else(|| SampleError::Type {
        key: "content",
        expected: "a string or a list of parts",
        got: c.to_string(),
    })?;
    let mut out = Vec::new();
    for p in parts {
        match p.get("type").and_then(Value::as_str) {
            Some("image") => out.push("<image>".to_string()),
            Some("text") => out.push(text(p, "text")?.to_string()),
            other => return Err(SampleError::PartType(other.map(str::to_string))),
        }
    }
    Ok(out.join("\n"))
}

/// Why one JSONL line is not a usable sample.
#[derive(Debug, thiserror::Error)]
pub enum SampleError {
    /// Not JSON at all.
    #[error("malformed JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// The line is JSON but not an object.
    #[error("each line must be a JSON object")]
    NotAnObject,
    /// Neither schema's key.
    #[error("expected `conversations` (LLaVA) or `messages` (TRL)")]
    Schema,
    /// A required key is absent.
    #[error("missing `{0}`")]
    Missing(&'static str),
    /// A key holds the wrong kind of value.
    #[error("`{key}` must be {expected}, got {got}")]
    Type {
        /// The key.
        key: &'static str,
        /// What it must hold.
        expected: &'static str,
        /// What it holds, as JSON.
        got: String,
    },
    /// A label outside the label space.
    #[error("unknown label {key} = {value}: expected 0..{}", .count - 1)]
    Label {
        /// `safe_level` or `safe_type`.
        key: &'static str,
        /// The value given.
        value: u64,
        /// Number of classes.
        count: usize,
    },
    /// A speaker name neither schema uses.
    #[error("unknown role {0:?}: expected USER/ASSISTANT, human/gpt or user/assistant")]
    Role(String),
    /// Not exactly one image.
    #[error("exactly one image per sample is supported, got {0}")]
    ImageCount(usize),
    /// A TRL content part of an unknown type.
    #[error("unknown content part type {0:?}")]
    PartType(Option<String>),
    /// A conversation that cannot be learnt from.
    #[error("{0}")]
    Conversation(&'static str),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(name: &str, body: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("psa-jsonl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, body).unwrap();
        p
    }

    #[test]
    fn reads_both_schemas_and_pairs() {
        let p = write(
            "ok.jsonl",
            concat!(
                r#"{"safe_type": 6, "safe_level": 0, "image": "a.jpg", "conversations": [{"from": "USER", "value": "<image>\nDescribe."}, {"from": "ASSISTANT", "value": "A cat."}]}"#,
                "\n\n",
                r#"{"safe_type": 5, "safe_level": 1, "image": "x.jpg<split>y.jpg", "conversations": [{"from": "human", "value": "Which first?"}, {"from": "gpt", "value": "Left."}]}"#,
                "\n",
                r#"{"safe_type": 4, "safe_level": 2, "images": ["p.png"], "messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Who?"}]}, {"role": "assistant", "content": [{"type": "text", "text": "I can't say."}]}]}"#,
            ),
        );
        let s = read_jsonl(&p, Path::new("/data"), LabelSpace::default()).unwrap();
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].image, ImageRef::Single("/data/a.jpg".into()));
        assert_eq!(s[1].image, ImageRef::Pair("/data/x.jpg".into(), "/data/y.jpg".into()));
        assert_eq!((s[1].line, s[1].level, s[1].risk_type), (3, 1, 5));
        assert_eq!(s[2].messages[0].content, "<image>\nWho?");
        assert_eq!(s[2].messages[1], Message::assistant("I can't say."));
    }

    #[test]
    fn errors_name_file_and_line() {
        let good = r#"{"safe_type": 6, "safe_level": 0, "image": "a.jpg", "conversations": [{"from": "USER", "value": "q"}, {"from": "ASSISTANT", "value": "a"}]}"#;
        let cases = [
            ("{not json", "malformed JSON"),
            (
                r#"{"safe_type": 9, "safe_level": 0, "image": "a.jpg", "conversations": []}"#,
                "unknown label safe_type = 9",
            ),
            (r#"{"safe_type": 1, "safe_level": 1, "image": "a.jpg", "conversations": []}"#, "empty conversation"),
            (
                r#"{"safe_type": 1, "safe_level": 1, "image": "a.jpg", "conversations": [{"from": "bot", "value": "x"}]}"#,
                "unknown role",
            ),
            (r#"{"safe_type": 1, "safe_level": 1, "image": "a.jpg"}"#, "expected `conversations`"),
        ];
        for (i, (bad, want)) in cases.iter().enumerate() {
            let p = write(&format!("bad{i}.jsonl"), &format!("{good}\n{bad}\n"));
            let err = read_jsonl(&p, Path::new("."), LabelSpace::default()).unwrap_err().to_string();
            assert!(err.contains(&format!("bad{i}.jsonl:2:")) && err.contains(want), "{err}");
        }
    }
}
