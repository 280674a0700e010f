//! Dynamic safety control: a policy turns the safety head's assessment into an action —
//! answer without a hint, answer with a safety hint, or refuse without running the LLM — and records which rule
//! decided. [`SafetyPolicy::default`] is the reference behaviour: argmax level and type; the safe level or the safe
//! type → no hint; otherwise the taxonomy's (level, type) hint.
use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::assessment::SafetyAssessment;
use crate::error::CoreError;
use crate::taxonomy::Taxonomy;

/// The placeholder in the level-3 hints, kept verbatim unless the policy gives a reason for the type.
pub const REASON_PLACEHOLDER: &str = "{REASON FOR REJECT}";

/// What to do with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Answer the prompt as given (no hint).
    #[serde(alias = "none")]
    Allow,
    /// Answer with the safety hint added to the prompt.
    Hint,
    /// Return the configured refusal without running the LLM.
    #[serde(alias = "block")]
    Refuse,
}

/// A class selector in a rule: a name from the taxonomy, an index, or `*` for any.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Selector {
    /// Class index.
    Index(usize),
    /// Class name, or `*`.
    Name(String),
}

impl Selector {
    fn resolve(&self, names: &[String], kind: &'static str) -> Result<Option<usize>, CoreError> {
        match self {
            Self::Name(n) if n == "*" => Ok(None),
            Self::Name(n) => names.iter().position(|x| x == n).map(Some).ok_or_else(|| CoreError::Invalid {
                what: "policy",
                reason: format!("unknown {kind} {n:?}; the taxonomy has {}", names.join(", ")),
            }),
            Self::Index(i) if *i < names.len() => Ok(Some(*i)),
            Self::Index(i) => Err(CoreError::OutOfRange { kind, index: *i, count: names.len() }),
        }
    }
}

/// An action for the (level, type) cells a rule selects; the first matching rule applies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CellRule {
    /// Level selector.
    pub level: Selector,
    /// Type selector.
    #[serde(rename = "type")]
    pub risk_type: Selector,
    /// What to do.
    pub action: Action,
}

/// The control policy; every field has a default, so a file (or a per-request override) only names what changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SafetyPolicy {
    /// Risk types whose defence is switched off: a verdict of such a type is answered as safe.
    pub disabled_types: Vec<String>,
    /// Act only when the predicted level's probability reaches this (else the verdict counts as safe).
    pub level_threshold: Option<f32>,
    /// Act only when the predicted type's probability reaches this.
    pub type_threshold: Option<f32>,
    /// Actions for selected cells, checked in order before `default_action`.
    pub rules: Vec<CellRule>,
    /// Action for a risky verdict no rule selects.
    pub default_action: Action,
    /// Hint texts replacing the taxonomy's, keyed `"level/type"` by name (e.g. `"high/privacy"`).
    pub hints: BTreeMap<String, String>,
    /// Per-type text substituted for `{REASON FOR REJECT}` in hints (by type name); absent keeps it verbatim.
    pub reject_reasons: BTreeMap<String, String>,
    /// The answer of a `refuse` action.
    pub refusal: String,
}

impl Default for SafetyPolicy {
    fn default() -> Self {
        Self {
            disabled_types: Vec::new(),
            level_threshold: None,
            type_threshold: None,
            rules: Vec::new(),
            default_action: Action::Hint,
            hints: BTreeMap::new(),
            reject_reasons: BTreeMap::new(),
            refusal: "I'm sorry, but I can't help with this image.".into(),
        }
    }
}

/// The policy's verdict on one assessment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// What happens.
    pub action: Action,
    /// Which rule decided: `invalid_assessment` (a refusal, whatever the policy), `safe_level`, `safe_type`, `level_threshold`, `type_threshold`, `type_disabled`,
    /// `no_hint_text`, `rules[i]` or `default_action`.
    pub rule: String,
    /// The hint's cell, `"level/type"` by name, when a hint is used.
    pub hint_id: Option<String>,
    /// The hint text added to the prompt (`hint` action).
    pub hint: Option<String>,
    /// The answer given instead of the LLM's (`refuse` action).
    pub refusal: Option<String>,
}

impl Decision {
    fn allow(rule: &str) -> Self {
        Self { action: Action::Allow, rule: rule.into(), hint_id: None, hint: None, refusal: None }
    }
}

impl SafetyPolicy {
    /// Reads a `.toml` or `.json` policy and checks it against the taxonomy.
    pub fn from_file(path: &Path, taxonomy: &Taxonomy) -> Result<Self, CoreError> {
        let text = std::fs::read_to_string(path).map_err(|source| CoreError::Io { path: path.into(), source })?;
        let toml = path.extension().and_then(|e| e.to_str()) == Some("toml");
        Self::parse(&text, toml, taxonomy).map_err(|e| CoreError::Parse { path: path.into(), reason: e.to_string() })
    }

    /// Parses TOML (`toml`) or JSON policy text and checks it against the taxonomy.
    pub fn parse(text: &str, toml: bool, taxonomy: &Taxonomy) -> Result<Self, CoreError> {
        let invalid = |reason: String| CoreError::Invalid { what: "policy", reason };
        let p: Self = if toml {
            toml::from_str(text).map_err(|e| invalid(e.to_string()))?
        } else {
            serde_json::from_str(text).map_err(|e| invalid(e.to_string()))?
        };
        p.validate(taxonomy)?;
        Ok(p)
    }

    /// This policy with a JSON merge patch (RFC 7386) applied: the per-request override of a server's policy.
    pub fn with_overrides(&self, patch: &serde_json::Value, taxonomy: &Taxonomy) -> Result<Self, CoreError> {
        let mut value =
            serde_json::to_value(self).map_err(|e| CoreError::Invalid { what: "policy", reason: e.to_string() })?;
        merge_patch(&mut value, patch);
        let p: Self =
            serde_json::from_value(value).map_err(|e| CoreError::Invalid { what: "policy", reason: e.to_string() })?;
        p.validate(taxonomy)?;
        Ok(p)
    }

    /// Checks every name and threshold against the taxonomy.
    pub fn validate(&self, taxonomy: &Taxonomy) -> Result<(), CoreError> {
        let invalid = |reason: String| CoreError::Invalid { what: "policy", reason };
        let levels: Vec<String> = taxonomy.levels.iter().map(|c| c.name.clone()).collect();
        let types: Vec<String> = taxonomy.types.iter().map(|c| c.name.clone()).collect();
        for t in self.disabled_types.iter().chain(self.reject_reasons.keys()) {
            Selector::Name(t.clone()).resolve(&types, "type")?;
        }
        for r in &self.rules {
            r.level.resolve(&levels, "level")?;
            r.risk_type.resolve(&types, "type")?;
        }
        for key in self.hints.keys() {
            let (l, t) =
                key.split_once('/').ok_or_else(|| invalid(format!("hint key {key:?} is not \"level/type\"")))?;
            Selector::Name(l.into()).resolve(&levels, "level")?;
            Selector::Name(t.into()).resolve(&types, "type")?;
        }
        for (name, th) in [("level_threshold", self.level_threshold), ("type_threshold", self.type_threshold)] {
            if th.is_some_and(|v| !(0.0..=1.0).contains(&v)) {
                return Err(invalid(format!("{name} must lie in [0, 1]")));
            }
        }
        Ok(())
    }

    /// Decides what to do with an assessment. The checks run in the order of [`Decision::rule`]'s list.
    /// An assessment that cannot be trusted ([`SafetyAssessment::fault`]) is refused whatever the policy says:
    /// the guard fails closed.
    pub fn decide(&self, a: &SafetyAssessment, taxonomy: &Taxonomy) -> Result<Decision, CoreError> {
        if a.fault(taxonomy).is_some() {
            let refusal = Some(self.refusal.clone());
            return Ok(Decision {
                action: Action::Refuse,
                rule: "invalid_assessment".into(),
                hint_id: None,
                hint: None,
                refusal,
            });
        }
        taxonomy.check(a.level, a.risk_type)?;
        if a.level == taxonomy.safe_level {
            return Ok(Decision::allow("safe_level"));
        }
        if a.risk_type == taxonomy.safe_type {
            return Ok(Decision::allow("safe_type"));
        }
        if self.level_threshold.is_some_and(|th| a.level_probs[a.level] < th) {
            return Ok(Decision::allow("level_threshold"));
        }
        if self.type_threshold.is_some_and(|th| a.type_probs[a.risk_type] < th) {
            return Ok(Decision::allow("type_threshold"));
        }
        let level_name = &taxonomy.levels[a.level].name;
        let type_name = &taxonomy.types[a.risk_type].name;
        if self.disabled_types.iter().any(|t| t == type_name) {
            return Ok(Decision::allow("type_disabled"));
        }
        let levels: Vec<String> = taxonomy.levels.iter().map(|c| c.name.clone()).collect();
        let types: Vec<String> = taxonomy.types.iter().map(|c| c.name.clone()).collect();
        let mut chosen = (self.default_action, "default_action".to_string());
        for (i, r) in self.rules.iter().enumerate() {
            let l = r.level.resolve(&levels, "level")?;
            let t = r.risk_type.resolve(&types, "type")?;
            if l.is_none_or(|l| l == a.level) && t.is_none_or(|t| t == a.risk_type) {
                chosen = (r.action, format!("rules[{i}]"));
                break;
            }
        }
        let (action, rule) = chosen;
        let hint_id = format!("{level_name}/{type_name}");
        match action {
            Action::Allow => Ok(Decision::allow(&rule)),
            Action::Refuse => {
                Ok(Decision { action, rule, hint_id: None, hint: None, refusal: Some(self.refusal.clone()) })
            }
            Action::Hint => {
                let text = match self.hints.get(&hint_id) {
                    Some(custom) => Some(custom.as_str()),
                    None => taxonomy.hint(a.level, a.risk_type)?,
                };
                let Some(text) = text else {
                    return Ok(Decision::allow("no_hint_text"));
                };
                let hint = match self.reject_reasons.get(type_name) {
                    Some(reason) => text.replace(REASON_PLACEHOLDER, reason),
                    None => text.to_string(),
                };
                Ok(Decision { action, rule, hint_id: Some(hint_id), hint: Some(hint), refusal: None })
            }
        }
    }
}

/// RFC 7386: objects merge key by key, `null` deletes, anything else replaces.
fn merge_patch(target: &mut serde_json::Value, patch: &serde_json::Value) {
    let Some(patch) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = serde_json::Value::Object(Default::default());
    }
    if let Some(obj) = target.as_object_mut() {
        for (k, v) in patch {
            if v.is_null() {
                obj.remove(k);
            } else {
                merge_patch(obj.entry(k.clone()).or_insert(serde_json::Value::Null), v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(level: usize, risk_type: usize, p: f32) -> SafetyAssessment {
        let tax = Taxonomy::default();
        let spread = |n: usize, at: usize| {
            (0..n).map(|i| if i == at { p } else { (1.0 - p) / (n - 1) as f32 }).collect::<Vec<f32>>()
        };
        SafetyAssessment {
            level_probs: spread(4, level),
            type_probs: spread(7, risk_type),
            level,
            level_name: tax.levels[level].name.clone(),
            risk_type,
            type_name: tax.types[risk_type].name.clone(),
        }
    }

    #[test]
    fn default_policy_is_the_reference_rule() {
        let tax = Taxonomy::default();
        let p = SafetyPolicy::default();
        for level in 0..4 {
            for t in 0..7 {
                let d = p.decide(&verdict(level, t, 0.9), &tax).unwrap();
                if level == 0 || t == 6 {
                    assert_eq!((d.action, d.hint), (Action::Allow, None), "({level}, {t})");
                } else {
                    assert_eq!(d.action, Action::Hint);
                    assert_eq!(d.hint.as_deref(), tax.hint(level, t).unwrap());
                    assert_eq!(d.rule, "default_action");
                }
            }
        }
        assert_eq!(p.decide(&verdict(0, 1, 0.9), &tax).unwrap().rule, "safe_level");
        assert_eq!(p.decide(&verdict(2, 6, 0.9), &tax).unwrap().rule, "safe_type");
    }

    #[test]
    fn switches_thresholds_rules_hints_and_reasons() {
        let tax = Taxonomy::default();
        let toml_text = r#"
            disabled_types = ["illegal"]
            level_threshold = 0.6
            refusal = "No."
            [[rules]]
            level = "high"
            type = "*"
            action = "refuse"
            [[rules]]
            level = 1
            type = "privacy"
            action = "allow"
            [hints]
            "medium/privacy" = "Blur faces. {REASON FOR REJECT}"
            [reject_reasons]
            privacy = "identify people"
        "#;
        let p: SafetyPolicy = toml::from_str(toml_text).unwrap();
        p.validate(&tax).unwrap();
        let d = |l, t, prob| p.decide(&verdict(l, t, prob), &tax).unwrap();
        assert_eq!((d(2, 1, 0.9).action, d(2, 1, 0.9).rule.as_str()), (Action::Allow, "type_disabled"));
        assert_eq!(d(2, 0, 0.5).rule, "level_threshold");
        let refused = d(3, 0, 0.9);
        assert_eq!(
            (refused.action, refused.rule.as_str(), refused.refusal.as_deref()),
            (Action::Refuse, "rules[0]", Some("No."))
        );
        assert_eq!((d(1, 4, 0.9).action, d(1, 4, 0.9).rule.as_str()), (Action::Allow, "rules[1]"));
        let custom = d(2, 4, 0.9);
        assert_eq!(custom.hint.as_deref(), Some("Blur faces. identify people"));
        assert_eq!(custom.hint_id.as_deref(), Some("medium/privacy"));
        let untouched = d(2, 0, 0.9);
        assert_eq!(untouched.hint.as_deref(), tax.hint(2, 0).unwrap());
    }

    #[test]
    fn overrides_merge_and_bad_names_are_refused() {
        let tax = Taxonomy::default();
        let base = SafetyPolicy { refusal: "Base.".into(), ..Default::default() };
        let p = base.with_overrides(&serde_json::json!({"disabled_types": ["privacy"]}), &tax).unwrap();
        assert_eq!((p.disabled_types.len(), p.refusal.as_str()), (1, "Base."));
        let err = base.with_overrides(&serde_json::json!({"disabled_types": ["porn"]}), &tax).unwrap_err();
        assert!(err.to_string().contains("unknown type \"porn\""), "{err}");
        let err = base.with_overrides(&serde_json::json!({"colour": 1}), &tax).unwrap_err();
        assert!(err.to_string().contains("unknown field `colour`"), "{err}");
        let err = base.with_overrides(&serde_json::json!({"level_threshold": 2.0}), &tax).unwrap_err();
        assert!(err.to_string().contains("level_threshold"), "{err}");
        assert!(
            toml::from_str::<SafetyPolicy>("[[rules]]\nlevel = 9\ntype = \"*\"\naction = \"refuse\"\n")
                .unwrap()
                .validate(&tax)
                .is_err()
        );
    }
}
