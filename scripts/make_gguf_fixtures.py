#!/usr/bin/env python3
"""Tiny LLaMA GGUF files and transformers' reading of them, for psa-models' GGUF import tests.

Two variants, written with the `gguf` package the way llama.cpp's converter writes them (Q/K rows permuted for
interleaved RoPE, dimensions innermost-first, quantised blocks):

- `spm.gguf`: a SentencePiece-style vocabulary (`tokenizer.ggml.model = "llama"`: tokens, scores, token types; no
  merges) taken from `fixtures/tiny_tokenizer`, an untied `output.weight`, tensors in F32, F16, Q8_0, Q4_0 and Q4_1.
- `bpe.gguf`: a byte-level BPE vocabulary (`tokenizer.ggml.model = "gpt2"`: tokens, merges, token types) trained
  here on a fixed corpus, tied embeddings (no `output.weight`, as SmolLM2), GQA, Q4_1/Q8_0 tensors.

The reference is transformers' own GGUF support: `from_pretrained(dir, gguf_file=...)` dequantises the weights and
builds the tokenizer from the metadata. `fixture.safetensors` holds its logits for fixed ids and the dequantised
`q_proj` / `k_proj` of layer 0 (HF row order); `tokens.json` holds its token ids for test strings.

Pinned versions (the committed outputs were produced with exactly these):
    torch 2.15.0, transformers 5.23.0, accelerate 1.13.0, gguf 0.19.0, numpy 2.4.6, tokenizers 0.23.3

    python scripts/make_gguf_fixtures.py        # from the repository root
"""
import json
import pathlib

import gguf
import numpy as np
import torch
from gguf import GGMLQuantizationType as Q
from safetensors.torch import save_file
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "fixtures" / "tiny_gguf"
STRINGS = [
    "Hello world",
    "What is shown in this picture?",
    "  leading spaces, digits 12345 and UTF-8: café, 東京!",
    "<|im_start|>user\nHi<|im_end|>",
    "<image>\nDescribe it.",
]


def permute(w, n_head):
    """llama.cpp's HF -> GGUF row permutation of q_proj / k_proj (rotate-half pairs made adjacent)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def byte_level_vocab():
    """A tiny byte-level BPE (vocab 600) trained on a fixed corpus, with ChatML specials first."""
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = [(ROOT / "README.md").read_text()] * 3 + [s for s in STRINGS]
    corpus += ["The quick brown fox jumps over the lazy dog. " * 4, "0123456789 " * 8]
    tok.train_from_iterator(corpus, trainer)
    data = json.loads(tok.to_str())
    vocab = sorted(data["model"]["vocab"].items(), key=lambda kv: kv[1])
    tokens = [t for t, _ in vocab]
    merges = [" ".join(m) if isinstance(m, list) else m for m in data["model"]["merges"]]
    types = [3 if t in specials else 1 for t in tokens]
    return tokens, merges, types


def spm_vocab():
    """The tiny LLaMA-layout tokenizer as a sentencepiece-style GGUF vocabulary (scores = -id: merge order)."""
    data = json.loads((ROOT / "fixtures" / "tiny_tokenizer" / "tokenizer.json").read_text())
    vocab = dict(data["model"]["vocab"])
    for added in data["added_tokens"]:
        vocab[added["content"]] = added["id"]
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    special = {a["content"] for a in data["added_tokens"]}
    types = []
    for i, t in enumerate(tokens):
        if t == "<unk>":
            types.append(2)
        elif t in special:
            types.append(3)
        elif t.startswith("<0x") and t.endswith(">") and len(t) == 6:
            types.append(6)
        else:
            types.append(1)
    scores = [float(-i) for i in range(len(tokens))]
    return tokens, scores, types


def build(variant):
    torch.manual_seed({"spm": 11, "bpe": 12}[variant])
    if variant == "spm":
        tokens, scores, types = spm_vocab()
        merges = None
        cfg = LlamaConfig(vocab_size=len(tokens), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=4, rms_norm_eps=1e-5, rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
                          max_position_embeddings=256, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
        qtypes = {"token_embd": Q.Q8_0, "output": Q.Q4_0, "attn_q": Q.Q4_0, "attn_k": Q.Q4_1, "attn_v": Q.F16,
                  "attn_output": Q.Q8_0, "ffn_gate": Q.Q4_1, "ffn_up": Q.Q4_0, "ffn_down": Q.Q8_0}
    else:
        tokens, merges, types = byte_level_vocab()
        scores = None
        cfg = LlamaConfig(vocab_size=len(tokens), hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6, rope_parameters={"rope_type": "default", "rope_theta": 100000.0},
                          max_position_embeddings=256, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2)
        qtypes = {"token_embd": Q.Q8_0, "attn_q": Q.Q4_1, "attn_k": Q.Q4_1, "attn_v": Q.Q4_1, "attn_output": Q.Q4_1,
                  "ffn_gate": Q.Q4_1, "ffn_up": Q.Q4_1, "ffn_down": Q.F32}
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.08)
        for layer in model.model.layers:
            layer.input_layernorm.weight.uniform_(0.5, 1.5)
            layer.post_attention_layernorm.weight.uniform_(0.5, 1.5)
        model.model.norm.weight.uniform_(0.5, 1.5)
    sd = {k: v.float().numpy() for k, v in model.state_dict().items()}

    path = OUT / f"{variant}.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name(f"tiny-{variant}")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("llama" if variant == "spm" else "gpt2")
    if variant == "bpe":
        w.add_tokenizer_pre("default")
        w.add_token_merges(merges)
    else:
        w.add_token_scores(scores)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(variant == "spm")
    if variant == "bpe":
        w.add_pad_token_id(2)
        w.add_chat_template("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}")

    def put(name, arr, qtype):
        arr = np.ascontiguousarray(arr.astype(np.float32))
        if qtype == Q.F32:
            w.add_tensor(name, arr)
        elif qtype == Q.F16:
            w.add_tensor(name, arr.astype(np.float16))
        else:
            w.add_tensor(name, gguf.quants.quantize(arr, qtype), raw_dtype=qtype)

    put("token_embd.weight", sd["model.embed_tokens.weight"], qtypes["token_embd"])
    put("output_norm.weight", sd["model.norm.weight"], Q.F32)
    if not cfg.tie_word_embeddings:
        put("output.weight", sd["lm_head.weight"], qtypes["output"])
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        put(f"blk.{i}.attn_norm.weight", sd[p + "input_layernorm.weight"], Q.F32)
        put(f"blk.{i}.ffn_norm.weight", sd[p + "post_attention_layernorm.weight"], Q.F32)
        put(f"blk.{i}.attn_q.weight", permute(sd[p + "self_attn.q_proj.weight"], cfg.num_attention_heads),
            qtypes["attn_q"])
        put(f"blk.{i}.attn_k.weight", permute(sd[p + "self_attn.k_proj.weight"], cfg.num_key_value_heads),
            qtypes["attn_k"])
        put(f"blk.{i}.attn_v.weight", sd[p + "self_attn.v_proj.weight"], qtypes["attn_v"])
        put(f"blk.{i}.attn_output.weight", sd[p + "self_attn.o_proj.weight"], qtypes["attn_output"])
        put(f"blk.{i}.ffn_gate.weight", sd[p + "mlp.gate_proj.weight"], qtypes["ffn_gate"])
        put(f"blk.{i}.ffn_up.weight", sd[p + "mlp.up_proj.weight"], qtypes["ffn_up"])
        put(f"blk.{i}.ffn_down.weight", sd[p + "mlp.down_proj.weight"], qtypes["ffn_down"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    # transformers' reading of the file is the reference.
    ref = AutoModelForCausalLM.from_pretrained(str(OUT), gguf_file=path.name, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(str(OUT), gguf_file=path.name)
    ids = [tok.encode(s) for s in STRINGS]
    g = torch.Generator().manual_seed(3)
    input_ids = torch.randint(3, len(tokens) - 3, (2, 9), generator=g)
    with torch.no_grad():
        logits = ref(input_ids=input_ids).logits
    orig = model(input_ids=input_ids).logits
    print(f"{variant}: {len(tokens)} tokens; quantisation moves logits by {(logits - orig).abs().max():.3e}")
    attn = ref.model.layers[0].self_attn
    q_err = (attn.q_proj.weight - model.model.layers[0].self_attn.q_proj.weight).abs().max()
    assert q_err < 0.05, f"un-permuted q_proj differs from the original by {q_err}"
    tensors = {
        f"{variant}.input_ids": input_ids.to(torch.int64),
        f"{variant}.logits": logits.contiguous(),
        f"{variant}.q_proj.0": attn.q_proj.weight.detach().contiguous(),
        f"{variant}.k_proj.0": attn.k_proj.weight.detach().contiguous(),
        f"{variant}.embed_tokens": ref.model.embed_tokens.weight.detach().contiguous(),
    }
    decoded = [tok.decode(i, skip_special_tokens=False) for i in ids]
    return tensors, {"strings": STRINGS, "ids": ids, "decoded": decoded}


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    tensors, tokens = {}, {}
    for variant in ("spm", "bpe"):
        t, k = build(variant)
        tensors.update(t)
        tokens[variant] = k
    save_file(tensors, str(OUT / "fixture.safetensors"))
    (OUT / "tokens.json").write_text(json.dumps(tokens, indent=1, ensure_ascii=False) + "\n")
    for f in sorted(OUT.iterdir()):
        print(f"{f.name}: {f.stat().st_size} bytes")


if __name__ == "__main__":
    main()
