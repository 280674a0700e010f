//! Training recipes: the paper's hyper-parameters as presets, every field overridable.
use burn::optim::AdamWConfig;
use serde::{Deserialize, Serialize};

/// Optimisation settings of one stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recipe {
    /// Peak learning rate.
    pub lr: f64,
    /// Linear warm-up steps from 0 (optimizer steps).
    pub warmup_steps: usize,
    /// Passes over the data.
    pub epochs: usize,
    /// Samples per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimizer step (effective batch = batch_size × grad_accum × devices).
    pub grad_accum: usize,
    /// Global gradient-norm clip.
    pub max_grad_norm: f32,
    /// AdamW β1 (PyTorch default, set explicitly: Burn's defaults differ).
    pub beta_1: f32,
    /// AdamW β2.
    pub beta_2: f32,
    /// AdamW ε (PyTorch 1e-8; Burn's default is 1e-5).
    pub epsilon: f32,
    /// AdamW weight decay (the recipe uses 0).
    pub weight_decay: f32,
    /// Seed of shuffling and initialisation.
    pub seed: u64,
    /// Maximum tokens per sample before image expansion.
    pub max_len: usize,
    /// Stage I: include the LM term `L_LLM` (the paper). Without it only the concept loss trains (no LLM pass; the
    /// LLM-side safety tokens S2, trained only by `L_LLM`, stay as initialised) — a fast CPU variant.
    #[serde(default = "yes")]
    pub lm_loss: bool,
}

fn yes() -> bool {
    true
}

impl Recipe {
    /// Stage I of the paper: lr 1e-5, warm-up 20, 3 epochs, effective batch 128 (2 × 64 on one device).
    pub fn stage1() -> Self {
        Self {
            lr: 1e-5,
            warmup_steps: 20,
            epochs: 3,
            batch_size: 2,
            grad_accum: 64,
            max_grad_norm: 1.0,
            beta_1: 0.9,
            beta_2: 0.999,
            epsilon: 1e-8,
            weight_decay: 0.0,
            seed: 42,
            max_len: 2048,
            lm_loss: true,
        }
    }

    /// Stage II of the paper: as stage I with warm-up 300.
    pub fn stage2() -> Self {
        Self { warmup_steps: 300, ..Self::stage1() }
    }

    /// Checks every value can train: a NaN learning rate or a zero batch size is refused before any work.
    pub fn validate(&self) -> Result<(), RecipeError> {
        let bad = |name, value: f64, rule| RecipeError { name, value, rule };
        let finite_non_negative = [("lr", self.lr), ("weight_decay", f64::from(self.weight_decay))];
        if let Some(&(name, v)) = finite_non_negative.iter().find(|(_, v)| !v.is_finite() || *v < 0.0) {
            return Err(bad(name, v, "must be finite and non-negative"));
        }
        let positive = [("max_grad_norm", self.max_grad_norm), ("epsilon", self.epsilon)];
        if let Some(&(name, v)) = positive.iter().find(|(_, v)| !v.is_finite() || *v <= 0.0) {
            return Err(bad(name, f64::from(v), "must be finite and positive"));
        }
        if let Some(&(name, v)) =
            [("beta_1", self.beta_1), ("beta_2", self.beta_2)].iter().find(|(_, v)| !(0.0..1.0).contains(v))
        {
            return Err(bad(name, f64::from(v), "must lie in [0, 1)"));
        }
        let counts = [("batch_size", self.batch_size), ("grad_accum", self.grad_accum), ("max_len", self.max_len)];
        if let Some(&(name, v)) = counts.iter().find(|(_, v)| *v == 0) {
            return Err(bad(name, v as f64, "must be at least 1"));
        }
        Ok(())
    }

    /// The optimiser: `torch.optim.AdamW` with this recipe's β1, β2, ε and weight decay (each set explicitly:
    /// Burn's defaults differ from PyTorch's).
    pub fn optimizer(&self) -> AdamWConfig {
        AdamWConfig::new()
            .with_beta_1(self.beta_1)
            .with_beta_2(self.beta_2)
            .with_epsilon(self.epsilon)
            .with_weight_decay(self.weight_decay)
    }

    /// Learning rate at optimizer step `step` of `total`: linear warm-up from 0, then linear decay to 0
    /// (transformers' `get_linear_schedule_with_warmup`).
    pub fn lr_at(&self, step: usize, total: usize) -> f64 {
        if step < self.warmup_steps {
            return self.lr * step as f64 / self.warmup_steps.max(1) as f64;
        }
        let rest = total.saturating_sub(self.warmup_steps).max(1);
        self.lr * (total.saturating_sub(step) as f64 / rest as f64).max(0.0)
    }
}

/// A recipe value that cannot train.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{name} = {value}: {rule}")]
pub struct RecipeError {
    /// The field.
    pub name: &'static str,
    /// Its value.
    pub value: f64,
    /// What it must be.
    pub rule: &'static str,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_match_the_paper_and_schedule_warms_then_decays() {
        let r = Recipe::stage1();
        assert_eq!((r.lr, r.warmup_steps, r.epochs, r.batch_size * r.grad_accum), (1e-5, 20, 3, 128));
        assert_eq!(Recipe::stage2().warmup_steps, 300);
        assert_eq!(r.lr_at(0, 100), 0.0);
        assert!((r.lr_at(10, 100) - 5e-6).abs() < 1e-18);
        assert!((r.lr_at(20, 100) - 1e-5).abs() < 1e-18);
        assert!((r.lr_at(60, 100) - 5e-6).abs() < 1e-18);
        assert_eq!(r.lr_at(100, 100), 0.0);
    }

    #[test]
    fn recipes_that_cannot_train_are_refused() {
        assert_eq!(Recipe::stage1().validate(), Ok(()));
        let bad = [
            (Recipe { lr: f64::NAN, ..Recipe::stage1() }, "lr = NaN"),
            (Recipe { lr: -1.0, ..Recipe::stage1() }, "lr = -1"),
            (Recipe { batch_size: 0, ..Recipe::stage1() }, "batch_size"),
            (Recipe { grad_accum: 0, ..Recipe::stage1() }, "grad_accum"),
            (Recipe { max_grad_norm: f32::INFINITY, ..Recipe::stage1() }, "max_grad_norm = inf"),
            (Recipe { beta_2: 1.0, ..Recipe::stage1() }, "beta_2 = 1"),
        ];
        for (r, message) in bad {
            let err = r.validate().unwrap_err().to_string();
            assert!(err.starts_with(message), "{err}");
        }
    }
}
