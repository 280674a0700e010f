#!/usr/bin/env python3
"""PyTorch + transformers side of `benches/vs_pytorch.rs`: the same workloads, on the same model and inputs.

    ~/.cache/psa-py/bin/python scripts/bench_vs_pytorch.py [--model runs/quickstart/model] [--threads 2]
        [--criterion $CARGO_TARGET_DIR/criterion]

Pinned versions (asserted): python 3.11, torch 2.15.0 (PyPI wheel, CPU), transformers 5.23.0, timm 1.0.31 (the
C-Abstractor's RegNet stages), safetensors 0.8.0. Not run in CI.

Model: the quickstart checkpoint (DINOv2-S/14 + SmolLM2-135M + safety modules, f32), loaded from its safetensors
into transformers' Dinov2Model and LlamaForCausalLM and the safety modules of scripts/make_psa_fixtures.py.
Inputs: the formulas of benches/common/inputs.rs. Eager CPU, f32, SDPA attention, inference_mode (training: grad).

Rows (as the Rust bench): f32 GEMM; classify = DINOv2 up to the feature layer, CLS dropped, C-Abstractor, safety
head on the prompt's first token, for 1 and 8 images; prefill of a text prompt with a KV cache and the logits of
its last position, and 32 greedy decode steps after that prefill (PyTorch in f32, against each of psa-vlm's
engines: the tensor path, the host engine in f32 and in Q8_0); one stage-I step (batch 4, cached features, LM loss
over every text position + λ·concept loss, backward through the frozen LLM, AdamW on the safety modules).

With --criterion (the Rust bench's output folder) it prints both sides and the ratio PyTorch / psa-vlm of the
medians (above 1 means psa-vlm is faster).
"""
import argparse
import json
import math
import os
import statistics
import sys
import time

SCRIPTS = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, SCRIPTS)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import transformers  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from transformers import Dinov2Config, Dinov2Model, LlamaConfig, LlamaForCausalLM  # noqa: E402

from make_psa_fixtures import SafetyModules  # noqa: E402  (the reference-named safety modules)

assert torch.__version__.split("+")[0] == "2.15.0", torch.__version__
assert transformers.__version__ == "5.23.0", transformers.__version__

DECODE_STEPS = 32
STAGE1_BATCH, STAGE1_LEN, CLASSIFY_LEN = 4, 48, 26
IGNORE = -100


# --- inputs (benches/common/inputs.rs) --------------------------------------------------------------------------

def text_id(i, row):
    return 1 if i == 0 else (i * 7919 + row * 104_729 + 101) % 49_000 + 100


def pixels(batch):
    b = torch.arange(batch, dtype=torch.float32).view(batch, 1, 1, 1)
    c = torch.arange(3, dtype=torch.float32).view(1, 3, 1, 1)
    y = torch.arange(224, dtype=torch.float32).view(1, 1, 224, 1)
    x = torch.arange(224, dtype=torch.float32).view(1, 1, 1, 224)
    return torch.sin(0.37 * c + 0.011 * y + 0.017 * x + 0.5 * b)


def prompt_ids(n):
    return torch.tensor([[text_id(i, 0) for i in range(n)]])


def with_image(n, row, image):
    return [image if i == 1 else text_id(i, row) for i in range(n)]


def stage1_features(row):
    p = torch.arange(256, dtype=torch.float32).view(256, 1)
    d = torch.arange(384, dtype=torch.float32).view(1, 384)
    return (0.5 * torch.sin(0.013 * p + 0.029 * d + row)).unsqueeze(0)


# --- model --------------------------------------------------------------------------------------------------------

def strip(sd, prefix):
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


class Quickstart:
    def __init__(self, model_dir):
        with open(os.path.join(model_dir, "config.json")) as f:
            cfg = json.load(f)
        sd = load_file(os.path.join(model_dir, "model.safetensors"))
        v, t, s = cfg["vision_config"], cfg["text_config"], cfg["safety_config"]
        self.image = cfg["image_token_index"]
        self.pool = s["llm_image_pool"]
        self.lam = s["cls_loss_weight"]
        vis_cfg = Dinov2Config(**{k: v[k] for k in v if k != "model_type"}, attn_implementation="sdpa")
        self.vision = Dinov2Model(vis_cfg).eval()
        self.vision.load_state_dict(strip(sd, "vision_tower."), strict=False)
        layer = cfg["vision_feature_layer"] % (v["num_hidden_layers"] + 1)
        self.vision.encoder.layer = self.vision.encoder.layer[:layer]  # no work past the feature layer
        txt_cfg = LlamaConfig(**{k: t[k] for k in t if k not in ("model_type", "rope_parameters", "rope_scaling")},
                              attn_implementation="sdpa")
        self.lm = LlamaForCausalLM(txt_cfg).eval()
        lm_sd = {"model." + k: w for k, w in strip(sd, "language_model.model.").items()}
        missing, unexpected = self.lm.load_state_dict(lm_sd, strict=False)
        assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
        self.lm.tie_weights()
        self.proj1 = torch.nn.Linear(v["hidden_size"], t["hidden_size"])
        self.proj2 = torch.nn.Linear(t["hidden_size"], t["hidden_size"])
        self.proj1.load_state_dict(strip(sd, "multi_modal_projector.linear_1."))
        self.proj2.load_state_dict(strip(sd, "multi_modal_projector.linear_2."))
        self.safety = SafetyModules({
            "num_safety_tokens": s["num_safety_tokens"], "encoder_hidden_size": s["vision_dim"],
            "hidden_size": s["abstractor_width"], "output_hidden_size": s["safety_dim"],
            "num_queries": s["num_queries"], "depth": s["abstractor_depth"], "mlp_depth": s["abstractor_mlp_depth"],
            "safety_heads": s["safety_heads"], "num_levels": s["num_levels"], "num_types": s["num_types"],
            "se_ratio": s["se_ratio"]})
        for m in self.safety.modules():  # timm's LayerNorm2d default eps is 1e-6; the checkpoint says otherwise
            if isinstance(m, torch.nn.LayerNorm):
                m.eps = s["norm_eps"]
        self.safety.load_state_dict({k: w for k, w in sd.items() if k.startswith(("safety_query", "safe_"))})
        for p in self.parameters():
            p.requires_grad_(False)

    def parameters(self):
        for m in (self.vision, self.lm, self.proj1, self.proj2, self.safety):
            yield from m.parameters()

    def features(self, px):
        return self.vision(pixel_values=px, output_hidden_states=True).hidden_states[-1][:, 1:]

    def classify(self, features, ids):
        sm = self.safety
        hs = sm.safe_mm_projector(features)
        b = hs.shape[0]
        kv = torch.cat([sm.safety_query_tokens.expand(b, -1, -1), hs], 1).transpose(0, 1)
        q = self.lm.model.embed_tokens(ids[:, :1]).transpose(0, 1)  # the prompt's first token
        z = sm.safe_part.cross_attention(q, kv, kv, need_weights=False)[0][0]
        return sm.safe_part.safety_head(z), sm.safe_part.other_head(z)

    def image_rows(self, features):
        b, n, d = features.shape
        g = math.isqrt(n)
        grid = features.transpose(1, 2).reshape(b, d, g, g)
        pooled = F.avg_pool2d(grid, self.pool).flatten(2).transpose(1, 2)
        proj = self.proj2(F.gelu(self.proj1(pooled)))
        s2 = self.safety.safety_query_tokens_2.expand(b, -1, -1)
        return torch.cat([s2, proj], 1)


# --- workloads ----------------------------------------------------------------------------------------------------

def stage1_step(m, opt):
    feats = torch.cat([stage1_features(r) for r in range(STAGE1_BATCH)])
    ids = torch.tensor([with_image(STAGE1_LEN, r + 1, m.image) for r in range(STAGE1_BATCH)])
    levels = torch.tensor([r % 4 for r in range(STAGE1_BATCH)])
    types = torch.tensor([r % 7 for r in range(STAGE1_BATCH)])
    safe_ids = ids.masked_fill(ids == m.image, 0)
    embeds = m.lm.model.embed_tokens(safe_ids)
    level, kind = m.classify(feats, safe_ids)
    rows = m.image_rows(feats)
    merged = torch.cat([embeds[:, :1], rows, embeds[:, 2:]], 1)
    labels = torch.cat([safe_ids[:, :1], torch.full(rows.shape[:2], IGNORE), safe_ids[:, 2:]], 1)
    logits = m.lm(inputs_embeds=merged).logits
    lm_loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=IGNORE)
    loss = lm_loss + m.lam * (F.cross_entropy(level, levels) + F.cross_entropy(kind, types))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(m.safety.parameters(), 1.0)
    opt.step()
    return loss.item()


def prefill(m, ids):
    out = m.lm(input_ids=ids, use_cache=True, logits_to_keep=1)
    return out.logits[:, -1], out.past_key_values


def decode(m, ids):
    logits, cache = prefill(m, ids)
    nxt = logits.argmax(-1, keepdim=True)
    tokens = [nxt.item()]
    start = time.perf_counter()
    for _ in range(DECODE_STEPS):
        out = m.lm(input_ids=nxt, past_key_values=cache, use_cache=True)
        cache = out.past_key_values
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        tokens.append(nxt.item())
    return time.perf_counter() - start, tokens


def timed(fn, runs, warmup=2):
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def criterion_times(root, group, ident):
    """Per-iteration seconds of each criterion sample (criterion writes group `a/b` as folder `a_b`), or None."""
    path = os.path.join(root, group, ident, "new", "sample.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        s = json.load(f)
    return [t / i / 1e9 for t, i in zip(s["times"], s["iters"])]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=os.path.join(os.path.dirname(SCRIPTS), "runs", "quickstart", "model"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--criterion", help="criterion output folder of `cargo bench --bench vs_pytorch`")
    ap.add_argument("--backend", default="flex", help="the Rust rows to compare with (flex, wgpu)")
    a = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(a.threads)
    m = Quickstart(a.model)
    rows = []  # (label, rust group, rust id, seconds per sample, scale: seconds -> reported unit, unit)

    for n in (1024, 2048):
        x, y = torch.randn(n, n), torch.randn(n, n)
        t = timed(lambda: x @ y, 10)
        rows.append((f"f32 GEMM {n}³, Burn (flex)", "gemm", str(n), t, 1e3, "ms"))
        rows.append((f"f32 GEMM {n}³, host engine", "gemm-host", str(n), t, 1e3, "ms"))
    with torch.inference_mode():
        for b in (1, 8):
            px = pixels(b)
            ids = torch.tensor([with_image(CLASSIFY_LEN, 0, m.image)] * b)
            ids = ids.masked_fill(ids == m.image, 0)
            t = timed(lambda: m.classify(m.features(px), ids), 10)
            rows.append((f"classify, batch {b} (ms per image)", "classify", str(b), t, 1e3 / b, "ms"))
            rows.append((f"classify, batch {b}, host vision engine (ms per image)", "classify-host", str(b), t,
                         1e3 / b, "ms"))
            if b == 1:
                level, kind = m.classify(m.features(px), ids)
                print("classify level logits", [round(v, 4) for v in level[0].tolist()])
        for n in (80, 320):
            ids = prompt_ids(n)
            t = timed(lambda: prefill(m, ids), 10)
            for engine, suffix in (("tensor path", ""), ("host f32", "-host-f32"), ("host Q8_0", "-host-q8_0")):
                rows.append((f"prefill, {n} tokens, {engine}", f"prefill{suffix}", str(n), t, 1e3, "ms"))
        for n in (80, 320):
            ids = prompt_ids(n)
            times, tokens = [], []
            for _ in range(2 + 5):
                t, tokens = decode(m, ids)
                times.append(t)
            print(f"greedy tokens after {n}: {tokens[:12]}")
            for engine, suffix in (("tensor path", ""), ("host f32", "-host-f32"), ("host Q8_0", "-host-q8_0")):
                rows.append((f"decode after {n}, {engine} (ms per token)", f"decode-{DECODE_STEPS}{suffix}", str(n),
                             times[2:], 1e3 / DECODE_STEPS, "ms"))
    for p in m.safety.parameters():
        p.requires_grad_(True)
    opt = torch.optim.AdamW(m.safety.parameters(), lr=1e-4, weight_decay=0.0)
    rows.append((f"stage-I step, batch {STAGE1_BATCH}", "stage1-step", str(STAGE1_BATCH),
                 timed(lambda: stage1_step(m, opt), 5, warmup=1), 1e3, "ms"))

    print(f"\ntorch {torch.__version__}, transformers {transformers.__version__}, {torch.get_num_threads()} threads, "
          f"{torch.backends.cpu.get_cpu_capability()}")
    head = "| workload | PyTorch min / median / max | psa-vlm min / median / max | PyTorch ÷ psa-vlm (median) |"
    print(head + "\n|---|---|---|---|")
    fmt = lambda ts, s: " / ".join(f"{v * s:.1f}" for v in (min(ts), statistics.median(ts), max(ts)))  # noqa: E731
    for label, group, ident, ts, scale, unit in rows:
        ours = criterion_times(a.criterion, f"{a.backend}_{group}", ident) if a.criterion else None
        rust = f"{fmt(ours, scale)} {unit}" if ours else "—"
        ratio = f"{statistics.median(ts) / statistics.median(ours):.2f}×" if ours else "—"
        print(f"| {label} | {fmt(ts, scale)} {unit} | {rust} | {ratio} |")


if __name__ == "__main__":
    main()
