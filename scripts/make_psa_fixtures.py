#!/usr/bin/env python3
"""Generate the PSA-VLM safety-module parity fixtures (tiny widths) and verify Rust exports against PyTorch.

Run from the repository root, after scripts/make_fixtures.py has produced fixtures/tiny_llava/hub_f32:

    nice ~/.cache/psa-py/bin/python scripts/make_psa_fixtures.py
    nice ~/.cache/psa-py/bin/python scripts/make_psa_fixtures.py --verify-export DIR [--fixture F] [--tol 1e-5]

Like make_fixtures.py this needs the ~5.5 GB PyTorch install and is NOT run in CI; the Rust tests only read the
committed files.

Pinned versions (asserted at run time for torch, transformers, timm):
    python 3.11.7, torch 2.15.0 (+cu132 PyPI wheel, CPU only), transformers 5.23.0, timm 1.0.31,
    torchvision 0.29.2 (pulled in by timm, unused), safetensors 0.8.0, numpy 2.4.6

The fixtures are described in fixtures/README.md.

What is built (all from public building blocks, NOT from the reference code):
  * base: the tiny LLaVA of fixtures/tiny_llava/hub_f32 (llava-hf hub key layout), loaded with transformers
    LlavaForConditionalGeneration (eager attention);
  * safety modules with the reference (Yingshui-Tan/PSA-VLM) checkpoint names:
      safety_query_tokens [1,N,D], safety_query_tokens_2 [1,N,D]
      safe_mm_projector.proj = HoneyBee C-Abstractor:
          net.0 = timm RegStage(depth 3, vision_hidden -> width, stride 1, dilation 1, act SiLU, norm LayerNorm2d)
          net.1 = AdaptiveAvgPool2d(sqrt(num_queries))
          net.2 = timm RegStage(depth 3, width -> width, same settings)
          readout = Linear(width -> D), SiLU, Linear(D -> D)
      safe_part.cross_attention = torch.nn.MultiheadAttention(D, heads, batch_first=False)
      safe_part.safety_head = Linear(D -> 4)   (risk LEVEL)
      safe_part.other_head  = Linear(D -> 7)   (risk TYPE)
  * variants: tiny_psa (num_queries 16: the 4x4 grid, pool = identity) and tiny_psa_pool4 (num_queries 4: 2x2 pool).
    Both variants hold the SAME safety weights (num_queries changes no parameter shape).

Determinism: as make_fixtures.py (seeds, deterministic algorithms, one thread, sorted safetensors headers), so a
rerun gives byte-identical .safetensors files (report.json carries no timestamps either).
"""

import argparse
import copy
import hashlib
import json
import math
import os
import platform
import sys
import tempfile
from functools import partial

SCRIPTS = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, SCRIPTS)
sys.dont_write_bytecode = True  # no scripts/__pycache__ from importing make_fixtures
import make_fixtures as mf  # noqa: E402  (helpers: determinism, f16 rounding, canonical safetensors, checks)

import numpy as np  # noqa: E402
import safetensors  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import transformers  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from timm.layers import LayerNorm2d  # noqa: E402
from timm.models.regnet import RegStage  # noqa: E402
from transformers import LlavaConfig, LlavaForConditionalGeneration  # noqa: E402

PINNED = {"torch": "2.15.0", "transformers": "5.23.0", "timm": "1.0.31", "torchvision": "0.29.2",
          "safetensors": "0.8.0", "numpy": "2.4.6", "python": "3.11.7"}
assert torch.__version__.split("+")[0] == PINNED["torch"], torch.__version__
assert transformers.__version__ == PINNED["transformers"], transformers.__version__
assert timm.__version__ == PINNED["timm"], timm.__version__

ROOT = mf.ROOT
FIX = mf.FIX
BASE_DIR = os.path.join(FIX, "tiny_llava", "hub_f32")
SEED = 2411  # safety-module weights (the LLaVA base keeps its own seed 0 from make_fixtures.py)
IMAGE_TOKEN, PAD, BOS, EOS = mf.IMAGE_TOKEN, mf.PAD, mf.BOS, mf.EOS
IGNORE = -100
LAMBDA = 10.0
ATTN_IMPL = mf.ATTN_IMPL

SAFETY_PREFIXES = ("safety_query_tokens", "safe_mm_projector.", "safe_part.")

# safety configuration (tiny_psa); the reference's projector keys + our explicit keys
TINY_CFG = {
    "num_safety_tokens": 8,
    "encoder_hidden_size": 64,     # CLIP width
    "hidden_size": 72,             # abstractor width = vision hidden + num_safety_tokens (reference rule)
    "output_hidden_size": 64,      # safety_dim = LLM hidden
    "num_queries": 16,
    "depth": 3,
    "mlp_depth": 2,
    "safety_heads": 8,
    "num_levels": 4,
    "num_types": 7,
    "se_ratio": 0.25,
}
# nested "safety" section aliases accepted by --verify-export (project names)
CFG_ALIASES = {
    "abstractor_num_queries": "num_queries", "abstractor_width": "hidden_size", "abstractor_depth": "depth",
    "abstractor_mlp_depth": "mlp_depth", "safety_dim": "output_hidden_size", "vision_hidden_size":
    "encoder_hidden_size",
}

# fixed inputs (single <image> id per sample, RIGHT padding)
ROWS = [
    {"ids": [1, 11, 12, IMAGE_TOKEN, 13, 14, 15, 21, 22, EOS], "answer": [21, 22, EOS]},
    {"ids": [1, 30, IMAGE_TOKEN, 31, 32, 40, 41, EOS], "answer": [40, 41, EOS]},
]
SAFE_LEVEL = [2, 0]
SAFE_TYPE = [3, 6]


# ---------------------------------------------------------------------------------------------------------------
# Modules (reference names)
# ---------------------------------------------------------------------------------------------------------------

class CAbstractor(nn.Module):
    """HoneyBee C-Abstractor as configured by the PSA reference: no pos_emb, no prenorm, no eos tokens, no CLS drop."""

    def __init__(self, cfg):
        super().__init__()
        hw = math.isqrt(cfg["num_queries"])
        assert hw * hw == cfg["num_queries"], "num_queries must be a perfect square"
        reg = partial(RegStage, stride=1, dilation=1, act_layer=nn.SiLU, norm_layer=LayerNorm2d,
                      se_ratio=cfg["se_ratio"])
        self.net = nn.Sequential(
            reg(cfg["depth"], cfg["encoder_hidden_size"], cfg["hidden_size"]),
            nn.AdaptiveAvgPool2d((hw, hw)),
            reg(cfg["depth"], cfg["hidden_size"], cfg["hidden_size"]),
        )
        layers = [nn.Linear(cfg["hidden_size"], cfg["output_hidden_size"])]
        for _ in range(1, cfg["mlp_depth"]):
            layers += [nn.SiLU(), nn.Linear(cfg["output_hidden_size"], cfg["output_hidden_size"])]
        self.readout = nn.Sequential(*layers)

    @staticmethod
    def to_grid(x):  # b (h w) d -> b d h w, row-major
        b, n, d = x.shape
        hw = math.isqrt(n)
        assert hw * hw == n
        return x.transpose(1, 2).reshape(b, d, hw, hw)

    def forward(self, x):
        x = self.net(self.to_grid(x))
        x = x.flatten(2).transpose(1, 2)  # b d h w -> b (h w) d
        return self.readout(x)


class SafeProjector(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.proj = CAbstractor(cfg)

    def forward(self, x):
        return self.proj(x)


class CrossAttentionClassifier(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        d = cfg["output_hidden_size"]
        self.cross_attention = nn.MultiheadAttention(d, cfg["safety_heads"], batch_first=False)
        self.safety_head = nn.Linear(d, cfg["num_levels"])  # LEVEL
        self.other_head = nn.Linear(d, cfg["num_types"])    # TYPE


class SafetyModules(nn.Module):
    """The PSA safety modules; state_dict() keys are exactly the reference checkpoint names."""

    def __init__(self, cfg):
        super().__init__()
        n, d = cfg["num_safety_tokens"], cfg["output_hidden_size"]
        self.safety_query_tokens = nn.Parameter(torch.zeros(1, n, d))
        self.safety_query_tokens_2 = nn.Parameter(torch.zeros(1, n, d))
        self.safe_mm_projector = SafeProjector(cfg)
        self.safe_part = CrossAttentionClassifier(cfg)


class PsaLlava(nn.Module):
    """Tiny LLaVA (transformers) + safety modules. load_hub_state_dict() takes the full checkpoint in llava-hf hub
    layout + the safety keys, strictly (every key used exactly once, none missing)."""

    def __init__(self, llava_config, cfg):
        super().__init__()
        self.cfg = dict(cfg)
        self.llava = LlavaForConditionalGeneration._from_config(llava_config, attn_implementation=ATTN_IMPL).eval()
        self.safety = SafetyModules(cfg).eval()
        self.hub_to_mem = {mf.to_hub_name(k): k for k in self.llava.state_dict()}
        assert len(self.hub_to_mem) == len(self.llava.state_dict())

    def load_hub_state_dict(self, sd, strict=True):
        safety = {k: v for k, v in sd.items() if k.startswith(SAFETY_PREFIXES)}
        base = {k: v for k, v in sd.items() if not k.startswith(SAFETY_PREFIXES)}
        unknown = sorted(k for k in base if k not in self.hub_to_mem)
        if unknown:
            raise KeyError(f"unexpected keys: {unknown}")
        self.llava.load_state_dict({self.hub_to_mem[k]: v for k, v in base.items()}, strict=strict)
        self.safety.load_state_dict(safety, strict=strict)

    def hub_state_dict(self):
        sd = {mf.to_hub_name(k): v for k, v in self.llava.state_dict().items()}
        sd.update(self.safety.state_dict())
        return dict(sorted(sd.items()))


# ---------------------------------------------------------------------------------------------------------------
# Weights
# ---------------------------------------------------------------------------------------------------------------

def redraw_safety(shapes, seed):
    """Brief's scheme: tokens N(0,1); other >=2-D N(0,1)/sqrt(prod(shape[1:])) (conv [out,in,kh,kw] -> in*kh*kw);
    norm (`.bn.weight`) 1 + 0.1 N; other 1-D (biases) 0.05 N. Drawn in sorted-name order, then f16-exact."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name in sorted(shapes):
        shape = shapes[name]
        n = torch.randn(shape, generator=gen, dtype=torch.float32)
        if name.startswith("safety_query_tokens"):
            v = n
        elif len(shape) >= 2:
            v = n / math.sqrt(math.prod(shape[1:]))
        elif name.endswith(".bn.weight"):
            v = 1.0 + 0.1 * n
        else:
            assert name.endswith("bias"), name
            v = 0.05 * n
        out[name] = mf.f16_exact(v)
    return out


def load_base(base_dir=BASE_DIR):
    with open(os.path.join(base_dir, "config.json")) as f:
        base_config = json.load(f)
    hub_sd = load_file(os.path.join(base_dir, "model.safetensors"))
    return base_config, hub_sd


def llava_config_from(base_config):
    cfg = copy.deepcopy(base_config)
    return LlavaConfig(**{k: v for k, v in cfg.items() if k not in ("architectures", "transformers_version",
                                                                  "model_type")})


def build_model(base_config, hub_base_sd, cfg, safety_sd):
    m = PsaLlava(llava_config_from(base_config), cfg)
    sd = dict(hub_base_sd)
    sd.update(safety_sd)
    m.load_hub_state_dict(sd, strict=True)
    m.eval()
    return m


# ---------------------------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------------------------

def pixel_image1(h=56, w=56):
    """Image 1: c0 = -sin(y/7) - 0.25 cos(x/3); c1 = -cos((x+y)/11); c2 = (x+y)/56 - 1 (x column, y row)."""
    y = torch.arange(h, dtype=torch.float64).view(h, 1).expand(h, w)
    x = torch.arange(w, dtype=torch.float64).view(1, w).expand(h, w)
    c0 = -torch.sin(y / 7) - 0.25 * torch.cos(x / 3)
    c1 = -torch.cos((x + y) / 11)
    c2 = (x + y) / 56.0 - 1.0
    return torch.stack([c0, c1, c2]).unsqueeze(0).to(torch.float32)


def make_inputs():
    T = max(len(r["ids"]) for r in ROWS)
    ids = torch.full((len(ROWS), T), PAD, dtype=torch.long)
    mask = torch.zeros((len(ROWS), T), dtype=torch.long)
    labels = torch.full((len(ROWS), T), IGNORE, dtype=torch.long)
    for i, r in enumerate(ROWS):
        n, a = len(r["ids"]), len(r["answer"])
        assert r["ids"][n - a:] == r["answer"] and r["ids"].count(IMAGE_TOKEN) == 1
        ids[i, :n] = torch.tensor(r["ids"])
        mask[i, :n] = 1
        labels[i, n - a:n] = torch.tensor(r["answer"])
    return {
        "inputs.pixel_values": torch.cat([mf.pixel_recipe(56, 56, 56.0), pixel_image1()], 0),
        "inputs.input_ids": ids,
        "inputs.attention_mask": mask,
        "inputs.labels": labels,
        "inputs.safe_level": torch.tensor(SAFE_LEVEL, dtype=torch.long),
        "inputs.safe_type": torch.tensor(SAFE_TYPE, dtype=torch.long),
    }


# ---------------------------------------------------------------------------------------------------------------
# Forward (returns every dumped tensor)
# ---------------------------------------------------------------------------------------------------------------

def merge(embeds, ids, mask, labels, image_rows):
    """Single-id merge with right padding: the one <image> id of row b -> image_rows[b] (S2 rows + projected rows),
    labels -100 and mask 1 there; everything else keeps its order, so right padding stays at the end."""
    B = ids.shape[0]
    rows_e, rows_l, rows_m, rows_i = [], [], [], []
    for b in range(B):
        pos = (ids[b] == IMAGE_TOKEN).nonzero().flatten().tolist()
        assert len(pos) == 1, f"row {b}: expected exactly one <image> id, got {len(pos)}"
        p = pos[0]
        n_img = image_rows.shape[1]
        rows_e.append(torch.cat([embeds[b, :p], image_rows[b], embeds[b, p + 1:]], 0))
        rows_l.append(torch.cat([labels[b, :p], torch.full((n_img,), IGNORE, dtype=torch.long), labels[b, p + 1:]]))
        rows_m.append(torch.cat([mask[b, :p], torch.ones(n_img, dtype=torch.long), mask[b, p + 1:]]))
        rows_i.append(torch.cat([ids[b, :p], torch.full((n_img,), IMAGE_TOKEN, dtype=torch.long), ids[b, p + 1:]]))
    L = max(r.shape[0] for r in rows_e)
    for b in range(B):  # (not needed with one image per row: all rows grow equally) right-pad to a common length
        k = L - rows_e[b].shape[0]
        if k:
            pad_e = embeds.new_zeros(k, embeds.shape[-1])
            rows_e[b] = torch.cat([rows_e[b], pad_e])
            rows_l[b] = torch.cat([rows_l[b], torch.full((k,), IGNORE, dtype=torch.long)])
            rows_m[b] = torch.cat([rows_m[b], torch.zeros(k, dtype=torch.long)])
            rows_i[b] = torch.cat([rows_i[b], torch.full((k,), PAD, dtype=torch.long)])
    return torch.stack(rows_e), torch.stack(rows_l), torch.stack(rows_m), torch.stack(rows_i)


def causal_lm_loss(logits, labels):
    """Standard shift: position t predicts token t+1; mean over labels != -100 of the whole batch."""
    lg = logits[:, :-1].reshape(-1, logits.shape[-1]).double()
    tg = labels[:, 1:].reshape(-1)
    return F.cross_entropy(lg, tg, ignore_index=IGNORE, reduction="mean").float()


def forward(model, X, capture_blocks=True):
    llava, safety, cfg = model.llava, model.safety, model.cfg
    px, ids, mask = X["inputs.pixel_values"], X["inputs.input_ids"], X["inputs.attention_mask"]
    labels, lvl, typ = X["inputs.labels"], X["inputs.safe_level"], X["inputs.safe_type"]
    B = ids.shape[0]
    T = {}
    # vision: hidden_states[-2] without CLS, then the normal projector
    vout = llava.model.vision_tower(px, output_hidden_states=True)
    T["vision.selected_features"] = vout.hidden_states[-2][:, 1:]
    T["projector.output"] = llava.model.multi_modal_projector(T["vision.selected_features"])
    # C-Abstractor, step by step
    ab = safety.safe_mm_projector.proj
    grid = CAbstractor.to_grid(T["vision.selected_features"])
    T["safety.abstractor.input"] = grid
    b1 = ab.net[0].b1
    if capture_blocks:
        c1 = b1.conv1(grid).clone()
        c2 = b1.conv2(c1).clone()
        se = b1.se(c2).clone()
        c3 = b1.conv3(se).clone()
        ds = b1.downsample(grid).clone()
        out = b1.act3(c3 + ds).clone()
        T.update({"safety.abstractor.s1.b1.conv1": c1, "safety.abstractor.s1.b1.conv2": c2,
                  "safety.abstractor.s1.b1.se": se, "safety.abstractor.s1.b1.conv3": c3,
                  "safety.abstractor.s1.b1.downsample": ds, "safety.abstractor.s1.b1.out": out})
    T["safety.abstractor.s1"] = ab.net[0](grid)
    T["safety.abstractor.pool"] = ab.net[1](T["safety.abstractor.s1"])
    T["safety.abstractor.s2"] = ab.net[2](T["safety.abstractor.pool"])
    T["safety.h_s"] = ab.readout(T["safety.abstractor.s2"].flatten(2).transpose(1, 2))
    # safety head: query = raw token embeddings of the UNMERGED ids, key = value = [S1 ; h_s], no mask
    emb = llava.model.language_model.embed_tokens
    T["safety.text_embeds"] = emb(ids)
    T["safety.kv"] = torch.cat([safety.safety_query_tokens.expand(B, -1, -1), T["safety.h_s"]], 1)
    mha = safety.safe_part.cross_attention
    q = T["safety.text_embeds"].transpose(0, 1)
    kv = T["safety.kv"].transpose(0, 1)
    T["safety.attn_output"] = mha(q, kv, kv, need_weights=False)[0]          # [T, B, D]
    T["safety.z"] = T["safety.attn_output"][0]                             # query_mode position0
    heads = safety.safe_part
    T["safety.level_logits"] = heads.safety_head(T["safety.z"])
    T["safety.type_logits"] = heads.other_head(T["safety.z"])
    ce_l = F.cross_entropy(T["safety.level_logits"], lvl)
    ce_t = F.cross_entropy(T["safety.type_logits"], typ)
    T["safety.loss_cls"] = ce_l + ce_t
    T["safety.loss_cls_weighted"] = LAMBDA * T["safety.loss_cls"]
    # text-aware options: valid = attention_mask 1 and not <image> (BOS included)
    valid = (mask == 1) & (ids != IMAGE_TOKEN)
    T["safety.query_mask"] = valid.long()
    w = valid.to(torch.float32).unsqueeze(-1)
    qmean = (T["safety.text_embeds"] * w).sum(1) / w.sum(1)                 # [B, D]
    T["safety.query_mean"] = qmean
    T["safety.z_mean_query"] = mha(qmean.unsqueeze(0), kv, kv, need_weights=False)[0][0]
    T["safety.level_logits_mean_query"] = heads.safety_head(T["safety.z_mean_query"])
    T["safety.type_logits_mean_query"] = heads.other_head(T["safety.z_mean_query"])
    wt = valid.t().to(torch.float32).unsqueeze(-1)                           # [T, B, 1]
    T["safety.z_mean_output"] = (T["safety.attn_output"] * wt).sum(0) / wt.sum(0)
    T["safety.level_logits_mean_output"] = heads.safety_head(T["safety.z_mean_output"])
    T["safety.type_logits_mean_output"] = heads.other_head(T["safety.z_mean_output"])
    # LLM input: the single <image> -> [S2 ; projected features]
    img_rows = torch.cat([safety.safety_query_tokens_2.expand(B, -1, -1), T["projector.output"]], 1)
    e, ml, mm, mi = merge(T["safety.text_embeds"], ids, mask, labels, img_rows)
    T["lm.inputs_embeds"], T["merged.labels"], T["merged.attention_mask"], T["merged.input_ids"] = e, ml, mm, mi
    pos = torch.arange(e.shape[1]).unsqueeze(0).expand(B, -1).contiguous()
    T["merged.position_ids"] = pos
    T["lm.logits"] = llava(inputs_embeds=e, attention_mask=mm, position_ids=pos).logits
    T["lm.loss"] = causal_lm_loss(T["lm.logits"], ml)
    T["total.loss"] = T["lm.loss"] + LAMBDA * T["safety.loss_cls"]
    return T


# ---------------------------------------------------------------------------------------------------------------
# Independent recomputations (spec semantics written out by hand, float64)
# ---------------------------------------------------------------------------------------------------------------

def ln2d(x, w, b, eps):
    mu = x.mean(1, keepdim=True)
    var = ((x - mu) ** 2).mean(1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * w.view(1, -1, 1, 1) + b.view(1, -1, 1, 1)


def manual_block(x, p, pre, eps=1e-5, se_act=F.silu, keep=None):
    d = lambda k: p[pre + k].double()  # noqa: E731
    cout = p[pre + "conv1.conv.weight"].shape[0]
    c1 = F.silu(ln2d(F.conv2d(x, d("conv1.conv.weight")), d("conv1.bn.weight"), d("conv1.bn.bias"), eps))
    c2 = F.silu(ln2d(F.conv2d(c1, d("conv2.conv.weight"), padding=1, groups=cout), d("conv2.bn.weight"),
                     d("conv2.bn.bias"), eps))
    s = c2.mean((2, 3), keepdim=True)
    s = torch.sigmoid(F.conv2d(se_act(F.conv2d(s, d("se.fc1.weight"), d("se.fc1.bias"))), d("se.fc2.weight"),
                               d("se.fc2.bias")))
    se = c2 * s
    c3 = ln2d(F.conv2d(se, d("conv3.conv.weight")), d("conv3.bn.weight"), d("conv3.bn.bias"), eps)
    if pre + "downsample.conv.weight" in p:
        sc = ln2d(F.conv2d(x, d("downsample.conv.weight")), d("downsample.bn.weight"), d("downsample.bn.bias"), eps)
    else:
        sc = x
    out = F.silu(c3 + sc)
    if keep is not None:
        keep.update({"conv1": c1, "conv2": c2, "se": se, "conv3": c3, "downsample": sc, "out": out})
    return out


def manual_adaptive_pool(x, o):
    n = x.shape[-1]
    rows = []
    for i in range(o):
        cols = []
        for j in range(o):
            r0, r1 = (i * n) // o, -((-(i + 1) * n) // o)
            c0, c1 = (j * n) // o, -((-(j + 1) * n) // o)
            cols.append(x[:, :, r0:r1, c0:c1].mean((2, 3)))
        rows.append(torch.stack(cols, -1))
    return torch.stack(rows, -2)


def manual_abstractor(feats, p, cfg, eps=1e-5, se_act=F.silu, keep=None):
    x = CAbstractor.to_grid(feats.double())
    pre = "safe_mm_projector.proj.net."
    for i in range(1, cfg["depth"] + 1):
        x = manual_block(x, p, f"{pre}0.b{i}.", eps, se_act, keep if i == 1 else None)
    s1 = x
    x = manual_adaptive_pool(x, math.isqrt(cfg["num_queries"]))
    pool = x
    for i in range(1, cfg["depth"] + 1):
        x = manual_block(x, p, f"{pre}2.b{i}.", eps, se_act)
    s2 = x
    x = x.flatten(2).transpose(1, 2)
    r = "safe_mm_projector.proj.readout."
    x = F.linear(x, p[r + "0.weight"].double(), p[r + "0.bias"].double())
    x = F.linear(F.silu(x), p[r + "2.weight"].double(), p[r + "2.bias"].double())
    return {"s1": s1, "pool": pool, "s2": s2, "h_s": x}


def manual_mha(q, kv, p, heads, dtype=torch.float32):
    """q [B, Lq, E], kv [B, Lk, E]; packed in_proj_weight rows [0,E) = W_q, [E,2E) = W_k, [2E,3E) = W_v."""
    W = p["safe_part.cross_attention.in_proj_weight"].to(dtype)
    bias = p["safe_part.cross_attention.in_proj_bias"].to(dtype)
    E = W.shape[1]
    d = E // heads
    Q = q.to(dtype) @ W[:E].T + bias[:E]
    K = kv.to(dtype) @ W[E:2 * E].T + bias[E:2 * E]
    V = kv.to(dtype) @ W[2 * E:].T + bias[2 * E:]
    B, Lq, Lk = Q.shape[0], Q.shape[1], K.shape[1]
    Qh = Q.view(B, Lq, heads, d).transpose(1, 2)
    Kh = K.view(B, Lk, heads, d).transpose(1, 2)
    Vh = V.view(B, Lk, heads, d).transpose(1, 2)
    A = torch.softmax(Qh @ Kh.transpose(-1, -2) / math.sqrt(d), -1)
    O = (A @ Vh).transpose(1, 2).reshape(B, Lq, E)
    return O @ p["safe_part.cross_attention.out_proj.weight"].to(dtype).T + \
        p["safe_part.cross_attention.out_proj.bias"].to(dtype)


# ---------------------------------------------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------------------------------------------

def psa_config(base_config, cfg):
    out = copy.deepcopy(base_config)
    out.update({
        "num_eos_tokens": None, "pos_emb": False, "prenorm": False, "depth": cfg["depth"],
        "mlp_depth": cfg["mlp_depth"], "num_queries": cfg["num_queries"],
        "encoder_hidden_size": cfg["encoder_hidden_size"], "hidden_size": cfg["hidden_size"],
        "output_hidden_size": cfg["output_hidden_size"],
        "num_safety_tokens": cfg["num_safety_tokens"], "safety_heads": cfg["safety_heads"],
        "num_levels": cfg["num_levels"], "num_types": cfg["num_types"],
    })
    return out


def inspect_timm(safety):
    """What the instantiated timm modules actually are (eps, SE widths, activations)."""
    info = {"norm_modules": {}, "se": {}, "act3": {}, "timm_fast_norm": None}
    from timm.layers import is_fast_norm
    info["timm_fast_norm"] = bool(is_fast_norm())
    for name, m in safety.safe_mm_projector.proj.named_modules():
        if type(m).__name__ == "LayerNormAct2d":
            info["norm_modules"][name] = {"type": "LayerNormAct2d", "eps": m.eps, "act": type(m.act).__name__,
                                          "normalized_shape": list(m.normalized_shape)}
        if type(m).__name__ == "SEModule":
            info["se"][name] = {"channels": m.fc1.in_channels, "rd_channels": m.fc1.out_channels,
                                "act": type(m.act).__name__, "gate": type(m.gate).__name__,
                                "fc1_bias": m.fc1.bias is not None, "fc2_bias": m.fc2.bias is not None,
                                "add_maxpool": bool(m.add_maxpool), "bn": type(m.bn).__name__}
        if type(m).__name__ == "Bottleneck":
            info["act3"][name] = {"act3": type(m.act3).__name__, "conv2_groups": m.conv2.conv.groups,
                                  "conv2_padding": list(m.conv2.conv.padding),
                                  "conv2_dilation": list(m.conv2.conv.dilation),
                                  "in_chs": m.conv1.conv.in_channels, "out_chs": m.conv3.conv.out_channels,
                                  "downsample": type(m.downsample).__name__ if m.downsample is not None else None,
                                  "drop_path": type(m.drop_path).__name__}
    return info


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def write_manifest(model_dir):
    """manifest.json as psa_import::manifest writes it: SHA-256 and size of every file, format 1."""
    files = {}
    for name in sorted(os.listdir(model_dir)):
        path = os.path.join(model_dir, name)
        if name == "manifest.json" or not os.path.isfile(path):
            continue
        with open(path, "rb") as f:
            data = f.read()
        files[name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    with open(os.path.join(model_dir, "manifest.json"), "w") as f:
        json.dump({"format": 1, "files": files}, f, indent=2)


def make_variant(name, cfg, write_model_dir, same_llm_as=None):
    print(f"== {name} (num_queries {cfg['num_queries']})")
    out = os.path.join(FIX, name)
    mf.fresh_dir(out)
    checks = mf.Checks()
    mf.setup_determinism()

    base_config, hub_base = load_base()
    # provenance: the committed base equals make_fixtures.py's deterministic tiny LLaVA (seed 0)
    _, regen = mf.build_llava(4)
    same = sorted(regen) == sorted(hub_base) and all(torch.equal(regen[k], hub_base[k]) for k in regen)
    checks.value("base hub_f32 == make_fixtures.build_llava(4) values", same, same)

    skel = SafetyModules(cfg)
    shapes = {k: tuple(v.shape) for k, v in skel.state_dict().items()}
    safety_sd = redraw_safety(shapes, SEED)
    model = build_model(base_config, hub_base, cfg, safety_sd)
    timm_info = inspect_timm(model.safety)

    # ---- timm vs spec
    eps_set = sorted({v["eps"] for v in timm_info["norm_modules"].values()})
    checks.value("timm LayerNormAct2d eps (all norms)", eps_set, eps_set == [1e-5])
    se_ok = all(v["rd_channels"] == int(round((cfg["encoder_hidden_size"] if k.startswith("net.0.b1") else
                                                cfg["hidden_size"]) * cfg["se_ratio"])) and v["act"] == "SiLU"
                and v["gate"] == "Sigmoid" and v["fc1_bias"] and v["fc2_bias"] for k, v in timm_info["se"].items())
    checks.value("timm SE rd = round(block in_chs * 0.25), act SiLU, sigmoid gate, biases",
                 {k: v["rd_channels"] for k, v in timm_info["se"].items()}, se_ok)
    acts = {k: v["act"] for k, v in timm_info["norm_modules"].items()}
    acts_ok = all((v == "Identity") == (".conv3." in k or ".downsample." in k) for k, v in acts.items()) and \
        all(v == "SiLU" for k, v in acts.items() if ".conv3." not in k and ".downsample." not in k)
    checks.value("timm norm activations: SiLU after conv1/conv2, none after conv3/downsample", acts_ok, acts_ok)
    ds = {k: v["downsample"] for k, v in timm_info["act3"].items()}
    checks.value("timm shortcut: ConvNormAct only in net.0.b1, Identity elsewhere", ds,
                 all((v == "ConvNormAct") == (k == "net.0.b1") for k, v in ds.items()))
    g_ok = all(v["conv2_groups"] == cfg["hidden_size"] and v["conv2_padding"] == [1, 1] and
               v["conv2_dilation"] == [1, 1] and v["act3"] == "SiLU" for v in timm_info["act3"].values())
    checks.value("timm conv2 depthwise (groups = width), padding 1, dilation 1; act3 SiLU", g_ok, g_ok)

    X = make_inputs()
    T = forward(model, X)
    T.update(X)

    # ---- shapes
    B, Tn = X["inputs.input_ids"].shape
    N, nq, D = cfg["num_safety_tokens"], cfg["num_queries"], cfg["output_hidden_size"]
    n_patches = T["projector.output"].shape[1]  # the LLM gets [S2 ; h_i]: h_i has the CLIP patch count, NOT num_queries
    Tm = Tn - 1 + N + n_patches
    expect = {"safety.h_s": (B, nq, D), "safety.kv": (B, N + nq, D), "safety.attn_output": (Tn, B, D),
              "safety.z": (B, D), "safety.level_logits": (B, cfg["num_levels"]),
              "safety.type_logits": (B, cfg["num_types"]), "lm.inputs_embeds": (B, Tm, D),
              "lm.logits": (B, Tm, 1000), "merged.labels": (B, Tm), "merged.attention_mask": (B, Tm)}
    bad = {k: list(T[k].shape) for k, v in expect.items() if tuple(T[k].shape) != v}
    checks.value("tensor shapes", bad or "as expected", not bad)

    # ---- block / stage semantics
    c = T
    b1 = model.safety.safe_mm_projector.proj.net[0].b1
    checks.diff("s1.b1 sub-steps compose to b1(x)", c["safety.abstractor.s1.b1.out"],
                b1(c["safety.abstractor.input"]), 0.0)
    p = {k: v for k, v in model.safety.state_dict().items()}
    keep = {}
    man = manual_abstractor(T["vision.selected_features"], p, cfg, keep=keep)
    for k in ("conv1", "conv2", "se", "conv3", "downsample", "out"):
        checks.diff(f"hand-written spec block s1.b1.{k} (f64) vs timm", keep[k], c[f"safety.abstractor.s1.b1.{k}"],
                    1e-5)
    for k in ("s1", "pool", "s2"):
        checks.diff(f"hand-written spec abstractor {k} (f64) vs timm", man[k], c[f"safety.abstractor.{k}"], 1e-5)
    d_hs = checks.diff("hand-written spec h_s (f64) vs timm", man["h_s"], c["safety.h_s"], 1e-5)
    # how strongly the fixture discriminates the traps (informational)
    sens = {
        "h_s max change if eps were 1e-6 (LayerNorm2d default)":
            mf.maxdiff(manual_abstractor(T["vision.selected_features"], p, cfg, eps=1e-6)["h_s"], man["h_s"]),
        "h_s max change if SE used ReLU": mf.maxdiff(
            manual_abstractor(T["vision.selected_features"], p, cfg, se_act=F.relu)["h_s"], man["h_s"]),
    }
    for k, v in sens.items():
        checks.value(f"info: {k}", v, True)
    pool_diff = mf.maxdiff(c["safety.abstractor.pool"], c["safety.abstractor.s1"]) \
        if c["safety.abstractor.pool"].shape == c["safety.abstractor.s1"].shape else float("inf")
    if nq == 16:
        checks.value("adaptive pool 4x4 -> 4x4 is the identity (max diff)", pool_diff, pool_diff == 0.0)
    else:
        checks.value("adaptive pool 4x4 -> 2x2 is NOT the identity (shapes differ)", list(c[
            "safety.abstractor.pool"].shape), pool_diff == float("inf"))
        blk = c["safety.abstractor.s1"].unflatten(2, (2, 2)).unflatten(4, (2, 2)).mean((3, 5))
        checks.diff("pool 2x2 == mean of 2x2 blocks", c["safety.abstractor.pool"], blk, 1e-6)
        spread = float(c["safety.abstractor.s1"].unflatten(2, (2, 2)).unflatten(4, (2, 2)).std((3, 5)).max())
        checks.value("info: max in-block std of s1 (pool averages distinct values)", spread, spread > 1e-2)
    checks.diff("h_s == safe_mm_projector(selected_features)", model.safety.safe_mm_projector(
        T["vision.selected_features"]), c["safety.h_s"], 0.0)

    # ---- MHA packed-weight semantics, z, heads, losses
    z_all = manual_mha(c["safety.text_embeds"], c["safety.kv"], p, cfg["safety_heads"])
    checks.diff("MHA full output == hand-computed from in_proj slices (f32)", z_all.transpose(0, 1),
                c["safety.attn_output"], 1e-6)
    checks.diff("z == hand-computed row 0 (f32)", z_all[:, 0], c["safety.z"], 1e-6)
    z64 = manual_mha(c["safety.text_embeds"], c["safety.kv"], p, cfg["safety_heads"], torch.float64)
    checks.diff("info: z vs hand-computed in f64", z64[:, 0], c["safety.z"], 1e-5)
    zq = manual_mha(c["safety.query_mean"].unsqueeze(1), c["safety.kv"], p, cfg["safety_heads"])[:, 0]
    checks.diff("z_mean_query == hand-computed (f32)", zq, c["safety.z_mean_query"], 1e-6)
    hq = c["safety.text_embeds"]
    qm = c["safety.query_mask"].bool()
    qmean = torch.stack([hq[b][qm[b]].mean(0) for b in range(B)])
    checks.diff("query_mean == mean of embeds over mask=1 & id!=<image>", qmean, c["safety.query_mean"], 1e-6)
    checks.diff("text_embeds == embed_tokens weight rows", c["safety.text_embeds"],
                hub_base["language_model.model.embed_tokens.weight"][X["inputs.input_ids"]], 0.0)
    checks.diff("kv[:, :N] == safety_query_tokens", c["safety.kv"][:, :N],
                safety_sd["safety_query_tokens"].expand(B, -1, -1), 0.0)
    lvl = c["safety.z"] @ safety_sd["safe_part.safety_head.weight"].T + safety_sd["safe_part.safety_head.bias"]
    typ = c["safety.z"] @ safety_sd["safe_part.other_head.weight"].T + safety_sd["safe_part.other_head.bias"]
    checks.diff("level_logits == W_l z + b_l (safety_head)", lvl, c["safety.level_logits"], 1e-6)
    checks.diff("type_logits == W_t z + b_t (other_head)", typ, c["safety.type_logits"], 1e-6)
    ce = lambda lg, y: float(-torch.log_softmax(lg.double(), -1)[torch.arange(B), y].mean())  # noqa: E731
    lc = ce(c["safety.level_logits"], X["inputs.safe_level"]) + ce(c["safety.type_logits"], X["inputs.safe_type"])
    checks.diff("loss_cls == CE_level + CE_type (f64 recompute)", torch.tensor(lc), c["safety.loss_cls"], 1e-6)
    checks.diff("loss_cls_weighted == 10 * loss_cls", c["safety.loss_cls_weighted"], 10 * c["safety.loss_cls"], 0.0)
    pos0 = X["inputs.input_ids"][:, 0].tolist()
    checks.value("info: position-0 query token per row (BOS with right padding)", pos0, pos0 == [BOS] * B)

    # ---- merge, labels, LM
    e = c["lm.inputs_embeds"]
    man_e, man_l, man_m = [], [], []
    S2 = safety_sd["safety_query_tokens_2"][0]
    for b, r in enumerate(ROWS):
        pidx = r["ids"].index(IMAGE_TOKEN)
        emb = c["safety.text_embeds"][b]
        man_e.append(torch.cat([emb[:pidx], S2, c["projector.output"][b], emb[pidx + 1:]]))
        man_l.append(torch.cat([X["inputs.labels"][b, :pidx], torch.full((N + n_patches,), IGNORE),
                                X["inputs.labels"][b, pidx + 1:]]))
        man_m.append(torch.cat([X["inputs.attention_mask"][b, :pidx], torch.ones(N + n_patches, dtype=torch.long),
                                X["inputs.attention_mask"][b, pidx + 1:]]))
    checks.diff("lm.inputs_embeds == [text ; S2 ; projector.output ; text] per row", torch.stack(man_e), e, 0.0)
    checks.equal("merged.labels == hand-built", torch.stack(man_l), c["merged.labels"])
    checks.equal("merged.attention_mask == hand-built", torch.stack(man_m), c["merged.attention_mask"])
    tg = c["merged.labels"][:, 1:]
    sup = [tg[b][tg[b] != IGNORE].tolist() for b in range(B)]
    checks.equal("supervised targets after shift == answer + EOS", sup, [r["answer"] for r in ROWS])
    pads_last = all(c["merged.attention_mask"][b].tolist() == sorted(c["merged.attention_mask"][b].tolist(),
                                                                     reverse=True) for b in range(B))
    checks.value("merged right padding stays at the end", pads_last, pads_last)
    hf = model.llava(inputs_embeds=e, attention_mask=c["merged.attention_mask"],
                     position_ids=c["merged.position_ids"], labels=c["merged.labels"])
    checks.diff("lm.loss == transformers LlavaForConditionalGeneration(labels=...).loss", hf.loss, c["lm.loss"], 1e-6)
    lm = model.llava.model.language_model(inputs_embeds=e, attention_mask=c["merged.attention_mask"],
                                          position_ids=c["merged.position_ids"]).last_hidden_state
    checks.diff("lm.logits == lm_head(language_model(...))", model.llava.lm_head(lm), c["lm.logits"], 0.0)
    nopos = model.llava(inputs_embeds=e, attention_mask=c["merged.attention_mask"]).logits
    checks.diff("info: lm.logits without explicit position_ids (default arange)", nopos, c["lm.logits"], 0.0)
    # per-row single-sample forward (no padding) == batched valid positions
    dv = 0.0
    for b in range(B):
        n = int(c["merged.attention_mask"][b].sum())
        single = model.llava(inputs_embeds=e[b:b + 1, :n], position_ids=torch.arange(n)[None]).logits
        dv = max(dv, mf.maxdiff(single[0], c["lm.logits"][b, :n]))
    checks.value("batched valid-position logits vs unpadded single rows (max abs)", dv, dv <= 1e-5)
    checks.diff("total.loss == lm.loss + 10 * loss_cls", c["total.loss"], c["lm.loss"] + 10 * c["safety.loss_cls"],
                0.0)

    # ---- write files
    full_cfg = psa_config(base_config, cfg)
    safety_path = os.path.join(out, "safety_modules.safetensors")
    mf.write_safetensors_canonical(safety_path, dict(sorted(safety_sd.items())), {"format": "pt"})
    full_sd = dict(hub_base)
    full_sd.update(safety_sd)
    if write_model_dir:
        os.makedirs(os.path.join(out, "model"))
        model_path = os.path.join(out, "model", "model.safetensors")
        mf.write_safetensors_canonical(model_path, dict(sorted(full_sd.items())), {"format": "pt"})
        mf.write_json(os.path.join(out, "model", "config.json"), full_cfg)
        write_manifest(os.path.join(out, "model"))
    else:
        mf.write_json(os.path.join(out, "config.json"), full_cfg)

    # ---- reload checks (fresh module trees, strict)
    def check_reload(tag, sd, conf):
        scfg = config_from_json(conf)
        checks.value(f"reload.{tag}: config -> safety cfg", scfg == cfg, scfg == cfg)
        bc = {k: v for k, v in conf.items()}
        m2 = PsaLlava(llava_config_from(bc), scfg)
        m2.load_hub_state_dict(sd, strict=True)
        m2.eval()
        T2 = forward(m2, X, capture_blocks=False)
        worst = max(mf.maxdiff(T2[k], c[k]) for k in ("safety.h_s", "safety.level_logits", "safety.type_logits",
                                                       "safety.z_mean_query", "lm.logits", "lm.loss", "total.loss"))
        checks.value(f"reload.{tag}: strict load, outputs identical (max abs)", worst, worst == 0.0)

    if write_model_dir:
        with open(os.path.join(out, "model", "config.json")) as f:
            conf = json.load(f)
        check_reload("model/model.safetensors", load_file(model_path), conf)
        # transformers itself reads the hub layout and reports exactly the safety keys as unexpected
        hfm, info = LlavaForConditionalGeneration.from_pretrained(
            os.path.join(out, "model"), attn_implementation=ATTN_IMPL, output_loading_info=True)
        hfm.eval()
        unexp = sorted(info.get("unexpected_keys", []))
        ok = unexp == sorted(safety_sd) and not info.get("missing_keys") and not info.get("mismatched_keys")
        checks.value("transformers.from_pretrained(model/): missing none, unexpected == the safety keys",
                     {"missing": sorted(info.get("missing_keys", [])), "n_unexpected": len(unexp)}, ok)
        checks.diff("transformers.from_pretrained(model/) lm.logits", hfm(
            inputs_embeds=e, attention_mask=c["merged.attention_mask"], position_ids=c["merged.position_ids"]).logits,
            c["lm.logits"], 0.0)
    else:
        with open(os.path.join(out, "config.json")) as f:
            conf = json.load(f)
    base_plus = dict(hub_base)
    base_plus.update(load_file(safety_path))
    check_reload("tiny_llava/hub_f32 + safety_modules.safetensors", base_plus, conf)

    # ---- the LLM path does not depend on num_queries (h_s never enters the LLM): identical to the other variant
    omitted = {}
    if same_llm_as is not None:
        other = load_file(os.path.join(FIX, same_llm_as, "fixture.safetensors"))
        for k in ("vision.selected_features", "projector.output", "safety.text_embeds", "lm.inputs_embeds",
                  "merged.labels", "merged.attention_mask", "merged.input_ids", "lm.logits", "lm.loss"):
            checks.diff(f"{k} == {same_llm_as}/fixture.safetensors {k} (bit-exact)", T[k], other[k], 0.0)
        del T["lm.logits"]  # 264 KB duplicate; use tiny_psa's
        omitted["lm.logits"] = f"identical (bit-exact) to {same_llm_as}/fixture.safetensors lm.logits"

    # ---- fixture
    meta = {
        "torch": torch.__version__, "transformers": transformers.__version__, "timm": timm.__version__,
        "numpy": np.__version__, "python": platform.python_version(), "seed_safety": SEED,
        "base": "fixtures/tiny_llava/hub_f32 (make_fixtures.py seed 0)",
        "config": json.dumps(cfg, sort_keys=True),
        "image_token_index": IMAGE_TOKEN, "pad_token_id": PAD, "ignore_index": IGNORE, "cls_loss_weight": LAMBDA,
        "layouts": ("safety.abstractor.* are NCHW [B, C, H, W] (PyTorch conv layout); grid token index = h*W + w; "
                    "safety.attn_output is [T, B, D] (batch_first=False); everything else batch-first"),
        "query_mode": ("safety.z / level_logits / type_logits: position0 (reference; row 0 = BOS with right "
                       "padding). *_mean_query: ONE query per sample = mean of text_embeds over query_mask. "
                       "*_mean_output: full-sequence query, MHA output rows averaged over query_mask "
                       "(the text_mean query mode). query_mask = attention_mask==1 & id!=<image> (BOS included)"),
        "pixel_values": ("image 0: c0 = sin(x/7)+0.25cos(y/3), c1 = cos((x+y)/11), c2 = (x-y)/56; image 1: "
                         "c0 = -sin(y/7)-0.25cos(x/3), c1 = -cos((x+y)/11), c2 = (x+y)/56-1 (x column, y row)"),
        "lm": ("lm.logits: llava(inputs_embeds=lm.inputs_embeds, attention_mask=merged.attention_mask, "
               "position_ids=merged.position_ids=arange); logits at merged.attention_mask==0 are meaningless. "
               "lm.loss: CE(logits[:, :-1], merged.labels[:, 1:], ignore -100), mean over all supervised tokens "
               "of the batch. total.loss = lm.loss + 10*safety.loss_cls"),
        "omitted": json.dumps(omitted, sort_keys=True),
    }
    fixture_shapes = mf.save_fixture(os.path.join(out, "fixture.safetensors"), T, meta)

    n_by_part = {}
    for k, v in safety_sd.items():
        part = ("tokens" if k.startswith("safety_query") else "abstractor.s1" if ".net.0." in k else
                "abstractor.s2" if ".net.2." in k else "abstractor.readout" if ".readout." in k else
                "mha" if ".cross_attention." in k else "heads")
        n_by_part[part] = n_by_part.get(part, 0) + v.numel()
    report = {
        "versions": dict(mf.versions(), timm=timm.__version__,
                         torchvision=__import__("torchvision").__version__),
        "safety_config": cfg,
        "config_json": full_cfg,
        "timm_vs_spec": {
            "layernorm_eps_measured": eps_set,
            "spec": "the method's C-Abstractor: LayerNormAct2d eps 1e-5, SE rd = round(cin*0.25) with SiLU, depthwise conv2",
            "modules": timm_info,
            "sensitivity": sens,
        },
        "safety_keys": {k: list(v.shape) for k, v in sorted(safety_sd.items())},
        "model_keys": ({k: list(v.shape) for k, v in sorted(full_sd.items())} if write_model_dir else
                       "not written for this variant (use tiny_llava/hub_f32 + safety_modules.safetensors)"),
        "parameter_counts": {"safety_total": sum(v.numel() for v in safety_sd.values()), "safety_by_part": n_by_part,
                             "llava_base": sum(v.numel() for v in hub_base.values()),
                             "n_safety_tensors": len(safety_sd)},
        "checks": checks.results,
        "fixture_tensors": fixture_shapes,
        "fixture_omitted": omitted,
        "values": {k: T[k].tolist() for k in ("safety.level_logits", "safety.type_logits", "safety.loss_cls",
                                               "safety.loss_cls_weighted", "lm.loss", "total.loss")},
    }
    report["file_sizes"] = mf.file_sizes(out)
    report["sha256"] = {k: sha256(os.path.join(out, k)) for k in report["file_sizes"] if k.endswith(".safetensors")}
    mf.write_json(os.path.join(out, "report.json"), report)
    checks.finish()
    return report


# ---------------------------------------------------------------------------------------------------------------
# --verify-export
# ---------------------------------------------------------------------------------------------------------------

def config_from_json(conf):
    """Safety config from a config.json: top-level reference keys, overridden by a nested "safety" section (project
    names accepted via CFG_ALIASES); missing keys -> tiny_psa values."""
    cfg = dict(TINY_CFG)
    for src in (conf, conf.get("safety") or {}):
        for k, v in src.items():
            k = CFG_ALIASES.get(k, k)
            if k in cfg and v is not None and not isinstance(v, (dict, list)):
                cfg[k] = type(TINY_CFG[k])(v)
    return cfg


def verify_export(d, fixture=None, tol=1e-5, base_dir=BASE_DIR):
    mf.setup_determinism()
    cfg_path = os.path.join(d, "config.json")
    conf = json.load(open(cfg_path)) if os.path.exists(cfg_path) else {}
    cfg = config_from_json(conf)
    print(f"config ({'from ' + cfg_path if conf else 'tiny_psa defaults'}): {cfg}")
    base_config, hub_base = load_base(base_dir)
    exported = load_file(os.path.join(d, "safety_modules.safetensors"))
    dtypes = sorted({str(v.dtype) for v in exported.values()})
    exported = {k: v.to(torch.float32) for k, v in exported.items()}
    report = {"dir": os.path.abspath(d), "config": cfg, "config_source": cfg_path if conf else "defaults",
              "exported_dtypes": dtypes, "tolerance": tol, "n_exported_keys": len(exported)}
    errors = []
    try:
        model = PsaLlava(llava_config_from(base_config), cfg)
        model.llava.load_state_dict({model.hub_to_mem[k]: v for k, v in hub_base.items()}, strict=True)
        res = model.safety.load_state_dict(exported, strict=True)
        report["strict_load"] = "ok" if not (res.missing_keys or res.unexpected_keys) else str(res)
        model.eval()
    except Exception as ex:  # missing/unexpected keys or shape mismatch
        report["strict_load"] = f"FAILED: {ex}"
        errors.append("strict_load")
        print(report["strict_load"])
        mf.write_json(os.path.join(d, "verify_report.json"), report)
        return 1
    expected = load_file(os.path.join(d, "expected.safetensors"))
    if "inputs.input_ids" in expected:
        src = "expected.safetensors"
        X = {k: expected[k] for k in expected if k.startswith("inputs.")}
    else:
        if fixture is None:
            sub = {16: "tiny_psa", 4: "tiny_psa_pool4"}.get(cfg["num_queries"])
            if sub is None:
                raise SystemExit("no inputs.* in expected.safetensors and no fixture for this num_queries; "
                                 "pass --fixture")
            fixture = os.path.join(FIX, sub, "fixture.safetensors")
        src = fixture
        fx = load_file(fixture)
        X = {k: fx[k] for k in fx if k.startswith("inputs.")}
    X = {k: (v.to(torch.long) if k != "inputs.pixel_values" else v.to(torch.float32)) for k, v in X.items()}
    report["inputs_from"] = src
    print(f"inputs from {src}")
    T = forward(model, X, capture_blocks=False)
    required = ("safety.level_logits", "safety.type_logits", "lm.logits")
    optional = ("safety.h_s", "safety.kv", "safety.z", "safety.attn_output", "safety.z_mean_query",
                "safety.level_logits_mean_query", "safety.type_logits_mean_query", "safety.loss_cls",
                "safety.loss_cls_weighted", "lm.inputs_embeds", "lm.loss", "total.loss", "projector.output",
                "vision.selected_features", "safety.text_embeds")
    diffs = {}
    for k in required + optional:
        if k not in expected:
            if k in required:
                errors.append(f"missing {k}")
                diffs[k] = "MISSING"
            continue
        a, b = expected[k].to(torch.float32), T[k].to(torch.float32)
        if tuple(a.shape) != tuple(b.shape):
            errors.append(f"shape {k}")
            diffs[k] = f"SHAPE {list(a.shape)} != {list(b.shape)}"
            continue
        if k in ("lm.logits", "lm.inputs_embeds"):
            m = T["merged.attention_mask"].bool()
            dm = mf.maxdiff(a[m], b[m])
            diffs[k] = {"max_abs_valid_positions": dm, "max_abs_all_positions": mf.maxdiff(a, b)}
            bad = dm > tol
        else:
            dm = mf.maxdiff(a, b)
            diffs[k] = {"max_abs": dm}
            bad = dm > tol
        if bad:
            errors.append(k)
        print(f"  [{'FAIL' if bad else 'ok'}] {k}: {diffs[k]}")
    unknown = sorted(set(expected) - set(required) - set(optional) - {k for k in expected if k.startswith("inputs.")})
    report.update({"diffs": diffs, "ignored_expected_tensors": unknown, "errors": errors, "pass": not errors})
    # PyTorch's own outputs from the exported file, for the Rust test to compare against (not just this verdict).
    mf.write_safetensors_canonical(os.path.join(d, "pytorch_outputs.safetensors"),
                                   {k: T[k].to(torch.float32).contiguous() for k in required if k in T},
                                   metadata={"format": "pt"})
    mf.write_json(os.path.join(d, "verify_report.json"), report)
    print("PASS" if not errors else f"FAIL: {errors}")
    return 0 if not errors else 1


def self_test_verify():
    """Export our own safety modules in the Rust-side layout and verify them (plus a negative test)."""
    print("== --verify-export self-test")
    results = {}
    for name, conf_in_dir in (("tiny_psa", True), ("tiny_psa_pool4", True), ("tiny_psa", False)):
        src = os.path.join(FIX, name)
        fx = load_file(os.path.join(src, "fixture.safetensors"))
        fx.setdefault("lm.logits", load_file(os.path.join(FIX, "tiny_psa", "fixture.safetensors"))["lm.logits"])
        conf_path = os.path.join(src, "model", "config.json") if name == "tiny_psa" else os.path.join(src,
                                                                                                  "config.json")
        with tempfile.TemporaryDirectory() as d:
            sd = load_file(os.path.join(src, "safety_modules.safetensors"))
            torch_save = partial(mf.write_safetensors_canonical, metadata={"format": "pt"})
            torch_save(os.path.join(d, "safety_modules.safetensors"), sd)
            torch_save(os.path.join(d, "expected.safetensors"),
                       {k: fx[k] for k in ("safety.level_logits", "safety.type_logits", "lm.logits")})
            if conf_in_dir:
                conf = json.load(open(conf_path))
                mf.write_json(os.path.join(d, "config.json"), conf)
            rc = verify_export(d)
            results[f"{name} (config.json {'present' if conf_in_dir else 'absent'})"] = rc
            assert rc == 0, f"self-test {name} failed"
            # negative: perturb one weight by 1e-3 (the FAIL lines printed next are expected)
            print("  -- negative test: other_head.bias + 1e-3, a FAIL is expected")
            sd["safe_part.other_head.bias"] = sd["safe_part.other_head.bias"] + 1e-3
            torch_save(os.path.join(d, "safety_modules.safetensors"), sd)
            rc_bad = verify_export(d)
            results[f"{name} perturbed other_head.bias (+1e-3) must fail"] = rc_bad
            assert rc_bad == 1, "negative self-test did not fail"
    return results


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--verify-export", metavar="DIR")
    ap.add_argument("--fixture", help="fixture.safetensors with the inputs.* (default: by num_queries)")
    ap.add_argument("--base", default=BASE_DIR, help="base LLaVA hub-layout dir (config.json + model.safetensors)")
    ap.add_argument("--tol", type=float, default=1e-5)
    args = ap.parse_args()
    for k in ("python", "numpy", "safetensors"):
        if mf.versions()[k] != PINNED[k]:
            print(f"WARNING: {k} {mf.versions()[k]} != pinned {PINNED[k]}")
    if args.verify_export:
        sys.exit(verify_export(args.verify_export, args.fixture, args.tol, args.base))
    make_variant("tiny_psa", TINY_CFG, write_model_dir=True)
    make_variant("tiny_psa_pool4", dict(TINY_CFG, num_queries=4), write_model_dir=False, same_llm_as="tiny_psa")
    st = self_test_verify()
    for name in ("tiny_psa", "tiny_psa_pool4"):
        rp = os.path.join(FIX, name, "report.json")
        r = json.load(open(rp))
        r["verify_export_self_test"] = st
        mf.write_json(rp, r)
    total = sum(sum(mf.file_sizes(os.path.join(FIX, n)).values()) for n in ("tiny_psa", "tiny_psa_pool4"))
    print(f"all self-checks passed; fixtures/tiny_psa* total {total} B")


if __name__ == "__main__":
    main()
