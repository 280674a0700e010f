//! The safety projector: HoneyBee's C-Abstractor with timm RegNet semantics.
//!
//! `s1` RegStage (vision width → abstractor width) → adaptive average pool to the query grid → `s2` RegStage →
//! readout MLP (Linear, SiLU, Linear, …). Each RegStage holds `depth` timm `Bottleneck`s: 1×1 conv → channel
//! LayerNorm → SiLU; depthwise 3×3 → LayerNorm → SiLU; squeeze-excitation (reduced width from the block's *input*
//! channels, SiLU inside); 1×1 conv → LayerNorm; projection shortcut when widths differ; SiLU after the sum.
use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{LayerNorm, LayerNormConfig, Linear, PaddingConfig2d};
use burn::tensor::module::adaptive_avg_pool2d;
use burn::tensor::{Device, Int, Tensor, activation};

use crate::config::SafetyConfig;
use crate::init;

/// A bias-free convolution followed by a channel LayerNorm (timm `ConvNormAct`; the norm is named `bn`).
#[derive(Module, Debug)]
pub struct ConvNorm {
    /// The convolution.
    pub conv: Conv2d,
    /// Channel LayerNorm (per spatial position, over channels).
    pub bn: LayerNorm,
}

impl ConvNorm {
    fn new(cin: usize, cout: usize, kernel: usize, groups: usize, eps: f64, device: &Device) -> Self {
        let pad = kernel / 2;
        Self {
            conv: init::normal_conv(
                Conv2dConfig::new([cin, cout], [kernel, kernel])
                    .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
                    .with_groups(groups)
                    .with_bias(false),
                device,
            ),
            bn: LayerNormConfig::new(cout).with_epsilon(eps).init(device),
        }
    }

    /// Convolution then channel LayerNorm, `[b, c, h, w]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        layer_norm_2d(&self.bn, self.conv.forward(x))
    }
}

/// LayerNorm over the channel axis of `[b, c, h, w]` (timm `LayerNorm2d`; not `GroupNorm(1)`).
pub fn layer_norm_2d(norm: &LayerNorm, x: Tensor<4>) -> Tensor<4> {
    norm.forward(x.permute([0, 2, 3, 1])).permute([0, 3, 1, 2])
}

/// Squeeze-and-excitation with SiLU (timm `SEModule` as built by RegNet).
#[derive(Module, Debug)]
pub struct SqueezeExcite {
    /// Reduce: channels → rd.
    pub fc1: Conv2d,
    /// Expand: rd → channels.
    pub fc2: Conv2d,
}

impl SqueezeExcite {
    /// Scales each channel by a gate computed from its spatial mean.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let s = x.clone().mean_dim(3).mean_dim(2);
        let s = activation::sigmoid(self.fc2.forward(activation::silu(self.fc1.forward(s))));
        x * s
    }
}

/// timm RegNet `Bottleneck` with `bottle_ratio = 1`, `group_size = 1` (depthwise 3×3).
#[derive(Module, Debug)]
pub struct Bottleneck {
    /// 1×1 conv + norm (+ SiLU).
    pub conv1: ConvNorm,
    /// Depthwise 3×3 conv + norm (+ SiLU).
    pub conv2: ConvNorm,
    /// Squeeze-excitation.
    pub se: SqueezeExcite,
    /// 1×1 conv + norm, no activation.
    pub conv3: ConvNorm,
    /// 1×1 projection shortcut when the width changes.
    pub downsample: Option<ConvNorm>,
}

impl Bottleneck {
    /// A block from `cin` to `cout` channels.
    pub fn new(cin: usize, cout: usize, cfg: &SafetyConfig, device: &Device) -> Self {
        let eps = cfg.norm_eps;
        let rd = (cin as f64 * cfg.se_ratio).round() as usize;
        let one = |i, o| init::normal_conv(Conv2dConfig::new([i, o], [1, 1]), device);
        Self {
            conv1: ConvNorm::new(cin, cout, 1, 1, eps, device),
            conv2: ConvNorm::new(cout, cout, 3, cout, eps, device),
            se: SqueezeExcite { fc1: one(cout, rd), fc2: one(rd, cout) },
            conv3: ConvNorm::new(cout, cout, 1, 1, eps, device),
            downsample: (cin != cout).then(|| ConvNorm::new(cin, cout, 1, 1, eps, device)),
        }
    }

    /// # Shapes
    /// - `x`: `[b, cin, h, w]` → `[b, cout, h, w]`
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let shortcut = match &self.downsample {
            Some(d) => d.forward(x.clone()),
            None => x.clone(),
        };
        let y = activation::silu(self.conv1.forward(x));
        let y = activation::silu(self.conv2.forward(y));
        let y = self.conv3.forward(self.se.forward(y));
        activation::silu(y + shortcut)
    }
}

/// A stage of `depth` bottlenecks (checkpoint names `b1`, `b2`, …; here `blocks.0`, `blocks.1`, …).
#[derive(Module, Debug)]
pub struct RegStage {
    /// The blocks.
    pub blocks: Vec<Bottleneck>,
}

impl RegStage {
    fn new(cin: usize, cout: usize, cfg: &SafetyConfig, device: &Device) -> Self {
        let blocks = (0..cfg.abstractor_depth)
            .map(|i| Bottleneck::new(if i == 0 { cin } else { cout }, cout, cfg, device))
            .collect();
        Self { blocks }
    }

    /// Runs the blocks in order.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.blocks.iter().fold(x, |x, b| b.forward(x))
    }
}

/// The C-Abstractor (reference `safe_mm_projector.proj`).
#[derive(Module, Debug)]
pub struct CAbstractor {
    /// First stage, vision width → abstractor width (`net.0`).
    pub s1: RegStage,
    /// Second stage at the abstractor width (`net.2`; `net.1` is the pool).
    pub s2: RegStage,
    /// Readout linears (`readout.0`, `readout.2`, …; SiLU between them).
    pub readout: Vec<Linear>,
    query_grid: usize,
}

impl CAbstractor {
    /// Builds the abstractor with random weights.
    pub fn new(cfg: &SafetyConfig, device: &Device) -> Self {
        let w = cfg.abstractor_width;
        let readout = (0..cfg.abstractor_mlp_depth)
            .map(|i| init::normal_linear(if i == 0 { w } else { cfg.safety_dim }, cfg.safety_dim, device))
            .collect();
        Self {
            s1: RegStage::new(cfg.vision_dim, w, cfg, device),
            s2: RegStage::new(w, w, cfg, device),
            readout,
            query_grid: cfg.query_grid(),
        }
    }

    /// Patch tokens to a channels-first grid: `[b, n, d]` → `[b, d, √n, √n]` (token index = row·√n + col).
    pub fn to_grid(tokens: Tensor<3>) -> Tensor<4> {
        let [b, n, d] = tokens.dims();
        let g = (n as f64).sqrt().round() as usize;
        assert_eq!(g * g, n, "the C-Abstractor needs a square patch grid, got {n} tokens");
        // Gather into a fresh tensor first: on Burn 0.22.1's wgpu backend a Conv2d fed from a sliced view (the
        // CLS-dropped vision features) read the wrong elements (max error 6.05 against flex on the tiny fixture),
        // while a copy is exact on every backend.
        let rows = Tensor::<1, Int>::arange(0..n as i64, &tokens.device());
        tokens.select(1, rows).reshape([b, g, g, d]).permute([0, 3, 1, 2])
    }

    /// Adaptive average pool to the query grid (identity when the grids match).
    pub fn pool(&self, x: Tensor<4>) -> Tensor<4> {
        let [_, _, h, w] = x.dims();
        if h == self.query_grid && w == self.query_grid {
            return x;
        }
        adaptive_avg_pool2d(x, [self.query_grid, self.query_grid])
    }

    /// # Shapes
    /// - `features`: `[b, patches, vision_dim]` → `[b, num_queries, safety_dim]`
    pub fn forward(&self, features: Tensor<3>) -> Tensor<3> {
        let x = self.s2.forward(self.pool(self.s1.forward(Self::to_grid(features))));
        let [b, c, h, w] = x.dims();
        let mut y = x.reshape([b, c, h * w]).swap_dims(1, 2);
        for (i, layer) in self.readout.iter().enumerate() {
            if i > 0 {
                y = activation::silu(y);
            }
            y = layer.forward(y);
        }
        y
    }
}
