//! Stage-I balancing: keep every risky sample and a seeded sample of `n` clean ones, in file
//! order.
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::index;

use super::jsonl::Sample;

/// How many clean samples stage I keeps, and the seed that picks them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Balance {
    /// Clean samples kept (reference: 3000).
    pub clean: usize,
    /// Seed of the draw (reference: 42).
    pub seed: u64,
}

impl Default for Balance {
    fn default() -> Self {
        Self { clean: 3000, seed: 42 }
    }
}

/// Keeps all samples whose type is not `safe_type` and `balance.clean` of the others, preserving file order.
pub fn balance(samples: Vec<Sample>, safe_type: usize, balance: Balance) -> Vec<Sample> {
    let clean: Vec<usize> =
        samples.iter().enumerate().filter(|(_, s)| s.risk_type == safe_type).map(|(i, _)| i).collect();
    let mut keep = vec![true; samples.len()];
    if clean.len() > balance.clean {
        clean.iter().for_each(|&i| keep[i] = false);
        let mut rng = StdRng::seed_from_u64(balance.seed);
        for j in index::sample(&mut rng, clean.len(), balance.clean) {
            keep[clean[j]] = true;
        }
    }
    samples.into_iter().zip(keep).filter(|(_, k)| *k).map(|(s, _)| s).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::jsonl::ImageRef;
    use psa_pipeline::processor::Message;

    fn sample(line: usize, risk_type: usize) -> Sample {
        Sample {
            line,
            id: None,
            image: ImageRef::Single("x".into()),
            messages: vec![Message::user("q"), Message::assistant("a")],
            level: 0,
            risk_type,
        }
    }

    #[test]
    fn keeps_every_risky_sample_and_n_clean_in_order() {
        let samples: Vec<Sample> = (0..100).map(|i| sample(i, if i % 10 == 0 { 2 } else { 6 })).collect();
        let kept = balance(samples.clone(), 6, Balance { clean: 20, seed: 42 });
        assert_eq!(kept.len(), 30);
        assert_eq!(kept.iter().filter(|s| s.risk_type == 2).count(), 10);
        assert!(kept.windows(2).all(|w| w[0].line < w[1].line), "file order kept");
        let again = balance(samples.clone(), 6, Balance { clean: 20, seed: 42 });
        assert_eq!(kept, again, "seeded");
        let other = balance(samples, 6, Balance { clean: 20, seed: 7 });
        assert_ne!(kept, other);
    }
}
