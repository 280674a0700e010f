//! The safety projector (the C-Abstractor) on the host, for CPU inference. Its work is small (a few hundred MFLOP
//! per image) but spread over some sixty tensor operations per image on a tensor backend, each allocating and
//! copying; here each RegNet bottleneck is a handful of passes over channels-last rows: 1×1 convolutions as blocked
//! products with weights packed once, the depthwise 3×3 convolution and the channel LayerNorms row by row on all
//! threads.
use burn::tensor::{Tensor, TensorData};
use psa_core::projector::{Bottleneck, ConvNorm};
use psa_core::{SafetyConfig, SafetyModules};
use rayon::prelude::*;

use crate::cpu::layers::{Dense, Norm, add, dense, host_vec, layer_norm, norm, pointwise, product};
use crate::cpu::{exp, map_slice, silu};
use crate::error::ModelError;

/// A 1×1 convolution and its channel LayerNorm.
#[derive(Debug, Clone)]
struct HostConvNorm {
    conv: Dense,
    norm: Norm,
}

impl HostConvNorm {
    fn new(c: &ConvNorm) -> Result<Self, ModelError> {
        Ok(Self { conv: pointwise(&c.conv)?, norm: norm(&c.bn)? })
    }

    fn forward(&self, x: &[f32], rows: usize, eps: f32) -> Vec<f32> {
        layer_norm(&product(&self.conv, x, rows), &self.norm, eps)
    }
}

/// One RegNet bottleneck.
#[derive(Debug, Clone)]
struct HostBlock {
    conv1: HostConvNorm,
    /// Depthwise 3×3 weights as `[9, channels]` (tap-major, so a tap scales a whole channels-last row).
    depthwise: Vec<f32>,
    norm2: Norm,
    se_reduce: Dense,
    se_expand: Dense,
    conv3: HostConvNorm,
    downsample: Option<HostConvNorm>,
}

impl HostBlock {
    fn new(b: &Bottleneck) -> Result<Self, ModelError> {
        let [c, per_group, kh, kw] = b.conv2.conv.weight.dims();
        if (per_group, kh, kw) != (1, 3, 3) {
            return Err(ModelError::Input(format!(
                "expected a depthwise 3×3 convolution, got {c}×{per_group}×{kh}×{kw}"
            )));
        }
        let w = host_vec(b.conv2.conv.weight.val())?;
        let depthwise =
            (0..9).flat_map(|tap| (0..c).map(move |ch| (tap, ch))).map(|(tap, ch)| w[ch * 9 + tap]).collect();
        Ok(Self {
            conv1: HostConvNorm::new(&b.conv1)?,
            depthwise,
            norm2: norm(&b.conv2.bn)?,
            se_reduce: pointwise(&b.se.fc1)?,
            se_expand: pointwise(&b.se.fc2)?,
            conv3: HostConvNorm::new(&b.conv3)?,
            downsample: b.downsample.as_ref().map(HostConvNorm::new).transpose()?,
        })
    }

    /// `x`: `b` images of `h × w` channels-last rows → the block's output, same layout.
    fn forward(&self, x: &[f32], (b, h, w): (usize, usize, usize), eps: f32) -> Vec<f32> {
        let rows = b * h * w;
        let mut shortcut = match &self.downsample {
            Some(d) => d.forward(x, rows, eps),
            None => x.to_vec(),
        };
        let mut y = self.conv1.forward(x, rows, eps);
        map_slice(&mut y, silu);
        let mut y = layer_norm(&depthwise_3x3(&y, &self.depthwise, (b, h, w)), &self.norm2, eps);
        map_slice(&mut y, silu);
        self.squeeze_excite(&mut y, b);
        let y = self.conv3.forward(&y, rows, eps);
        add(&mut shortcut, &y);
        map_slice(&mut shortcut, silu);
        shortcut
    }

    /// Scales each image's channels by `σ(expand(SiLU(reduce(mean over positions))))`.
    fn squeeze_excite(&self, y: &mut [f32], b: usize) {
        let c = self.depthwise.len() / 9;
        let positions = y.len() / (b * c);
        let means: Vec<f32> = y
            .chunks_exact(positions * c)
            .flat_map(|image| {
                let mut sum = vec![0f32; c];
                image.chunks_exact(c).for_each(|row| sum.iter_mut().zip(row).for_each(|(s, v)| *s += v));
                sum.into_iter().map(move |s| s / positions as f32)
            })
            .collect();
        let mut reduced = product(&self.se_reduce, &means, b);
        map_slice(&mut reduced, silu);
        let mut gate = product(&self.se_expand, &reduced, b);
        map_slice(&mut gate, |v| 1.0 / (1.0 + exp(-v)));
        y.par_chunks_mut(positions * c).zip(gate.par_chunks(c)).for_each(|(image, g)| {
            image.chunks_exact_mut(c).for_each(|row| row.iter_mut().zip(g).for_each(|(v, s)| *v *= s));
        });
    }
}

/// Depthwise 3×3 convolution with zero padding 1 over `b` images of `h × w` channels-last rows; `taps` is `[9, c]`.
fn depthwise_3x3(x: &[f32], taps: &[f32], (b, h, w): (usize, usize, usize)) -> Vec<f32> {
    let c = taps.len() / 9;
    let mut out = vec![0f32; b * h * w * c];
    out.par_chunks_mut(w * c).enumerate().for_each(|(line, out_line)| {
        let (image, i) = (line / h, line % h);
        for (j, o) in out_line.chunks_exact_mut(c).enumerate() {
            for (tap, k) in taps.chunks_exact(c).enumerate() {
                let (ii, jj) = ((i + tap / 3).wrapping_sub(1), (j + tap % 3).wrapping_sub(1));
                if ii < h && jj < w {
                    let src = &x[((image * h + ii) * w + jj) * c..][..c];
                    o.iter_mut().zip(src.iter().zip(k)).for_each(|(o, (s, k))| *o += s * k);
                }
            }
        }
    });
    out
}

/// Adaptive average pooling of `b` images of `g × g` channels-last rows to `q × q` (PyTorch's windows).
fn adaptive_pool(x: &[f32], b: usize, g: usize, q: usize, c: usize) -> Vec<f32> {
    if g == q {
        return x.to_vec();
    }
    let window = |o: usize| (o * g / q, ((o + 1) * g).div_ceil(q));
    let mut out = vec![0f32; b * q * q * c];
    for (cell, o) in out.chunks_exact_mut(c).enumerate() {
        let (image, oi, oj) = (cell / (q * q), cell / q % q, cell % q);
        let ((r0, r1), (c0, c1)) = (window(oi), window(oj));
        for i in r0..r1 {
            for j in c0..c1 {
                let src = &x[((image * g + i) * g + j) * c..][..c];
                o.iter_mut().zip(src).for_each(|(o, s)| *o += s);
            }
        }
        let inv = 1.0 / ((r1 - r0) * (c1 - c0)) as f32;
        o.iter_mut().for_each(|v| *v *= inv);
    }
    out
}

/// The C-Abstractor on the host: vision features in, the safety projector's output `h_s` out.
#[derive(Debug, Clone)]
pub struct HostAbstractor {
    s1: Vec<HostBlock>,
    s2: Vec<HostBlock>,
    readout: Vec<Dense>,
    query_grid: usize,
    eps: f32,
}

impl HostAbstractor {
    /// Copies the safety projector's weights to the host; `cfg` is the modules' configuration.
    pub fn new(safety: &SafetyModules, cfg: &SafetyConfig) -> Result<Self, ModelError> {
        let p = &safety.safe_mm_projector.proj;
        let blocks = |blocks: &[Bottleneck]| blocks.iter().map(HostBlock::new).collect::<Result<Vec<_>, _>>();
        Ok(Self {
            s1: blocks(&p.s1.blocks)?,
            s2: blocks(&p.s2.blocks)?,
            readout: p.readout.iter().map(|l| dense(&[l])).collect::<Result<_, _>>()?,
            query_grid: cfg.query_grid(),
            eps: cfg.norm_eps as f32,
        })
    }

    /// `h_s` from selected vision features: `[b, patches, vision_dim]` → `[b, num_queries, safety_dim]`, on the
    /// features' device (the same as `SafetyModules::project`).
    pub fn project(&self, features: Tensor<3>) -> Result<Tensor<3>, ModelError> {
        let ([b, n, _], device) = (features.dims(), features.device());
        let g = (n as f64).sqrt().round() as usize;
        if g * g != n {
            return Err(ModelError::Input(format!("the C-Abstractor needs a square patch grid, got {n} tokens")));
        }
        let mut x = host_vec(features)?;
        for block in &self.s1 {
            x = block.forward(&x, (b, g, g), self.eps);
        }
        let q = self.query_grid;
        let c = x.len() / (b * n);
        x = adaptive_pool(&x, b, g, q, c);
        for block in &self.s2 {
            x = block.forward(&x, (b, q, q), self.eps);
        }
        for (i, layer) in self.readout.iter().enumerate() {
            if i > 0 {
                map_slice(&mut x, silu);
            }
            x = product(layer, &x, b * q * q);
        }
        let width = x.len() / (b * q * q);
        Ok(Tensor::from_data(TensorData::new(x, [b, q * q, width]), &device))
    }
}
