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
        let err = |reason: String| DataError::Line { path: path.into(), line, reason };
        let value: Value = serde_json::from_str(raw).map_err(|e| err(format!("malformed JSON: {e}")))?;
        samples.push(parse_sample(&value, line, image_root, labels).map_err(err)?);
    }
    Ok(samples)
}

fn label(v: &Value, key: &str, count: usize) -> Result<usize, String> {
    let x = v.get(key).ok_or_else(|| format!("missing `{key}`"))?;
    let n = x.as_u64().ok_or_else(|| format!("`{key}` must be a non-negative integer, got {x}"))? as usize;
    if n >= count {
        return Err(format!("unknown label {key} = {n}: expected 0..{}", count - 1));
    }
    Ok(n)
}

fn role(from: &str) -> Result<Role, String> {
    match from.to_ascii_lowercase().as_str() {
        "user" | "human" => Ok(Role::User),
        "assistant" | "gpt" => Ok(Role::Assistant),
        other => Err(format!("unknown role {other:?}: expected USER/ASSISTANT, human/gpt or user/assistant")),
    }
}

fn parse_sample(v: &Value, line: usize, root: &Path, labels: LabelSpace) -> Result<Sample, String> {
    let obj = v.as_object().ok_or("each line must be a JSON object")?;
    let level = label(v, "safe_level", labels.levels)?;
    let risk_type = label(v, "safe_type", labels.types)?;
    let (image, messages) = if let Some(conv) = obj.get("conversations") {
        let image = obj.get("image").and_then(Value::as_str).ok_or("missing `image` (a path string)")?;
        let turns = conv.as_array().ok_or("`conversations` must be a list")?;
        let messages = turns
            .iter()
            .map(|t| {
                let from = t.get("from").and_then(Value::as_str).ok_or("a turn lacks `from`")?;
                let value = t.get("value").and_then(Value::as_str).ok_or("a turn lacks a string `value`")?;
                Ok(Message { role: role(from)?, content: value.to_string() })
            })
            .collect::<Result<Vec<_>, String>>()?;
        (image.to_string(), messages)
    } else if let Some(msgs) = obj.get("messages") {
        let images = obj.get("images").and_then(Value::as_array).ok_or("TRL samples need an `images` list")?;
        let image = match images.as_slice() {
            [one] => one.as_str().ok_or("`images` entries must be paths")?.to_string(),
            other => return Err(format!("exactly one image per sample is supported, got {}", other.len())),
        };
        let messages = msgs
            .as_array()
            .ok_or("`messages` must be a list")?
            .iter()
            .map(|m| {
                let r = role(m.get("role").and_then(Value::as_str).ok_or("a message lacks `role`")?)?;
                Ok(Message { role: r, content: trl_content(m.get("content").ok_or("a message lacks `content`")?)? })
            })
            .collect::<Result<Vec<_>, String>>()?;
        (image, messages)
    } else {
        return Err("expected `conversations` (LLaVA) or `messages` (TRL)".into());
    };
    if messages.is_empty() {
        return Err("empty conversation".into());
    }
    if !messages.iter().any(|m| m.role == Role::Assistant) {
        return Err("the conversation has no assistant turn to learn from".into());
    }
    if messages[0].role != Role::User {
        return Err("the conversation must start with a user turn".into());
    }
    let image = match image.split_once("<split>") {
        Some((a, b)) => ImageRef::Pair(root.join(a.trim()), root.join(b.trim())),
        None => ImageRef::Single(root.join(image.trim())),
    };
    let id = obj.get("id").map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string));
    Ok(Sample { line, id, image, messages, level, risk_type })
}

/// TRL content: a string, or parts `{"type": "text", "text": …}` / `{"type": "image"}` (→ `<image>`).
fn trl_content(c: &Value) -> Result<String, String> {
    if let Some(s) = c.as_str() {
        return Ok(s.to_string());
    }
    let parts = c.as_array().ok_or("`content` must be a string or a list of parts")?;
    let mut out = Vec::new();
    for p in parts {
        match p.get("type").and_then(Value::as_str) {
            Some("image") => out.push("<image>".to_string()),
            Some("text") => {
                out.push(p.get("text").and_then(Value::as_str).ok_or("a text part lacks `text`")?.to_string())
            }
            other => return Err(format!("unknown content part type {other:?}")),
        }
    }
    Ok(out.join("\n"))
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
