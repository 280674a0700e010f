//! The reference initialisation of new safety parameters: Linear and Conv weights N(0, 0.02)
//! with zero biases, channel norms at 1/0, the packed MHA projection Xavier-uniform, tokens N(0, 0.02).
use burn::module::{Initializer, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{Device, Distribution, Tensor};

const STD: f64 = 0.02;

/// A Linear with N(0, 0.02) weights and a zero bias.
pub fn normal_linear(d_in: usize, d_out: usize, device: &Device) -> Linear {
    let mut l =
        LinearConfig::new(d_in, d_out).with_initializer(Initializer::Normal { mean: 0.0, std: STD }).init(device);
    l.bias = Some(Param::from_tensor(Tensor::zeros([d_out], device)));
    l
}

/// A Conv2d from `config` with N(0, 0.02) weights and, when it has one, a zero bias.
pub fn normal_conv(config: Conv2dConfig, device: &Device) -> Conv2d {
    let cout = config.channels[1];
    let has_bias = config.bias;
    let mut c = config.with_initializer(Initializer::Normal { mean: 0.0, std: STD }).init(device);
    if has_bias {
        c.bias = Some(Param::from_tensor(Tensor::zeros([cout], device)));
    }
    c
}

/// N(0, 0.02) tokens `[1, n, d]`.
pub fn normal_tokens(n: usize, d: usize, device: &Device) -> Tensor<3> {
    Tensor::random([1, n, d], Distribution::Normal(0.0, STD), device)
}

/// Xavier-uniform `[rows, cols]` (PyTorch's `nn.MultiheadAttention` `in_proj_weight` init).
pub fn xavier_uniform(shape: [usize; 2], device: &Device) -> Tensor<2> {
    let a = (6.0 / (shape[0] + shape[1]) as f64).sqrt();
    Tensor::random(shape, Distribution::Uniform(-a, a), device)
}
