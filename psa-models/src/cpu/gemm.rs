//! Matrix products on host memory for the CPU engines: `c = a · b`, where `b` is read 32 output columns at a
//! time into a packed panel (`k` rows of 32) and each panel is multiplied with every row of `a` by a
//! register-blocked kernel (8 rows × 32 columns with AVX-512, 3 × 32 with AVX2 + FMA, picked at run time; a
//! portable loop elsewhere).
//!
//! Packing reads each weight once per product, whatever its stored form (f32 rows, transposed rows, or quantised
//! blocks dequantised on the fly), so one kernel serves every weight format and both operands of attention.
use rayon::prelude::*;

/// Output columns per packed panel.
pub const NR: usize = 32;

/// The right-hand factor of a product: `n` output columns over `k` inputs, delivered one panel at a time.
pub trait Panels: Sync {
    /// Output columns.
    fn n(&self) -> usize;
    /// Inputs per column (the shared dimension).
    fn k(&self) -> usize;
    /// Writes columns `j0..j0 + NR` as `k` rows of [`NR`] values (`out[p·NR + jj] = b(p, j0 + jj)`), zero past `n`.
    fn pack(&self, j0: usize, out: &mut [f32]);
    /// Panel `j` (columns `j·NR..`) when it is stored packed already, so products read it in place.
    fn panel(&self, _j: usize) -> Option<&[f32]> {
        None
    }
}

/// How a [`Strided`] factor's values are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `n` rows of `k` values, row `j` at `data[j·ld..]` (a PyTorch `Linear` weight, attention keys).
    Rows,
    /// `k` rows of `n` values, row `p` at `data[p·ld..]` (attention values, a Burn `Linear` weight).
    Cols,
}

/// A right-hand factor read from a strided slice.
#[derive(Debug, Clone, Copy)]
pub struct Strided<'a> {
    /// The values.
    pub data: &'a [f32],
    /// Output columns of the product.
    pub n: usize,
    /// The shared dimension.
    pub k: usize,
    /// Distance between the stored rows.
    pub ld: usize,
    /// Which of `n` and `k` the stored rows run along.
    pub layout: Layout,
}

impl<'a> Strided<'a> {
    /// `n` stored rows of `k` values.
    pub fn rows(data: &'a [f32], n: usize, k: usize, ld: usize) -> Self {
        Self { data, n, k, ld, layout: Layout::Rows }
    }

    /// `k` stored rows of `n` values.
    pub fn cols(data: &'a [f32], k: usize, n: usize, ld: usize) -> Self {
        Self { data, n, k, ld, layout: Layout::Cols }
    }
}

impl Panels for Strided<'_> {
    fn n(&self) -> usize {
        self.n
    }

    fn k(&self) -> usize {
        self.k
    }

    fn pack(&self, j0: usize, out: &mut [f32]) {
        let width = NR.min(self.n - j0);
        match self.layout {
            Layout::Rows => {
                if width < NR {
                    out.fill(0.0);
                }
                // A few inputs at a time, so the panel rows being written stay in L1.
                const STEP: usize = 16;
                for p0 in (0..self.k).step_by(STEP) {
                    let len = STEP.min(self.k - p0);
                    for jj in 0..width {
                        let row = &self.data[(j0 + jj) * self.ld + p0..][..len];
                        for (p, &v) in row.iter().enumerate() {
                            out[(p0 + p) * NR + jj] = v;
                        }
                    }
                }
            }
            Layout::Cols => {
                for p in 0..self.k {
                    let dst = &mut out[p * NR..(p + 1) * NR];
                    dst[..width].copy_from_slice(&self.data[p * self.ld + j0..][..width]);
                    dst[width..].fill(0.0);
                }
            }
        }
    }
}

/// Rows of `a` per block when `a` is too tall to stay in cache while every panel passes over it: each task then
/// multiplies one block of rows by one panel.
const MC: usize = 256;

/// `c = a · b` for the `m` rows of `a` (row `i` at `a[i·lda..]`, `b.k()` values used); `c` is `[m, b.n()]`.
///
/// With `threads`, (row block, panel) tasks are spread over rayon's threads; without, everything runs on the
/// calling thread (for callers that already run in parallel).
pub fn matmul(a: &[f32], lda: usize, m: usize, b: &impl Panels, c: &mut [f32], threads: bool) {
    let (n, k) = (b.n(), b.k());
    assert!(m == 0 || a.len() >= (m - 1) * lda + k, "left factor too short for {m} rows of {k} (stride {lda})");
    assert_eq!(c.len(), m * n, "product buffer does not match {m}×{n}");
    if m == 0 || n == 0 {
        return;
    }
    let panels = n.div_ceil(NR);
    let blocks = m.div_ceil(MC);
    // Several row blocks read every panel: pack each once up front unless it is stored packed already.
    let packed_all: Option<Vec<f32>> = (blocks > 1 && b.panel(0).is_none()).then(|| {
        let mut all = vec![0f32; panels * k * NR];
        all.par_chunks_mut(k * NR).enumerate().for_each(|(j, panel)| b.pack(j * NR, panel));
        all
    });
    let out = Product { ptr: c.as_mut_ptr(), n };
    let run = |task: usize, (packed, tile): &mut (Vec<f32>, Vec<f32>)| {
        let (block, j) = (task / panels, task % panels);
        let (first, rows) = (block * MC, MC.min(m - block * MC));
        let panel = match &packed_all {
            Some(all) => &all[j * k * NR..(j + 1) * k * NR],
            None => packed_panel(b, j, packed),
        };
        panel_product(&a[first * lda..], lda, rows, k, panel, tile);
        // SAFETY: `out` points into `c`, borrowed mutably for this whole call, and each task writes only its own
        // rows of its own panel's columns.
        unsafe { out.write_panel(j, first, &tile[..rows * NR]) };
    };
    let buffers = || (Vec::new(), vec![0f32; MC.min(m) * NR]);
    let tasks = blocks * panels;
    if threads && tasks > 1 && rayon::current_num_threads() > 1 {
        (0..tasks).into_par_iter().for_each_init(buffers, |bufs, t| run(t, bufs));
    } else {
        let mut bufs = buffers();
        (0..tasks).for_each(|t| run(t, &mut bufs));
    }
}

/// The `[m, n]` product buffer shared by the tasks of one [`matmul`]; each writes only its own rows and columns.
#[derive(Clone, Copy)]
struct Product {
    ptr: *mut f32,
    n: usize,
}

// SAFETY: tasks write disjoint parts of the buffer, which outlives them (see `matmul`).
unsafe impl Send for Product {}
// SAFETY: as above.
unsafe impl Sync for Product {}

impl Product {
    /// Copies a `[rows, NR]` tile of panel `j` into its columns, from row `first` on.
    ///
    /// # Safety
    /// The buffer must be alive, hold rows `first..first + rows`, and no other task may write those rows of panel
    /// `j`'s columns.
    unsafe fn write_panel(self, j: usize, first: usize, tile: &[f32]) {
        let width = NR.min(self.n - j * NR);
        for (i, row) in tile.chunks_exact(NR).enumerate() {
            // SAFETY: row first + i is inside the buffer; columns j·NR .. j·NR + width < n.
            unsafe { std::ptr::copy_nonoverlapping(row.as_ptr(), self.ptr.add((first + i) * self.n + j * NR), width) };
        }
    }
}

/// Panel `j` of `b`: in place when stored packed, else packed into `buffer`.
fn packed_panel<'a>(b: &'a impl Panels, j: usize, buffer: &'a mut Vec<f32>) -> &'a [f32] {
    match b.panel(j) {
        Some(panel) => panel,
        None => {
            buffer.resize(b.k() * NR, 0.0);
            b.pack(j * NR, buffer);
            buffer
        }
    }
}

/// `tile[i·NR + jj] = Σ_p a[i·lda + p] · packed[p·NR + jj]` for every row `i < m`, on the best kernel.
fn panel_product(a: &[f32], lda: usize, m: usize, k: usize, packed: &[f32], tile: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        x86::check_bounds(a, lda, m, k, packed, tile);
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F; every row and panel read is in bounds (checked above).
            return unsafe { x86::panel_avx512(a, lda, m, k, packed, tile) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: as above, with AVX2 and FMA.
            return unsafe { x86::panel_avx2(a, lda, m, k, packed, tile) };
        }
    }
    panel_portable(a, lda, m, k, packed, tile);
}

fn panel_portable(a: &[f32], lda: usize, m: usize, k: usize, packed: &[f32], tile: &mut [f32]) {
    for i in 0..m {
        let row = &a[i * lda..][..k];
        let mut acc = [0f32; NR];
        for (p, &x) in row.iter().enumerate() {
            let b = &packed[p * NR..(p + 1) * NR];
            acc.iter_mut().zip(b).for_each(|(s, &w)| *s += x * w);
        }
        tile[i * NR..(i + 1) * NR].copy_from_slice(&acc);
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::NR;
    use std::arch::x86_64::*;

    /// Checks what the unchecked kernels read and write.
    pub(super) fn check_bounds(a: &[f32], lda: usize, m: usize, k: usize, packed: &[f32], tile: &[f32]) {
        assert!(a.len() >= (m - 1) * lda + k && packed.len() >= k * NR && tile.len() >= m * NR);
    }

    /// Walks the rows of `a` and `tile` in blocks of up to `mr`, calling `kernel(rows, a, tile)` on each block.
    fn row_blocks(
        a: &[f32],
        lda: usize,
        m: usize,
        tile: &mut [f32],
        mr: usize,
        mut kernel: impl FnMut(usize, *const f32, *mut f32),
    ) {
        let mut i = 0;
        while i < m {
            let r = (m - i).min(mr);
            kernel(r, a[i * lda..].as_ptr(), tile[i * NR..].as_mut_ptr());
            i += r;
        }
    }

    /// # Safety
    /// The CPU has AVX-512F; `a` holds `m` rows of `k` values at stride `lda`, `packed` `k·NR` values, `tile`
    /// `m·NR` ([`check_bounds`]).
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn panel_avx512(a: &[f32], lda: usize, m: usize, k: usize, packed: &[f32], tile: &mut [f32]) {
        let b = packed.as_ptr();
        row_blocks(a, lda, m, tile, 8, |r, a, t| {
            // SAFETY: the CPU has AVX-512F, `a` has the block's r rows of k values, `tile` r rows of NR and the
            // panel k rows of NR (this function's contract).
            unsafe {
                match r {
                    8 => tile512::<8>(a, lda, k, b, t),
                    7 => tile512::<7>(a, lda, k, b, t),
                    6 => tile512::<6>(a, lda, k, b, t),
                    5 => tile512::<5>(a, lda, k, b, t),
                    4 => tile512::<4>(a, lda, k, b, t),
                    3 => tile512::<3>(a, lda, k, b, t),
                    2 => tile512::<2>(a, lda, k, b, t),
                    _ => tile512::<1>(a, lda, k, b, t),
                }
            }
        });
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn tile512<const R: usize>(a: *const f32, lda: usize, k: usize, b: *const f32, c: *mut f32) {
        let mut acc = [[_mm512_setzero_ps(); 2]; R];
        for p in 0..k {
            // SAFETY: p < k, so the panel row and each of the R left rows' element p are in bounds.
            unsafe {
                let b0 = _mm512_loadu_ps(b.add(p * NR));
                let b1 = _mm512_loadu_ps(b.add(p * NR + 16));
                for (i, acc) in acc.iter_mut().enumerate() {
                    let x = _mm512_set1_ps(*a.add(i * lda + p));
                    acc[0] = _mm512_fmadd_ps(x, b0, acc[0]);
                    acc[1] = _mm512_fmadd_ps(x, b1, acc[1]);
                }
            }
        }
        for (i, acc) in acc.iter().enumerate() {
            // SAFETY: row i < R of the tile has NR values.
            unsafe {
                _mm512_storeu_ps(c.add(i * NR), acc[0]);
                _mm512_storeu_ps(c.add(i * NR + 16), acc[1]);
            }
        }
    }

    /// # Safety
    /// As [`panel_avx512`], with AVX2 and FMA instead of AVX-512F.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn panel_avx2(a: &[f32], lda: usize, m: usize, k: usize, packed: &[f32], tile: &mut [f32]) {
        let b = packed.as_ptr();
        row_blocks(a, lda, m, tile, 3, |r, a, t| {
            // SAFETY: as in `panel_avx512`, with AVX2 and FMA.
            unsafe {
                match r {
                    3 => tile256::<3>(a, lda, k, b, t),
                    2 => tile256::<2>(a, lda, k, b, t),
                    _ => tile256::<1>(a, lda, k, b, t),
                }
            }
        });
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    // Column block outermost: the 4·R accumulators, R broadcasts and one column block fit the 16 registers.
    #[allow(clippy::needless_range_loop)]
    unsafe fn tile256<const R: usize>(a: *const f32, lda: usize, k: usize, b: *const f32, c: *mut f32) {
        let mut acc = [[_mm256_setzero_ps(); 4]; R];
        for p in 0..k {
            // SAFETY: as in `tile512`.
            unsafe {
                let mut x = [_mm256_setzero_ps(); R];
                for (i, x) in x.iter_mut().enumerate() {
                    *x = _mm256_set1_ps(*a.add(i * lda + p));
                }
                for q in 0..4 {
                    let bq = _mm256_loadu_ps(b.add(p * NR + 8 * q));
                    for i in 0..R {
                        acc[i][q] = _mm256_fmadd_ps(x[i], bq, acc[i][q]);
                    }
                }
            }
        }
        for (i, acc) in acc.iter().enumerate() {
            for (q, v) in acc.iter().enumerate() {
                // SAFETY: row i < R of the tile has NR values.
                unsafe { _mm256_storeu_ps(c.add(i * NR + 8 * q), *v) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use psa_core::compare::{max_abs_diff, max_abs_diff_pairs};

    fn values(n: usize, seed: usize) -> Vec<f32> {
        (0..n).map(|i| ((i * 37 + seed * 11) % 103) as f32 / 25.0 - 2.0).collect()
    }

    #[test]
    fn products_match_a_plain_loop_for_every_tail_and_layout() {
        // The last two span several row blocks (MC).
        for &(m, n, k) in &[(1, 1, 1), (7, 33, 5), (9, 64, 70), (20, 95, 129), (3, 32, 16), (600, 70, 40), (513, 33, 7)]
        {
            let a = values(m * (k + 3), 1);
            let w = values(n * k, 2);
            let want: Vec<f64> = (0..m)
                .flat_map(|i| {
                    let (a, w) = (&a, &w);
                    (0..n).map(move |j| (0..k).map(|p| a[i * (k + 3) + p] as f64 * w[j * k + p] as f64).sum())
                })
                .collect();
            let wt: Vec<f32> = (0..k * n).map(|x| w[(x % n) * k + x / n]).collect();
            for threads in [false, true] {
                let mut rows = vec![f32::NAN; m * n];
                matmul(&a, k + 3, m, &Strided::rows(&w, n, k, k), &mut rows, threads);
                let mut cols = vec![f32::NAN; m * n];
                matmul(&a, k + 3, m, &Strided::cols(&wt, k, n, n), &mut cols, threads);
                #[cfg(target_arch = "x86_64")]
                if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                    // The AVX2 kernel too, also where AVX-512 is what `matmul` picks.
                    let mut packed = vec![0f32; k * NR];
                    Strided::rows(&w, n, k, k).pack(0, &mut packed);
                    let mut tile = vec![0f32; m * NR];
                    x86::check_bounds(&a, k + 3, m, k, &packed, &tile);
                    // SAFETY: the CPU has AVX2 and FMA; the buffers have the sizes the kernel reads and writes.
                    unsafe { x86::panel_avx2(&a, k + 3, m, k, &packed, &mut tile) };
                    let err = max_abs_diff_pairs(
                        (0..m)
                            .flat_map(|i| (0..n.min(NR)).map(move |j| (i, j)))
                            .map(|(i, j)| (tile[i * NR + j], want[i * n + j])),
                    )
                    .unwrap();
                    assert!(err < 1e-4 * k as f64, "{m}×{n}×{k} AVX2 kernel off by {err}");
                }
                let mut portable = vec![0f32; m * NR];
                let mut packed = vec![0f32; k * NR];
                Strided::rows(&w, n, k, k).pack(0, &mut packed);
                panel_portable(&a, k + 3, m, k, &packed, &mut portable);
                for (got, what) in [(&rows, "rows"), (&cols, "cols")] {
                    let err = max_abs_diff(got, &want).unwrap();
                    assert!(err < 1e-4 * k as f64, "{m}×{n}×{k} {what} (threads {threads}) off by {err}");
                }
                let err = max_abs_diff_pairs(
                    (0..m)
                        .flat_map(|i| (0..n.min(NR)).map(move |j| (i, j)))
                        .map(|(i, j)| (portable[i * NR + j], want[i * n + j])),
                )
                .unwrap();
                assert!(err < 1e-4 * k as f64, "{m}×{n}×{k} portable kernel off by {err}");
            }
        }
    }
}
