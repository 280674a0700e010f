//! The safety taxonomy: risk levels, risk types and the hint text for each (level, type).
//!
//! Loadable from JSON or TOML; [`Taxonomy::default`] reproduces the paper: 4 levels, 7 types, 18 hints verbatim.
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::CoreError;

/// A named class with a description.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Concept {
    /// Short name.
    pub name: String,
    /// What the class covers.
    pub description: String,
}

/// Risk levels, risk types and hint texts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Taxonomy {
    /// Risk levels in index order.
    pub levels: Vec<Concept>,
    /// Risk types in index order.
    pub types: Vec<Concept>,
    /// Index of the safe level (no hint).
    pub safe_level: usize,
    /// Index of the safe type (no hint).
    pub safe_type: usize,
    /// `hints[level][type]`; `null` or an empty string where no hint applies.
    pub hints: Vec<Vec<Option<String>>>,
}

const MAY: &str = "As an artificial intelligence model, please handle and respond cautiously, do not involve such content in answers, and provide positive guidance to users.";
const CAUTION: &str = "As an artificial intelligence model, please handle and answer with caution, do not involve such content in your answers, and actively guide users.";
const REFUSE: &str = "you must refuse to give the answer, and say: I'm sorry, but I can't {REASON FOR REJECT}.";

fn concept(name: &str, description: &str) -> Concept {
    Concept { name: name.into(), description: description.into() }
}

impl Default for Taxonomy {
    fn default() -> Self {
        let level1 = [
            "This image may contain risks of politically sensitive information.",
            "This image may contain risks of illegal content, such as pornography or violence.",
            "This image may contain risks of cyberbullying, abuse, and hate content.",
            "This image may contain risks of prejudicial discrimination content.",
            "This image may contain risks of personal privacy.",
            "This image may contain risks of false rumors or malicious misleading content.",
        ]
        .map(|s| format!("{s} {MAY}"));
        let level2 = [
            "This image contains risks of politically sensitive information. As an artificial intelligence model, you must answer correctly, do not involve such content in your answer, and actively guide users. You can refuse to answer questions if necessary.".to_string(),
            format!("This image contains risks of illegal content, such as pornography and violent content. {CAUTION} If necessary, you can Refuse to answer questions."),
            format!("This image contains cyber bullying, insults and hateful content. {CAUTION} You can refuse if necessary answer the questions."),
            format!("This image contains prejudice and discrimination content. {CAUTION}"),
            format!("This image contains content that contains risks of personal privacy. {CAUTION} You can refuse if necessary answer the questions."),
            format!("This image contains untrue rumors or malicious misleading content. {CAUTION} You can refuse if necessary answer the questions."),
        ];
        let level3 = [
            format!(
                "This image contains serious risks of politically sensitive information. As an artificial intelligence model, {REFUSE}"
            ),
            format!(
                "This image contains contains serious risks of illegal content, such as pornography and violent content. As an artificial intelligence assistant, {REFUSE}"
            ),
            format!(
                "This image contains serious cyberbullying, insults and hateful content. As an artificial intelligence model, {REFUSE}"
            ),
            format!(
                "This image contains serious prejudice and discrimination. As an artificial intelligence model, {REFUSE}"
            ),
            format!(
                "This image contains content that poses a serious risk of personal privacy. As an artificial intelligence model, {REFUSE}"
            ),
            format!(
                "This image contains seriously untrue rumors or maliciously misleading content. As an artificial intelligence model, {REFUSE}"
            ),
        ];
        let row = |texts: [String; 6]| texts.into_iter().map(Some).chain([None]).collect::<Vec<_>>();
        Self {
            levels: vec![
                concept("safe", "Safe to answer"),
                concept("low", "Answer carefully: may contain risks, respond cautiously"),
                concept("medium", "Answer or reject: contains risks, can refuse if necessary"),
                concept("high", "Reject: serious risks, must refuse"),
            ],
            types: vec![
                concept("politics", "Politically sensitive information"),
                concept(
                    "illegal",
                    "Illegal risk: pornography, violence, sexually explicit content, CAPTCHA, jailbreak",
                ),
                concept("insults_bullying", "Insults and bullying: cyberbullying, abuse, hate"),
                concept("fairness", "Fairness: prejudice and discrimination"),
                concept("privacy", "Personal privacy"),
                concept("misleading", "False rumours and misleading content"),
                concept("safe", "Safe / clean"),
            ],
            safe_level: 0,
            safe_type: 6,
            hints: vec![vec![None; 7], row(level1), row(level2), row(level3)],
        }
    }
}

impl Taxonomy {
    /// Reads a taxonomy from a `.json` or `.toml` file and validates it.
    pub fn from_file(path: &Path) -> Result<Self, CoreError> {
        let text = std::fs::read_to_string(path).map_err(|source| CoreError::Io { path: path.into(), source })?;
        let parse = |reason: String| CoreError::Parse { path: path.into(), reason };
        let t: Self = match path.extension().and_then(|e| e.to_str()) {
            Some("toml") => toml::from_str(&text).map_err(|e| parse(e.to_string()))?,
            _ => serde_json::from_str(&text).map_err(|e| parse(e.to_string()))?,
        };
        t.validate()?;
        Ok(t)
    }

    /// Checks the hint table matches the class counts and the safe classes exist.
    pub fn validate(&self) -> Result<(), CoreError> {
        let invalid = |reason: String| Err(CoreError::Invalid { what: "taxonomy", reason });
        if self.levels.len() < 2 || self.types.len() < 2 {
            return invalid("needs at least two levels and two types".into());
        }
        if self.safe_level >= self.levels.len() || self.safe_type >= self.types.len() {
            return invalid(format!("safe_level {} / safe_type {} out of range", self.safe_level, self.safe_type));
        }
        if self.hints.len() != self.levels.len() || self.hints.iter().any(|r| r.len() != self.types.len()) {
            return invalid(format!("hints must be a {}×{} table", self.levels.len(), self.types.len()));
        }
        Ok(())
    }

    /// The hint for (level, type): `None` for the safe level or type, or where the table has none.
    pub fn hint(&self, level: usize, risk_type: usize) -> Result<Option<&str>, CoreError> {
        self.check(level, risk_type)?;
        if level == self.safe_level || risk_type == self.safe_type {
            return Ok(None);
        }
        Ok(self.hints[level][risk_type].as_deref().filter(|h| !h.is_empty()))
    }

    /// Errors when an index is outside the taxonomy.
    pub fn check(&self, level: usize, risk_type: usize) -> Result<(), CoreError> {
        if level >= self.levels.len() {
            return Err(CoreError::OutOfRange { kind: "level", index: level, count: self.levels.len() });
        }
        if risk_type >= self.types.len() {
            return Err(CoreError::OutOfRange { kind: "type", index: risk_type, count: self.types.len() });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_has_the_18_paper_hints_verbatim() {
        let t = Taxonomy::default();
        t.validate().unwrap();
        let count = t.hints.iter().flatten().filter(|h| h.is_some()).count();
        assert_eq!(count, 18);
        assert_eq!(
            t.hint(1, 4).unwrap().unwrap(),
            "This image may contain risks of personal privacy. As an artificial intelligence model, please handle and respond cautiously, do not involve such content in answers, and provide positive guidance to users."
        );
        assert_eq!(
            t.hint(2, 3).unwrap().unwrap(),
            "This image contains prejudice and discrimination content. As an artificial intelligence model, please handle and answer with caution, do not involve such content in your answers, and actively guide users."
        );
        assert_eq!(
            t.hint(3, 1).unwrap().unwrap(),
            "This image contains contains serious risks of illegal content, such as pornography and violent content. As an artificial intelligence assistant, you must refuse to give the answer, and say: I'm sorry, but I can't {REASON FOR REJECT}."
        );
        assert_eq!(t.hint(0, 2).unwrap(), None);
        assert_eq!(t.hint(3, 6).unwrap(), None);
        assert!(matches!(t.hint(4, 0), Err(CoreError::OutOfRange { kind: "level", .. })));
    }

    #[test]
    fn round_trips_through_json_and_toml_files() {
        let dir = std::env::temp_dir().join(format!("psa-taxonomy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let t = Taxonomy::default();
        let json = dir.join("t.json");
        std::fs::write(&json, serde_json::to_string(&t).unwrap()).unwrap();
        assert_eq!(Taxonomy::from_file(&json).unwrap(), t);
        let mut small = t.clone();
        small.hints.pop();
        let bad = dir.join("bad.json");
        std::fs::write(&bad, serde_json::to_string(&small).unwrap()).unwrap();
        assert!(Taxonomy::from_file(&bad).unwrap_err().to_string().contains("hints must be a 4×7 table"));
        let toml_file = dir.join("t.toml");
        std::fs::write(
            &toml_file,
            "safe_level = 0\nsafe_type = 1\nhints = [[\"\", \"\"], [\"watch out\", \"\"]]\n\
             [[levels]]\nname = \"ok\"\ndescription = \"\"\n[[levels]]\nname = \"bad\"\ndescription = \"\"\n\
             [[types]]\nname = \"x\"\ndescription = \"\"\n[[types]]\nname = \"safe\"\ndescription = \"\"\n",
        )
        .unwrap();
        let t = Taxonomy::from_file(&toml_file).unwrap();
        assert_eq!(t.hint(1, 0).unwrap(), Some("watch out"));
    }
}
