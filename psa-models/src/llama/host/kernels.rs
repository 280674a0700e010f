//! Weight matrices of the host decoder and their products. A few activation rows (decode steps) take
//! matrix-vector kernels: weight rows are dotted with each activation row, output rows are spread over rayon's
//! threads, and an AVX2 + FMA build of the same loops is picked at run time where the CPU has it (the portable
//! build stays correct everywhere). Many rows (prefill) take the blocked product of [`crate::cpu::gemm`], which
//! unpacks Q8_0 blocks one panel at a time.
use half::f16;
use rayon::prelude::*;

use crate::cpu::gemm::{self, NR, Panels, Strided};
use crate::error::ModelError;

/// Elements per Q8_0 block (ggml's block size).
pub const Q8_BLOCK: usize = 32;
/// Output rows per parallel task: enough work to amortise scheduling, small enough to balance two threads.
const ROWS_PER_TASK: usize = 32;
/// Activation rows from which a product takes the blocked kernel: below, each weight is read once per call by the
/// matrix-vector kernel anyway, and packing would not pay.
const BLOCKED_FROM: usize = 8;

/// A weight matrix `[rows, cols]` (PyTorch `Linear` layout: one row per output feature).
#[derive(Debug, Clone)]
pub struct HostMatrix {
    rows: usize,
    cols: usize,
    storage: Storage,
}

#[derive(Debug, Clone)]
enum Storage {
    /// Packed for the blocked product: panel `j` (rows `32j..32j + 32`) is `cols` runs of 32 values, zero past
    /// the last row.
    F32(Vec<f32>),
    /// ggml Q8_0: per block of 32, a scale rounded to f16 and 32 signed bytes; `x = d·q`.
    Q8 { scales: Vec<f32>, quants: Vec<i8> },
}

impl HostMatrix {
    /// Keeps `data` (row-major `[rows, cols]`) in f32, packed once into the blocked product's panels.
    pub fn f32(rows: usize, cols: usize, data: Vec<f32>) -> Self {
        assert_eq!(data.len(), rows * cols, "matrix data does not match {rows}×{cols}");
        Self::packed(&Strided::rows(&data, rows, cols, cols))
    }

    /// The matrix whose row `r` is output column `r` of `source` (`[source.n(), source.k()]`), in f32, packed.
    pub fn packed(source: &impl Panels) -> Self {
        let (rows, cols) = (source.n(), source.k());
        let mut packed = vec![0f32; rows.div_ceil(NR) * cols * NR];
        packed.par_chunks_mut((cols * NR).max(1)).enumerate().for_each(|(j, panel)| source.pack(j * NR, panel));
        Self { rows, cols, storage: Storage::F32(packed) }
    }

    /// Quantises `data` to Q8_0 exactly as ggml does (`d = max|x| / 127` rounded to f16, `q = round(x / d)`).
    pub fn q8_0(rows: usize, cols: usize, data: &[f32]) -> Result<Self, ModelError> {
        assert_eq!(data.len(), rows * cols, "matrix data does not match {rows}×{cols}");
        if !cols.is_multiple_of(Q8_BLOCK) {
            return Err(ModelError::HostDecoder(format!(
                "Q8_0 needs rows that are whole 32-element blocks; this matrix has {cols} columns"
            )));
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
            Storage::F32(d) => 4 * d.len().min(self.rows * self.cols),
            Storage::Q8 { scales, quants } => 2 * scales.len() + quants.len(),
        }
    }

    /// Row `r` in f32 (an embedding lookup).
    pub fn row(&self, r: usize) -> Vec<f32> {
        let c = self.cols;
        match &self.storage {
            Storage::F32(d) => d[r / NR * c * NR + r % NR..].iter().step_by(NR).take(c).copied().collect(),
            Storage::Q8 { scales, quants } => quants[r * c..(r + 1) * c]
                .chunks_exact(Q8_BLOCK)
                .zip(&scales[r * c / Q8_BLOCK..])
                .flat_map(|(q, &d)| q.iter().map(move |&v| d * v as f32))
                .collect(),
        }
    }

    /// `y = x · Wᵀ` for `n` activation rows: `x` is `[n, cols]`, the result `[n, rows]`. f32 weights always take
    /// the blocked product (their panels are packed already); Q8_0 weights take it from `BLOCKED_FROM` rows.
    pub fn matmul(&self, x: &[f32], n: usize) -> Vec<f32> {
        if let Storage::Q8 { scales, quants } = &self.storage
            && n < BLOCKED_FROM
        {
            return self.matvec_q8(Q8 { scales, quants, cols: self.cols }, x, n);
        }
        assert_eq!(x.len(), n * self.cols, "activations do not match {n}×{}", self.cols);
        let mut y = vec![0f32; n * self.rows];
        gemm::matmul(x, self.cols, n, self, &mut y, true);
        y
    }

    /// [`HostMatrix::matmul`] on the matrix-vector kernel, for few activation rows of Q8_0 weights.
    fn matvec_q8(&self, q8: Q8, x: &[f32], n: usize) -> Vec<f32> {
        assert_eq!(x.len(), n * self.cols, "activations do not match {n}×{}", self.cols);
        // Transposed output: each task owns a contiguous run of output rows for every activation row.
        let mut yt = vec![0f32; self.rows * n];
        yt.par_chunks_mut(ROWS_PER_TASK * n).enumerate().for_each(|(task, out)| {
            let first = task * ROWS_PER_TASK;
            rows_dispatch(q8, x, n, first, out);
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

impl Panels for HostMatrix {
    fn n(&self) -> usize {
        self.rows
    }

    fn k(&self) -> usize {
        self.cols
    }

    fn panel(&self, j: usize) -> Option<&[f32]> {
        match &self.storage {
            Storage::F32(d) => Some(&d[j * self.cols * NR..(j + 1) * self.cols * NR]),
            Storage::Q8 { .. } => None,
        }
    }

    fn pack(&self, j0: usize, out: &mut [f32]) {
        let c = self.cols;
        match &self.storage {
            Storage::F32(d) => out.copy_from_slice(&d[j0 * c..(j0 + NR) * c]),
            Storage::Q8 { scales, quants } => {
                let width = NR.min(self.rows - j0);
                if width < NR {
                    out.fill(0.0);
                }
                for jj in 0..width {
                    let r = j0 + jj;
                    let blocks = quants[r * c..(r + 1) * c].chunks_exact(Q8_BLOCK).zip(&scales[r * c / Q8_BLOCK..]);
                    for (b, (q, &d)) in blocks.enumerate() {
                        for (e, &v) in q.iter().enumerate() {
                            out[(b * Q8_BLOCK + e) * NR + jj] = d * v as f32;
                        }
                    }
                }
            }
        }
    }
}

/// The parts of a Q8_0 matrix the matrix-vector kernel reads.
#[derive(Clone, Copy)]
struct Q8<'a> {
    scales: &'a [f32],
    quants: &'a [i8],
    cols: usize,
}

/// Computes output rows `first..` (as many as `out` holds) for every activation row, on the best kernel.
fn rows_dispatch(m: Q8, x: &[f32], n: usize, first: usize, out: &mut [f32]) {
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
unsafe fn rows_avx2(m: Q8, x: &[f32], n: usize, first: usize, out: &mut [f32]) {
    rows_portable(m, x, n, first, out)
}

#[inline(always)]
fn rows_portable(m: Q8, x: &[f32], n: usize, first: usize, out: &mut [f32]) {
    let c = m.cols;
    for (k, y) in out.chunks_exact_mut(n).enumerate() {
        let r = first + k;
        let (q, s) = (&m.quants[r * c..(r + 1) * c], &m.scales[r * c / Q8_BLOCK..(r + 1) * c / Q8_BLOCK]);
        for (i, yi) in y.iter_mut().enumerate() {
            *yi = dot_q8(q, s, &x[i * c..(i + 1) * c]);
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
    use psa_core::compare::{max_abs, max_abs_diff};

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
        let f32 = HostMatrix::f32(rows, cols, w.clone());
        let err = max_abs_diff(&f32.matmul(&x, n), &want).unwrap();
        assert!(err < 1e-4, "f32 product off by {err}");
        assert_eq!(f32.row(33), w[33 * cols..34 * cols], "a row read back from the packed panels");
        assert_eq!(f32.bytes(), 4 * rows * cols);
        let q8 = HostMatrix::q8_0(rows, cols, &w).unwrap();
        assert_eq!(q8.bytes(), rows * cols / 32 * 34);
        // |error| ≤ Σ |x|·d/2 per row, with d ≤ max|w|/127 (+ f16 rounding of d).
        let sums: Vec<f32> = x.chunks(cols).map(|r| r.iter().map(|v| v.abs()).sum::<f32>()).collect();
        let bound = max_abs(&sums).unwrap() * 1.25 / 127.0;
        let err = max_abs_diff(&q8.matmul(&x, n), &want).unwrap();
        assert!(err > 0.0 && err < bound as f64, "q8 error {err} outside (0, {bound})");
        assert_eq!(q8.row(1).len(), cols);
        // With many rows Q8_0 takes the blocked product, unpacking its blocks: the same values as row by row.
        let many: Vec<f32> = (0..20 * cols).map(|i| ((i * 7 % 31) as f32 - 15.0) / 11.0).collect();
        let Storage::Q8 { scales, quants } = &q8.storage else { panic!("a Q8_0 matrix") };
        let rowwise = q8.matvec_q8(Q8 { scales, quants, cols }, &many, 20);
        let err = max_abs_diff(&q8.matmul(&many, 20), &rowwise).unwrap();
        assert!(err < 1e-4, "blocked and row-wise Q8_0 products differ by {err}");
        assert!(HostMatrix::q8_0(1, 33, &[0.0; 33]).unwrap_err().to_string().contains("33 columns"));
    }
}
