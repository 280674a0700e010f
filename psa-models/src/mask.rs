//! Padding masks and the position ids and attention masks derived from them.
use burn::tensor::{Bool, Device, Tensor, TensorData};

/// Which positions of each row hold real tokens (`true`) or padding (`false`), past and present.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaddingMask {
    rows: Vec<Vec<bool>>,
}

impl PaddingMask {
    /// A mask from per-row flags; every row must have the same length.
    pub fn new(rows: Vec<Vec<bool>>) -> Self {
        let len = rows.first().map_or(0, Vec::len);
        assert!(rows.iter().all(|r| r.len() == len), "padding mask rows differ in length");
        Self { rows }
    }

    /// A mask from a 0/1 attention mask.
    pub fn from_attention_mask(mask: &[Vec<i64>]) -> Self {
        Self::new(mask.iter().map(|r| r.iter().map(|&m| m != 0).collect()).collect())
    }

    /// No padding.
    pub fn full(batch: usize, len: usize) -> Self {
        Self { rows: vec![vec![true; len]; batch] }
    }

    /// Rows in the batch.
    pub fn batch(&self) -> usize {
        self.rows.len()
    }

    /// Positions per row.
    pub fn len(&self) -> usize {
        self.rows.first().map_or(0, Vec::len)
    }

    /// Whether the mask has no positions.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The per-row flags.
    pub fn rows(&self) -> &[Vec<bool>] {
        &self.rows
    }

    /// Appends `n` real positions to every row.
    pub fn extend(&mut self, n: usize) {
        for r in &mut self.rows {
            r.extend(std::iter::repeat_n(true, n));
        }
    }

    /// Index of the last real position of each row.
    pub fn last_real(&self) -> Vec<usize> {
        self.rows.iter().map(|r| r.iter().rposition(|&m| m).unwrap_or(0)).collect()
    }

    /// Position ids of the last `query_len` positions: `cumsum(mask) − 1`, padding at 0.
    pub fn position_ids(&self, query_len: usize) -> Vec<Vec<usize>> {
        let start = self.len() - query_len;
        self.rows
            .iter()
            .map(|r| {
                let mut count = 0usize;
                let all: Vec<usize> = r
                    .iter()
                    .map(|&m| {
                        count += m as usize;
                        if m { count - 1 } else { 0 }
                    })
                    .collect();
                all[start..].to_vec()
            })
            .collect()
    }

    /// Causal + padding attention mask `[batch, 1, query_len, len]`, `true` = masked.
    pub fn attention_mask(&self, query_len: usize, device: &Device) -> Tensor<4, Bool> {
        let (b, s) = (self.batch(), self.len());
        let past = s - query_len;
        let mut data = Vec::with_capacity(b * query_len * s);
        for r in &self.rows {
            for q in 0..query_len {
                data.extend((0..s).map(|k| k > past + q || !r[k]));
            }
        }
        Tensor::from_data(TensorData::new(data, [b, 1, query_len, s]), device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_follow_cumsum_for_left_and_right_padding() {
        let m = PaddingMask::new(vec![vec![false, false, true, true, true], vec![true, true, true, false, false]]);
        assert_eq!(m.position_ids(5), vec![vec![0, 0, 0, 1, 2], vec![0, 1, 2, 0, 0]]);
        assert_eq!(m.position_ids(2), vec![vec![1, 2], vec![0, 0]]);
        assert_eq!(m.last_real(), vec![4, 2]);
    }
}
