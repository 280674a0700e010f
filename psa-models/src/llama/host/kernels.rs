//! Matrix-vector kernels of the host decoder: weight rows are dotted with a few activation rows, output rows are
//! spread over rayon's threads, and an AVX2 + FMA build of the same loops is picked at run time where the CPU
//! has it (the portable build stays correct everywhere).
use half::f16;
use rayon::prelude::*;

/// Elements per Q8_0 block (ggml's block size).
pub const Q8_BLOCK: usize = 32;
/// Output rows per parallel task: enough work to amortise scheduling, small enough to balance two threads.
const ROWS_PER_TASK: usize = 32;

/// A weight matrix `[rows, cols]` (PyTorch `Linear` layout: one row per output feature).
#[derive(Debug, Clone)]
pub struct HostMatrix {
    rows: usize,
    cols: usize,
    storage: Storage,
}

#[derive(Debug, Clone)]
enum Storage {
    F32(Vec<f32>),
    /// ggml Q8_0: per block of 32, a scale rounded to f16 and 32 signed bytes; `x = d·q`.
    Q8 {
        scales: Vec<f32>,
        quants: Vec<i8>,
    },
}

impl HostMatrix {
    /// Keeps `data` (row-major `[rows, cols]`) in f32.
    pub fn f32(rows: usize, cols: usize, data: Vec<f32>) -> Self {
        assert_eq!(data.len(), rows * cols, "matrix data does not match {rows}×{cols}");
        Self { rows, cols, storage: Storage::F32(data) }
    }

    /// Quantises `data` to Q8_0 exactly as ggml does (`d = max|x| / 127` rounded to f16, `q = round(x / d)`).
    pub fn q8_0(rows: usize, cols: usize, data: &[f32]) -> Result<Self, String> {
        assert_eq!(data.len(), rows * cols, "matrix data does not match {rows}×{cols}");
        if !cols.is_multiple_of(Q8_BLOCK) {
            return Err(format!("Q8_0 needs rows that are whole 32-element blocks; this matrix has {cols} columns"));
        }
        let mut scales = Vec::with_capacity(data.len() / Q8_BLOCK);
        let mut quants = Vec::with_capacity(data.len());
        for block in data.chunks_exact(Q8_BLOCK) {
            let amax = block.iter().fold(0f32, |m, &x| m.max(x.abs()));
            let d = amax / 127.0;
            let inv = if d == 0.0 { 0.0 } else { 1.0 / d };
            scales.push(f16::from_f32(d).to_f32());
            quants.extend(block.iter().map(|&x| (x * inv).round() as i8));
        }
        Ok(Self { rows, cols, storage: Storage::Q8 { scales, quants } })
    }

    /// Output features.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Input features.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Bytes the weights occupy.
    pub fn bytes(&self) -> usize {
        match &self.storage {
            Storage::F32(d) => 4 * d.len(),
            Storage::Q8 { scales, quants } => 2 * scales.len() + quants.len(),
        }
    }

    /// Row `r` in f32 (an embedding lookup).
    pub fn row(&self, r: usize) -> Vec<f32> {
        let c = self.cols;
        match &self.storage {
            Storage::F32(d) => d[r * c..(r + 1) * c].to_vec(),
            Storage::Q8 { scales, quants } => quants[r * c..(r + 1) * c]
                .chunks_exact(Q8_BLOCK)
                .zip(&scales[r * c / Q8_BLOCK..])
                .flat_map(|(q, &d)| q.iter().map(move |&v| d * v as f32))
                .collect(),
        }
    }

    /// `y = x · Wᵀ` for `n` activation rows: `x` is `[n, cols]`, the result `[n, rows]`.
    pub fn matvec(&self, x: &[f32], n: usize) -> Vec<f32> {
        assert_eq!(x.len(), n * self.cols, "activations do not match {n}×{}", self.cols);
        // Transposed output: each task owns a contiguous run of output rows for every activation row.
        let mut yt = vec![0f32; self.rows * n];
        yt.par_chunks_mut(ROWS_PER_TASK * n).enumerate().for_each(|(task, out)| {
            let first = task * ROWS_PER_TASK;
            rows_dispatch(self, x, n, first, out);
        });
        let mut y = vec![0f32; n * self.rows];
        for (j, col) in yt.chunks_exact(n).enumerate() {
            for (i, &v) in col.iter().enumerate() {
                y[i * self.rows + j] = v;
            }
        }
        y
    }
}

/// Computes output rows `first..` (as many as `out` holds) for every activation row, on the best kernel.
fn rows_dispatch(m: &HostMatrix, x: &[f32], n: usize, first: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU supports the features the function is compiled for.
        unsafe { rows_avx2(m, x, n, first, out) };
        return;
    }
    rows_portable(m, x, n, first, out);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn rows_avx2(m: &HostMatrix, x: &[f32], n: usize, first: usize, out: &mut [f32]) {
    rows_portable(m, x, n, first, out)
}

#[inline(always)]
fn rows_portable(m: &HostMatrix, x: &[f32], n: usize, first: usize, out: &mut [f32]) {
    let c = m.cols;
    for (k, y) in out.chunks_exact_mut(n).enumerate() {
        let r = first + k;
        match &m.storage {
            Storage::F32(d) => {
                let w = &d[r * c..(r + 1) * c];
                for (i, yi) in y.iter_mut().enumerate() {
                    *yi = dot_f32(w, &x[i * c..(i + 1) * c]);
                }
            }
            Storage::Q8 { scales, quants } => {
                let (q, s) = (&quants[r * c..(r + 1) * c], &scales[r * c / Q8_BLOCK..(r + 1) * c / Q8_BLOCK]);
                for (i, yi) in y.iter_mut().enumerate() {
                    *yi = dot_q8(q, s, &x[i * c..(i + 1) * c]);
                }
            }
        }
    }
}

/// Dot product with 16 independent accumulators (so the loop vectorises without reassociation flags).
#[inline(always)]
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..16 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[inline(always)]
fn dot_q8(q: &[i8], scales: &[f32], x: &[f32]) -> f32 {
    let mut total = [0f32; 8];
    for ((qb, xb), &d) in q.chunks_exact(Q8_BLOCK).zip(x.chunks_exact(Q8_BLOCK)).zip(scales) {
        let mut acc = [0f32; 8];
        for j in 0..Q8_BLOCK / 8 {
            for i in 0..8 {
                acc[i] += qb[j * 8 + i] as f32 * xb[j * 8 + i];
            }
        }
        for i in 0..8 {
            total[i] += d * acc[i];
        }
    }
    total.iter().sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matvec_matches_a_plain_loop_and_q8_stays_within_its_rounding() {
        let (rows, cols, n) = (70, 96, 3);
        let w: Vec<f32> = (0..rows * cols).map(|i| ((i * 37 % 101) as f32 - 50.0) / 40.0).collect();
        let x: Vec<f32> = (0..n * cols).map(|i| ((i * 13 % 29) as f32 - 14.0) / 9.0).collect();
        let want: Vec<f64> = (0..n)
            .flat_map(|i| {
                let (w, x) = (&w, &x);
                (0..rows).map(move |r| (0..cols).map(|k| w[r * cols + k] as f64 * x[i * cols + k] as f64).sum())
            })
            .collect();
        let got = HostMatrix::f32(rows, cols, w.clone()).matvec(&x, n);
        let err = got.iter().zip(&want).map(|(g, w)| (*g as f64 - w).abs()).fold(0.0, f64::max);
        assert!(err < 1e-4, "f32 matvec off by {err}");
        let q8 = HostMatrix::q8_0(rows, cols, &w).unwrap();
        assert_eq!(q8.bytes(), rows * cols / 32 * 34);
        // |error| ≤ Σ |x|·d/2 per row, with d ≤ max|w|/127 (+ f16 rounding of d).
        let bound = x.chunks(cols).map(|r| r.iter().map(|v| v.abs()).sum::<f32>()).fold(0f32, f32::max) * 1.25 / 127.0;
        let err = q8.matvec(&x, n).iter().zip(&want).map(|(g, w)| (*g as f64 - w).abs()).fold(0.0, f64::max);
        assert!(err > 0.0 && err < bound as f64, "q8 error {err} outside (0, {bound})");
        assert_eq!(q8.row(1).len(), cols);
        assert!(HostMatrix::q8_0(1, 33, &[0.0; 33]).unwrap_err().contains("33 columns"));
    }
}
