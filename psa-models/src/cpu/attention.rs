//! Scaled dot-product attention on host memory, one (sequence, head, query block) at a time: scores and weighted
//! values are blocked products ([`super::gemm`]) and the softmax skips what a query may not see.
use rayon::prelude::*;

use super::gemm::{self, Panels};

/// Query rows per attention task: large enough for the blocked product, small enough to spread a short sequence's
/// heads over threads.
pub const QUERY_BLOCK: usize = 64;

/// One query block's attention: `rows` queries (row `i` at `queries[i·ldq..]`, `keys.k()` values each) over the
/// `keys.n()` keys and values, key `s` visible to query `i` where `visible(i, s)`. Returns `[rows, values.n()]`;
/// a query that sees no key gets zeros.
pub fn attend(
    queries: &[f32],
    ldq: usize,
    rows: usize,
    keys: &impl Panels,
    values: &impl Panels,
    visible: impl Fn(usize, usize) -> bool,
) -> Vec<f32> {
    let seen = keys.n();
    let scale = 1.0 / (keys.k() as f32).sqrt();
    let mut scores = vec![0f32; rows * seen];
    gemm::matmul(queries, ldq, rows, keys, &mut scores, false);
    for (i, row) in scores.chunks_exact_mut(seen).enumerate() {
        row.iter_mut().for_each(|s| *s *= scale);
        super::softmax_visible(row, |s| visible(i, s));
    }
    let mut out = vec![0f32; rows * values.n()];
    gemm::matmul(&scores, seen, rows, values, &mut out, false);
    out
}

/// Runs `task(sequence, head, first, rows)` for every (sequence, head, query block) of `batch` sequences of `t`
/// queries on all threads, and places each block's `[rows, head_dim]` output at `[sequence, first + i, head]` of a
/// `[batch, t, heads·head_dim]` result.
pub fn per_head_blocks(
    batch: usize,
    t: usize,
    heads: usize,
    head_dim: usize,
    task: impl Fn(usize, usize, usize, usize) -> Vec<f32> + Sync,
) -> Vec<f32> {
    let blocks = t.div_ceil(QUERY_BLOCK);
    let split = |i: usize| (i / (heads * blocks), i / blocks % heads, i % blocks * QUERY_BLOCK);
    let outputs: Vec<Vec<f32>> = (0..batch * heads * blocks)
        .into_par_iter()
        .map(|i| {
            let (r, head, first) = split(i);
            task(r, head, first, QUERY_BLOCK.min(t - first))
        })
        .collect();
    let width = heads * head_dim;
    let mut out = vec![0f32; batch * t * width];
    for (i, o) in outputs.iter().enumerate() {
        let (r, head, first) = split(i);
        for (row, values) in o.chunks_exact(head_dim).enumerate() {
            out[(r * t + first + row) * width + head * head_dim..][..head_dim].copy_from_slice(values);
        }
    }
    out
}
