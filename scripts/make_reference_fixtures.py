#!/usr/bin/env python3
"""Reference outputs of three PyTorch / Hugging Face components the Rust side re-implements: a PEFT LoRA adapter on a
tiny LLaMA (forward, loss, adapter gradients, merge), two steps of torch.optim.AdamW, and greedy decoding of a tiny
LLaMA with tied input/output embeddings.

Run once, offline, from the repository root, after scripts/make_fixtures.py (part 1 reads its committed
fixtures/tiny_llava/hub_f32), and commit the outputs under fixtures/references/:

    ~/.cache/psa-py/bin/python scripts/make_reference_fixtures.py

Pinned versions (torch, transformers, safetensors asserted on importing make_fixtures; peft asserted here):
    python        3.11.7
    torch         2.15.0 (+cu132 wheel from PyPI; everything runs on CPU)
    transformers  5.23.0
    tokenizers    0.23.3
    safetensors   0.8.0
    numpy         2.4.6
    pillow        13.0.0 (only because make_fixtures imports it)
    peft          0.22.0

Determinism: make_fixtures.setup_determinism() (torch.manual_seed(0), torch.use_deterministic_algorithms(True),
torch.set_num_threads(1)), explicit torch.Generator objects for every random draw, f32, eager attention. The
reference files are written with make_fixtures.write_safetensors_canonical (sorted header), so a rerun gives
byte-identical files (save_pretrained outputs included; the script has no report.json, nothing carries a date).
Every run performs the self-checks printed as [ok] / [FAIL] and aborts if one fails.

Outputs (fixtures/references/):

peft_lora/base/                      the language model of fixtures/tiny_llava/hub_f32 as a standalone
                                     LlamaForCausalLM (save_pretrained, safetensors, F32): config.json,
                                     generation_config.json, model.safetensors with keys model.embed_tokens.weight,
                                     model.layers.N.{input_layernorm,post_attention_layernorm}.weight,
                                     model.layers.N.self_attn.{q,k,v,o}_proj.weight,
                                     model.layers.N.mlp.{gate,up,down}_proj.weight, model.norm.weight,
                                     lm_head.weight (vocab 1000, hidden 64, 2 layers, 4 heads, kv heads 4, MLP 172,
                                     untied head)
peft_lora/adapter/                   PEFT save_pretrained of LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                                     target_modules=[q,k,v,o,gate,up,down]_proj, bias="none",
                                     task_type="CAUSAL_LM"): adapter_config.json (target_modules rewritten
                                     sorted for byte-identical reruns; PEFT's boilerplate model-card README.md
                                     removed) + adapter_model.safetensors (F32) with PEFT's key names, e.g.
                                     base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight [4, 64] and
                                     base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight [64, 4]
                                     (no ".default" in the saved names; 28 tensors). Scaling = alpha / r = 2.
                                     Every lora_A / lora_B is redrawn as 0.05 * N(0,1) (PEFT's own init sets
                                     lora_B = 0, which would make the adapter a no-op).
peft_lora/reference.safetensors      input_ids       [2, 12] int64   random ids in [3, 990), no padding
                                     attention_mask  [2, 12] int64   all ones
                                     labels          [2, 12] int64   input_ids with column 0 set to -100
                                     logits          [2, 12, 1000] f32  PEFT model (train() mode, dropout 0)
                                     base_logits     [2, 12, 1000] f32  the same ids through base/ alone
                                     merged_logits   [2, 12, 1000] f32  after merge_and_unload() (W + 2 * B @ A)
                                     loss            [1] f32   the model's causal-LM loss: mean cross-entropy of
                                                               logits[:, :-1] against labels[:, 1:] (22 targets)
                                     grad.<path>     d loss / d adapter tensor, one per saved adapter key, <path> =
                                                     the saved key without "base_model.model.", e.g.
                                                     grad.model.layers.0.self_attn.q_proj.lora_A.weight [4, 64],
                                                     grad.model.layers.1.mlp.down_proj.lora_B.weight [64, 4]
                                                     (lora_A [r, in], lora_B [out, r]; down_proj in = 172, gate/up_proj
                                     out = 172, all others 64; f32; 28 tensors)

adamw.safetensors                    torch.optim.AdamW, lr 1e-3, betas (0.9, 0.999), eps 1e-8, amsgrad False,
                                     foreach False, two cases weight_decay 0.0 ("wd0") and 0.1 ("wd01"), two steps
                                     each on three parameters of shapes [5, 7], [7], [3, 4, 2] (all f32):
                                     p{i}.init, g{i}.step1, g{i}.step2          (i = 0, 1, 2; N(0,1) draws)
                                     wd0.p{i}.step1, wd0.p{i}.step2            parameter after step 1 / step 2
                                     wd01.p{i}.step1, wd01.p{i}.step2
                                     metadata: lr, beta1, beta2, eps, weight_decays, update rule.

tied_llama/model/                    save_pretrained of a random LlamaForCausalLM with tie_word_embeddings=True
                                     (vocab 1000, hidden 64, 2 layers, 4 heads, 2 kv heads (GQA), head_dim 16,
                                     MLP 172, max pos 128, RMSNorm eps 1e-5, RoPE theta 1e4, bos 1, eos 2, pad 998;
                                     weights: make_fixtures.redraw scheme, seed 3131, except embed_tokens
                                     0.1 * N(0,1) and the final norm 8 * (1 + 0.1 N), see TIED_EMBED_STD):
                                     config.json, generation_config.json, model.safetensors (F32, NO lm_head.weight:
                                     the output projection is model.embed_tokens.weight)
tied_llama/reference.safetensors     prompt_a      [1, 11] int64   [1, 11, 12, 13, 14, 21, 22, 23, 24, 25, 26]
                                     logits_a      [1, 11, 1000] f32  full forward of prompt_a
                                     tokens_a      [1, 10] int64   greedy new tokens after prompt_a
                                     batch_ids     [2, 11] int64   prompt A and B = [1, 40, 41, 42, 43, 44],
                                                                   LEFT-padded with 998
                                     batch_mask    [2, 11] int64   0 on padding
                                     batch_tokens  [2, 10] int64   greedy new tokens of the padded batch
                                     metadata: min top-1 minus top-2 logit margin over all greedy steps.
                                     Greedy = generate(do_sample=False, num_beams=1, max_new_tokens=10,
                                     eos_token_id=None (EOS stopping disabled), pad_token_id=998), KV cache,
                                     checked against a cache-free argmax loop.
"""

import copy
import hashlib
import json
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.dont_write_bytecode = True  # no scripts/__pycache__ from importing make_fixtures
import make_fixtures as mf  # noqa: E402  (checks the pinned torch / transformers / safetensors on import)

import peft  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402
from peft.tuners.lora import LoraLayer  # noqa: E402
from safetensors import safe_open  # noqa: E402
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, LlavaForConditionalGeneration  # noqa: E402

PEFT = "0.22.0"
assert peft.__version__ == PEFT, f"peft {peft.__version__} != {PEFT}"

OUT = os.path.join(mf.FIX, "references")
ATTN = mf.ATTN_IMPL

LORA_R, LORA_ALPHA = 4, 8
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LORA_SEED, LORA_STD = 4242, 0.05
LORA_B, LORA_T = 2, 12

ADAM_LR, ADAM_BETAS, ADAM_EPS = 1e-3, (0.9, 0.999), 1e-8
ADAM_CASES = (("wd0", 0.0), ("wd01", 0.1))
ADAM_SHAPES = ([5, 7], [7], [3, 4, 2])
ADAM_SEED = 5151

TIED_SEED = 3131
# Tied embeddings make a random model repeat its input token (the last token's own embedding in the residual stream
# scores highest against itself) when the embedding is large next to the layer outputs: keep it small (0.1 N(0,1):
# varied tokens), and scale the final RMSNorm weight by 8 instead, which scales the logits (and the top-1/top-2
# margins) without changing any argmax.
TIED_EMBED_STD = 0.1
TIED_FINAL_NORM_SCALE = 8.0
TIED_NEW = 10


def versions():
    v = mf.versions()
    v["peft"] = peft.__version__
    return v


def meta_base():
    return {k: v for k, v in versions().items() if k != "pillow"}


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def saved_keys(path):
    with safe_open(path, "pt") as f:
        return {k: list(f.get_slice(k).get_shape()) for k in sorted(f.keys())}


# ---------------------------------------------------------------------------------------------------------------
# 1. PEFT LoRA on the tiny LLaVA's language model
# ---------------------------------------------------------------------------------------------------------------

def lora_grad_name(param_name):
    """base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight
    -> grad.model.layers.0.self_attn.q_proj.lora_A.weight"""
    assert param_name.startswith("base_model.model."), param_name
    assert ".default." in param_name, param_name
    return "grad." + param_name[len("base_model.model."):].replace(".default.", ".")


def make_peft_lora(checks):
    print("== references/peft_lora")
    out = os.path.join(OUT, "peft_lora")
    mf.fresh_dir(out)
    mf.setup_determinism()

    llava = LlavaForConditionalGeneration.from_pretrained(
        os.path.join(mf.FIX, "tiny_llava", "hub_f32"), attn_implementation=ATTN, dtype=torch.float32).eval()
    text_cfg = LlamaConfig.from_dict(llava.config.text_config.to_dict())
    base = LlamaForCausalLM._from_config(text_cfg, attn_implementation=ATTN, dtype=torch.float32).eval()
    src = llava.state_dict()
    sd = {}
    for k, v in src.items():
        if k.startswith("model.language_model."):
            sd["model." + k[len("model.language_model."):]] = v.clone()
        elif k == "lm_head.weight":
            sd[k] = v.clone()
    base.load_state_dict(sd, strict=True)
    checks.equal("peft.base: every LlamaForCausalLM key copied", sorted(sd), sorted(base.state_dict()))
    probe = torch.tensor([mf.PROMPT_A, [1, 40, 41, 42, 43, 44, 5, 6, 7, 8, 9]])
    checks.diff("peft.base: standalone LLaMA logits == LLaVA text-only logits", base(input_ids=probe).logits,
                llava(input_ids=probe).logits, 0.0)
    del llava
    base.generation_config.eos_token_id = None
    base.name_or_path = "fixtures/references/peft_lora/base"  # recorded by PEFT as base_model_name_or_path
    base.save_pretrained(os.path.join(out, "base"), safe_serialization=True)
    keys = saved_keys(os.path.join(out, "base", "model.safetensors"))
    checks.equal("peft.base: saved keys == state_dict keys", sorted(keys), sorted(base.state_dict()))
    reloaded = LlamaForCausalLM.from_pretrained(os.path.join(out, "base"), attn_implementation=ATTN).eval()
    checks.diff("peft.base: reload base/ -> same logits", reloaded(input_ids=probe).logits,
                base(input_ids=probe).logits, 0.0)

    # inputs
    gen = torch.Generator().manual_seed(LORA_SEED)
    input_ids = torch.randint(3, 990, (LORA_B, LORA_T), generator=gen)
    attention_mask = torch.ones_like(input_ids)
    labels = input_ids.clone()
    labels[:, 0] = -100
    base_logits = base(input_ids=input_ids, attention_mask=attention_mask).logits.clone()

    # the adapter
    lcfg = LoraConfig(r=LORA_R, lora_alpha=LORA_ALPHA, lora_dropout=0.0, target_modules=list(LORA_TARGETS),
                      bias="none", task_type="CAUSAL_LM")
    model = get_peft_model(copy.deepcopy(base), lcfg)
    named = dict(model.named_parameters())
    lora_names = sorted(n for n in named if ".lora_A." in n or ".lora_B." in n)
    checks.value("peft: adapter tensors (2 per targeted linear, 7 per layer, 2 layers)", len(lora_names),
                 len(lora_names) == 2 * len(LORA_TARGETS) * text_cfg.num_hidden_layers)
    trainable = sorted(n for n, p in named.items() if p.requires_grad)
    checks.equal("peft: trainable parameters == the lora_A / lora_B tensors", trainable, lora_names)
    with torch.no_grad():
        for n in lora_names:  # sorted-name order, one generator
            named[n].copy_(LORA_STD * torch.randn(named[n].shape, generator=gen, dtype=torch.float32))
    for n in lora_names:
        mod_path = n[:n.index(".lora_")]
        d_in, d_out = model.get_submodule(mod_path).base_layer.in_features, model.get_submodule(mod_path).base_layer.out_features
        want = [LORA_R, d_in] if ".lora_A." in n else [d_out, LORA_R]
        assert list(named[n].shape) == want, (n, list(named[n].shape), want)
    scaling = {float(v) for m in model.modules() if isinstance(m, LoraLayer) for v in m.scaling.values()}
    checks.value("peft: scaling == lora_alpha / r", sorted(scaling), scaling == {LORA_ALPHA / LORA_R})

    # forward / loss / backward in train() mode
    model.train()
    with torch.enable_grad():
        o = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
        o.loss.backward()
    logits = o.logits.detach().clone()
    loss = o.loss.detach().reshape(1).clone()
    by_hand = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                                labels[:, 1:].reshape(-1), ignore_index=-100)
    checks.value("peft: loss == mean CE(logits[:, :-1], labels[:, 1:]) by hand", abs(float(by_hand - loss[0])),
                 abs(float(by_hand - loss[0])) < 1e-6)
    d_base = mf.maxdiff(logits, base_logits)
    checks.value("peft: adapter changes the logits (max abs vs base_logits)", d_base, d_base > 1e-2)
    grads = {lora_grad_name(n): named[n].grad.detach().clone() for n in lora_names}
    checks.value("peft: every adapter gradient non-zero", min(float(g.abs().max()) for g in grads.values()),
                 all(float(g.abs().max()) > 0 for g in grads.values()))
    model.eval()
    checks.diff("peft: eval() logits == train() logits (dropout 0)", model(input_ids=input_ids,
                attention_mask=attention_mask).logits, logits, 0.0)

    # an independent recomputation of one adapted projection: W x + (alpha/r) B A x
    q = model.get_submodule("base_model.model.model.layers.0.self_attn.q_proj")
    x = torch.randn(3, text_cfg.hidden_size, generator=torch.Generator().manual_seed(7))
    ref = x @ q.base_layer.weight.T + (LORA_ALPHA / LORA_R) * (x @ q.lora_A["default"].weight.T) @ q.lora_B["default"].weight.T
    checks.diff("peft: lora Linear == W x + (alpha/r) B A x", q(x), ref, 1e-6)

    # save the adapter; reload it onto a fresh base
    model.save_pretrained(os.path.join(out, "adapter"), safe_serialization=True)
    # PEFT keeps target_modules as a set, so the list order in adapter_config.json follows Python's per-process
    # string hashing: rewrite it sorted (same JSON layout as PEFT's writer) so that reruns are byte-identical, and
    # drop the boilerplate model card PEFT writes next to the adapter.
    acfg_path = os.path.join(out, "adapter", "adapter_config.json")
    with open(acfg_path, encoding="utf-8") as f:
        acfg = json.load(f)
    acfg["target_modules"] = sorted(acfg["target_modules"])
    with open(acfg_path, "w", encoding="utf-8") as f:
        f.write(json.dumps(acfg, indent=2, sort_keys=True))
    os.remove(os.path.join(out, "adapter", "README.md"))
    akeys = saved_keys(os.path.join(out, "adapter", "adapter_model.safetensors"))
    expect = {"base_model.model." + g[len("grad."):]: list(v.shape) for g, v in grads.items()}
    checks.equal("peft: saved adapter keys == base_model.model.<path> without .default", sorted(akeys.items()),
                 sorted(expect.items()))
    checks.value("peft: no saved adapter key contains 'default'", [k for k in akeys if "default" in k],
                 not any("default" in k for k in akeys))
    checks.value("peft: adapter_config r / lora_alpha / targets", [acfg["r"], acfg["lora_alpha"],
                 sorted(acfg["target_modules"])], acfg["r"] == LORA_R and acfg["lora_alpha"] == LORA_ALPHA
                 and sorted(acfg["target_modules"]) == sorted(LORA_TARGETS))
    again = PeftModel.from_pretrained(copy.deepcopy(base), os.path.join(out, "adapter")).eval()
    checks.diff("peft: reload adapter/ onto base -> same logits", again(input_ids=input_ids,
                attention_mask=attention_mask).logits, logits, 0.0)
    del again

    # merged
    merged = copy.deepcopy(model).merge_and_unload().eval()
    checks.value("peft: merge_and_unload gives a plain LlamaForCausalLM", type(merged).__name__,
                 type(merged) is LlamaForCausalLM and not any("lora" in k for k in merged.state_dict()))
    merged_logits = merged(input_ids=input_ids, attention_mask=attention_mask).logits.clone()
    d_merge = mf.maxdiff(merged_logits, logits)
    checks.value("peft: merged_logits vs adapter logits (max abs, float rounding)", d_merge, d_merge < 1e-4)
    w = base.state_dict()["model.layers.1.mlp.down_proj.weight"]
    a = named["base_model.model.model.layers.1.mlp.down_proj.lora_A.default.weight"].detach()
    b = named["base_model.model.model.layers.1.mlp.down_proj.lora_B.default.weight"].detach()
    checks.diff("peft: merged W == W + (alpha/r) B @ A", merged.state_dict()["model.layers.1.mlp.down_proj.weight"],
                w + (LORA_ALPHA / LORA_R) * b @ a, 1e-6)

    T = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels, "logits": logits,
         "base_logits": base_logits, "merged_logits": merged_logits, "loss": loss, **grads}
    meta = {**meta_base(), "seed": LORA_SEED, "attn_implementation": ATTN,
            "lora": (f"LoraConfig(r={LORA_R}, lora_alpha={LORA_ALPHA}, lora_dropout=0.0, target_modules="
                     f"{LORA_TARGETS}, bias='none', task_type='CAUSAL_LM'); scaling = alpha/r = {LORA_ALPHA / LORA_R}"),
            "lora_init": (f"every lora_A / lora_B redrawn as {LORA_STD} * N(0,1), sorted parameter-name order, "
                          f"torch.Generator().manual_seed({LORA_SEED}), after drawing input_ids"),
            "loss": "transformers causal-LM loss: mean CE of logits[:, :-1] vs labels[:, 1:], ignore_index -100",
            "grad_names": "grad.<adapter key without 'base_model.model.'>; lora_A [r, in], lora_B [out, r]",
            "mode": "train() for logits / loss / grads (lora_dropout 0.0); eval() logits are identical",
            "merged_logits": "copy.deepcopy(peft_model).merge_and_unload() forward on input_ids"}
    shapes = mf.save_fixture(os.path.join(out, "reference.safetensors"), T, meta)
    print(f"  loss {float(loss[0]):.6f}; |logits - base_logits| max {d_base:.4f}; merged diff {d_merge:.2e}")
    return {"shapes": shapes, "adapter_keys": akeys, "adapter_config": acfg, "loss": float(loss[0])}


# ---------------------------------------------------------------------------------------------------------------
# 2. torch.optim.AdamW
# ---------------------------------------------------------------------------------------------------------------

def adamw_by_hand(p, grads, wd):
    """The decoupled-weight-decay Adam update in float64, as torch's single-tensor AdamW writes it."""
    p = p.double().clone()
    m, v = torch.zeros_like(p), torch.zeros_like(p)
    b1, b2 = ADAM_BETAS
    out = []
    for t, g in enumerate(grads, 1):
        g = g.double()
        p = p * (1 - ADAM_LR * wd)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        denom = v.sqrt() / math.sqrt(1 - b2 ** t) + ADAM_EPS
        p = p - (ADAM_LR / (1 - b1 ** t)) * m / denom
        out.append(p)
    return out


def make_adamw(checks):
    print("== references/adamw")
    mf.setup_determinism()
    gen = torch.Generator().manual_seed(ADAM_SEED)
    T = {}
    for i, s in enumerate(ADAM_SHAPES):
        T[f"p{i}.init"] = torch.randn(s, generator=gen, dtype=torch.float32)
    for step in (1, 2):
        for i, s in enumerate(ADAM_SHAPES):
            T[f"g{i}.step{step}"] = torch.randn(s, generator=gen, dtype=torch.float32)
    for tag, wd in ADAM_CASES:
        params = [torch.nn.Parameter(T[f"p{i}.init"].clone()) for i in range(len(ADAM_SHAPES))]
        opt = torch.optim.AdamW(params, lr=ADAM_LR, betas=ADAM_BETAS, eps=ADAM_EPS, weight_decay=wd,
                                amsgrad=False, foreach=False, maximize=False, capturable=False,
                                differentiable=False, fused=False)
        for step in (1, 2):
            for i, p in enumerate(params):
                p.grad = T[f"g{i}.step{step}"].clone()
            opt.step()
            for i, p in enumerate(params):
                T[f"{tag}.p{i}.step{step}"] = p.detach().clone()
        for i in range(len(ADAM_SHAPES)):
            ref = adamw_by_hand(T[f"p{i}.init"], [T[f"g{i}.step1"], T[f"g{i}.step2"]], wd)
            d = max(mf.maxdiff(T[f"{tag}.p{i}.step{s}"], ref[s - 1]) for s in (1, 2))
            checks.value(f"adamw.{tag}.p{i}: torch vs float64 by hand (max abs)", d, d < 1e-6)
        d = max(mf.maxdiff(T[f"{tag}.p{i}.step2"], T[f"p{i}.init"]) for i in range(len(ADAM_SHAPES)))
        checks.value(f"adamw.{tag}: parameters moved (max abs after 2 steps)", d, 1e-4 < d < 3e-3)
    dwd = max(mf.maxdiff(T[f"wd0.p{i}.step2"], T[f"wd01.p{i}.step2"]) for i in range(len(ADAM_SHAPES)))
    checks.value("adamw: weight decay changes the result (max abs wd0 vs wd01)", dwd, dwd > 1e-6)
    meta = {**meta_base(), "seed": ADAM_SEED, "lr": repr(ADAM_LR), "beta1": repr(ADAM_BETAS[0]),
            "beta2": repr(ADAM_BETAS[1]), "eps": repr(ADAM_EPS), "weight_decays": "wd0=0.0, wd01=0.1",
            "options": "amsgrad=False, foreach=False, fused=False, maximize=False, capturable=False",
            "draws": ("one torch.Generator().manual_seed(%d): p0,p1,p2 init, then g0,g1,g2 step1, then g0,g1,g2 "
                      "step2, all N(0,1) f32" % ADAM_SEED),
            "update": ("t = 1, 2: p *= 1 - lr*wd; m = b1*m + (1-b1)*g; v = b2*v + (1-b2)*g*g; "
                       "p -= (lr / (1 - b1^t)) * m / (sqrt(v) / sqrt(1 - b2^t) + eps); m = v = 0 initially")}
    shapes = mf.save_fixture(os.path.join(OUT, "adamw.safetensors"), T, meta)
    return {"shapes": shapes}


# ---------------------------------------------------------------------------------------------------------------
# 3. Tied-embedding LLaMA, greedy decoding
# ---------------------------------------------------------------------------------------------------------------

def tied_config():
    return LlamaConfig(
        vocab_size=1000, hidden_size=64, intermediate_size=172, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, hidden_act="silu", rms_norm_eps=1e-5, rope_theta=1e4,
        max_position_embeddings=128, bos_token_id=mf.BOS, eos_token_id=mf.EOS, pad_token_id=mf.PAD,
        tie_word_embeddings=True,
    )


def greedy_config():
    return GenerationConfig(do_sample=False, num_beams=1, max_new_tokens=TIED_NEW, min_new_tokens=None,
                            eos_token_id=None, pad_token_id=mf.PAD, bos_token_id=mf.BOS, use_cache=True,
                            return_dict_in_generate=True, output_logits=True)


def generate_with_margins(model, ids, mask, margins):
    out = model.generate(input_ids=ids, attention_mask=mask, generation_config=greedy_config())
    new = out.sequences[:, ids.shape[1]:]
    assert new.shape[1] == TIED_NEW, new.shape
    for step_logits in out.logits:
        top2 = step_logits.float().topk(2, -1).values
        margins.append(float((top2[:, 0] - top2[:, 1]).min()))
    return new


def cache_free_greedy(model, ids, mask):
    ids, mask = ids.clone(), mask.clone()
    new = []
    for _ in range(TIED_NEW):
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        nxt = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, -1].argmax(-1, keepdim=True)
        new.append(nxt)
        ids = torch.cat([ids, nxt], 1)
        mask = torch.cat([mask, torch.ones_like(nxt)], 1)
    return torch.cat(new, 1)


def make_tied_llama(checks):
    print("== references/tied_llama")
    out = os.path.join(OUT, "tied_llama")
    mf.fresh_dir(out)
    mf.setup_determinism()
    model = LlamaForCausalLM._from_config(tied_config(), attn_implementation=ATTN, dtype=torch.float32).eval()
    sd = model.state_dict()
    names = {k: tuple(v.shape) for k, v in sd.items() if k != "lm_head.weight"}
    values = mf.redraw(names, torch.Generator().manual_seed(TIED_SEED),
                       {"model.embed_tokens.weight": lambda n: TIED_EMBED_STD * n,
                        "model.norm.weight": lambda n: TIED_FINAL_NORM_SCALE * (1.0 + 0.1 * n)})
    missing, unexpected = model.load_state_dict(values, strict=False)
    checks.value("tied: load leaves only lm_head.weight to the tie", [missing, unexpected],
                 list(missing) == ["lm_head.weight"] and not unexpected)
    model.tie_weights()
    checks.value("tied: lm_head.weight is model.embed_tokens.weight (same storage)", True,
                 model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
                 and torch.equal(model.lm_head.weight, values["model.embed_tokens.weight"]))
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = mf.PAD
    model.generation_config.bos_token_id = mf.BOS
    model.save_pretrained(os.path.join(out, "model"), safe_serialization=True)
    keys = saved_keys(os.path.join(out, "model", "model.safetensors"))
    checks.value("tied: saved model.safetensors has no lm_head.weight", len(keys),
                 "lm_head.weight" not in keys and sorted(keys) == sorted(names))
    with open(os.path.join(out, "model", "config.json")) as f:
        cfg = json.load(f)
    checks.value("tied: config.json tie_word_embeddings", cfg.get("tie_word_embeddings"),
                 cfg.get("tie_word_embeddings") is True)

    prompt_a = torch.tensor([mf.PROMPT_A])
    ones_a = torch.ones_like(prompt_a)
    logits_a = model(input_ids=prompt_a, attention_mask=ones_a).logits.clone()
    h = model.model(input_ids=prompt_a, attention_mask=ones_a).last_hidden_state
    checks.diff("tied: logits_a == final hidden @ embed_tokens.T", logits_a, h @ values["model.embed_tokens.weight"].T,
                1e-5)
    margins = []
    tokens_a = generate_with_margins(model, prompt_a, ones_a, margins)
    checks.equal("tied: tokens_a == cache-free argmax loop", tokens_a, cache_free_greedy(model, prompt_a, ones_a))
    batch_ids, batch_mask = mf.pad_batch([mf.PROMPT_A, mf.PROMPT_B], "left")
    batch_tokens = generate_with_margins(model, batch_ids, batch_mask, margins)
    checks.equal("tied: batch_tokens == cache-free argmax loop (positions from mask)", batch_tokens,
                 cache_free_greedy(model, batch_ids, batch_mask))
    single_b = generate_with_margins(model, torch.tensor([mf.PROMPT_B]), torch.ones(1, len(mf.PROMPT_B),
                                     dtype=torch.long), margins)
    checks.equal("tied: batch_tokens == each prompt generated alone", batch_tokens, torch.cat([tokens_a, single_b]))
    distinct = [len(set(r)) for r in batch_tokens.tolist()]
    checks.value("tied: distinct tokens per generated row (not collapsed, >= 5 of 10)", distinct, min(distinct) >= 5)
    min_margin = min(margins)
    checks.value("tied: min top1-top2 logit margin over all greedy steps (> 1e-3)", min_margin, min_margin > 1e-3)
    reloaded = LlamaForCausalLM.from_pretrained(os.path.join(out, "model"), attn_implementation=ATTN).eval()
    checks.value("tied: reload keeps the tie", True,
                 reloaded.lm_head.weight.data_ptr() == reloaded.model.embed_tokens.weight.data_ptr())
    checks.diff("tied: reload model/ -> logits_a", reloaded(input_ids=prompt_a).logits, logits_a, 0.0)

    T = {"prompt_a": prompt_a, "logits_a": logits_a, "tokens_a": tokens_a, "batch_ids": batch_ids,
         "batch_mask": batch_mask, "batch_tokens": batch_tokens}
    meta = {**meta_base(), "seed": TIED_SEED, "attn_implementation": ATTN,
            "weights": (f"make_fixtures.redraw scheme (sorted names, one generator, f16-exact): >=2-D "
                        f"N(0,1)/sqrt(last dim), layer norm weights 1+0.1N; model.embed_tokens.weight "
                        f"{TIED_EMBED_STD}*N(0,1) (also the output projection: tied); model.norm.weight "
                        f"{TIED_FINAL_NORM_SCALE}*(1+0.1N)"),
            "generation": (f"generate(do_sample=False, num_beams=1, max_new_tokens={TIED_NEW}, eos_token_id=None, "
                           f"pad_token_id={mf.PAD}), KV cache; EOS stopping disabled; equal to a cache-free argmax "
                           "loop with position_ids = clamp(cumsum(mask)-1, 0)"),
            "batch": f"prompt A={mf.PROMPT_A}, B={mf.PROMPT_B}, LEFT-padded with {mf.PAD}; mask 0 on padding",
            "min_greedy_margin": repr(min_margin),
            "margins": "top-1 minus top-2 logit at every greedy step of tokens_a, batch_tokens and prompt B alone"}
    shapes = mf.save_fixture(os.path.join(out, "reference.safetensors"), T, meta)
    print(f"  tokens_a {tokens_a.tolist()}; batch_tokens {batch_tokens.tolist()}; min margin {min_margin:.4f}")
    return {"shapes": shapes, "min_margin": min_margin, "tokens_a": tokens_a.tolist(),
            "batch_tokens": batch_tokens.tolist(), "saved_keys": keys}


def main():
    print("versions:", versions())
    for k in ("python", "numpy", "tokenizers"):
        if versions()[k] != mf.PINNED[k]:
            print(f"WARNING: {k} {versions()[k]} != pinned {mf.PINNED[k]}")
    os.makedirs(OUT, exist_ok=True)
    checks = mf.Checks()
    res = {"peft_lora": make_peft_lora(checks), "adamw": make_adamw(checks), "tied_llama": make_tied_llama(checks)}
    checks.finish()
    for name, r in res.items():
        print(f"-- {name}")
        for k, v in r["shapes"].items():
            print(f"   {k}: {v['shape']} {v['dtype']}")
    print("files:")
    for rel, size in mf.file_sizes(OUT).items():
        print(f"   {rel}  {size} B  sha256 {sha256(os.path.join(OUT, rel))[:16]}")
    print("all self-checks passed")


if __name__ == "__main__":
    main()
