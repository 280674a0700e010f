#!/usr/bin/env python3
"""Half-precision references: the tiny LLaVA models run by transformers in bfloat16 and float16, for the dtype
policy's parity tests (`tests/half_precision.rs`).

Run once, offline, from the repository root, after scripts/make_fixtures.py (it reads that script's committed tiny
models and inputs), and commit the outputs:

    ~/.cache/psa-py/bin/python scripts/make_half_fixtures.py

Pinned versions (asserted at run time): torch 2.15.0, transformers 5.23.0, safetensors 0.8.0.

For tiny_llava (multi-head attention) and tiny_llava_gqa (2 key/value heads), the model loaded from the f16 shards
with `dtype=` float32, bfloat16 and float16 (eager attention, one CPU thread, deterministic algorithms), on the
inputs of fixture.safetensors. Every output is stored as float32.

Outputs: fixtures/<variant>/half.safetensors with, for each D in {f32, bf16, f16}:
    D.vision.selected_features [1, 16, 64]   hidden_states[-2][:, 1:] of the vision tower
    D.projector.output         [1, 16, 64]   the projector on those features
    D.lm.logits                [1, 27, 1000] the multimodal forward
    D.text_only.logits         [1, 11, 1000] prompt A through the language model alone
    D.generate.new_tokens      [1, 8] int64  greedy continuation of the multimodal prompt
and fixtures/<variant>/half_report.json (the largest differences of each half dtype from f32).
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.dont_write_bytecode = True  # no scripts/__pycache__ from importing make_fixtures
import make_fixtures as mf  # noqa: E402  (checks the pinned torch / transformers / safetensors on import)

import torch  # noqa: E402
import transformers  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import LlavaForConditionalGeneration  # noqa: E402

ROOT, FIX = mf.ROOT, mf.FIX
DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}


def run(model, fx):
    pixels = fx["inputs.pixel_values"]
    ids = fx["inputs.input_ids"]
    mask = fx["inputs.attention_mask"]
    out = {}
    with torch.no_grad():
        feats = model.model.get_image_features(pixel_values=pixels.to(model.dtype), vision_feature_layer=-2,
                                               vision_feature_select_strategy="default")
        tower = model.model.vision_tower(pixels.to(model.dtype), output_hidden_states=True)
        out["vision.selected_features"] = tower.hidden_states[-2][:, 1:]
        proj = feats.pooler_output if hasattr(feats, "pooler_output") else feats
        if isinstance(proj, (list, tuple)):
            proj = torch.stack(list(proj))
        out["projector.output"] = proj.reshape(1, -1, proj.shape[-1])
        out["lm.logits"] = model(input_ids=ids, attention_mask=mask, pixel_values=pixels).logits
        text_ids = fx["text_only.input_ids"]
        out["text_only.logits"] = model(input_ids=text_ids).logits
        gen = model.generate(input_ids=ids, attention_mask=mask, pixel_values=pixels, max_new_tokens=8,
                             do_sample=False, pad_token_id=998)
        out["generate.new_tokens"] = gen[:, ids.shape[1]:]
    return {k: (v.float() if v.is_floating_point() else v).contiguous() for k, v in out.items()}


def main():
    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    for variant in ("tiny_llava", "tiny_llava_gqa"):
        fx = load_file(os.path.join(FIX, variant, "fixture.safetensors"))
        values, report = {}, {"torch": torch.__version__, "transformers": transformers.__version__}
        results = {}
        for name, dtype in DTYPES.items():
            model = LlavaForConditionalGeneration.from_pretrained(
                os.path.join(FIX, variant, "hub_f16_sharded"), attn_implementation="eager", dtype=dtype).eval()
            assert model.dtype == dtype, model.dtype
            results[name] = run(model, fx)
            for k, v in results[name].items():
                values[f"{name}.{k}"] = v
        ref = results["f32"]
        for key in ("vision.selected_features", "projector.output", "lm.logits", "text_only.logits"):
            assert torch.allclose(ref[key], fx[key], atol=2e-5), f"f32 {key} differs from fixture.safetensors"
        assert (ref["generate.new_tokens"] == fx["generate.new_tokens"]).all()
        for name in ("bf16", "f16"):
            report[name] = {k: float((results[name][k] - ref[k]).abs().max()) for k in ref if k != "generate.new_tokens"}
            report[name]["generate.same_tokens_as_f32"] = bool(
                (results[name]["generate.new_tokens"] == ref["generate.new_tokens"]).all())
        save_file(dict(sorted(values.items())), os.path.join(FIX, variant, "half.safetensors"),
                  metadata={"torch": torch.__version__, "transformers": transformers.__version__})
        with open(os.path.join(FIX, variant, "half_report.json"), "w") as f:
            json.dump(report, f, indent=2, sort_keys=True)
        print(variant, json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
