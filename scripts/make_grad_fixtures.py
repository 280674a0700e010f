#!/usr/bin/env python3
"""Reference gradients of the LLM's next-token loss with respect to its input embeddings, for the host training
engine (`HostLmLoss`): what stage I needs from a frozen LLM.

Run once, offline, from the repository root, after scripts/make_fixtures.py (it reads that script's committed
tiny models), and commit the outputs:

    ~/.cache/psa-py/bin/python scripts/make_grad_fixtures.py

Pinned versions (asserted at run time): torch 2.15.0, transformers 5.23.0, safetensors 0.8.0.

For each of tiny_llava (multi-head attention, separate lm_head) and tiny_llava_gqa (2 key/value heads), one batch
of 3 rows × 70 positions (more than one 64-query block): row 0 unpadded, row 1 left-padded by 9, row 2
right-padded by 6; positions 3..19 of every row stand for projected image tokens (random vectors, label -100),
the others are the embeddings of token ids and are their own labels (padding and each row's first real
position labelled -100). Explicit
position_ids = clamp(cumsum(mask) - 1, 0), eager attention, f32 on one CPU thread, deterministic algorithms.

Outputs: fixtures/<variant>/lm_grad.safetensors with
    inputs_embeds [3, 70, 64], attention_mask [3, 70] (int64), labels [3, 70] (int64),
    loss [1] (mean cross-entropy over supervised shifted positions), grad [3, 70, 64] (d loss / d inputs_embeds).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.dont_write_bytecode = True  # no scripts/__pycache__ from importing make_fixtures
import make_fixtures as mf  # noqa: E402  (checks the pinned torch / transformers / safetensors on import)

import torch  # noqa: E402
import transformers  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import LlavaForConditionalGeneration  # noqa: E402

ROOT, FIX = mf.ROOT, mf.FIX
B, T = 3, 70
IMAGE_SPAN = range(3, 19)
LEFT_PAD, RIGHT_PAD = 9, 6


def batch(vocab, hidden, embed, gen):
    ids = torch.randint(3, vocab - 3, (B, T), generator=gen)
    mask = torch.ones(B, T, dtype=torch.int64)
    mask[1, :LEFT_PAD] = 0
    mask[2, T - RIGHT_PAD:] = 0
    with torch.no_grad():
        embeds = embed(ids).clone()
        image = 0.05 * torch.randn(B, len(IMAGE_SPAN), hidden, generator=gen)
        for r in range(B):
            start = IMAGE_SPAN.start + (LEFT_PAD if r == 1 else 0)
            embeds[r, start:start + len(IMAGE_SPAN)] = image[r]
    labels = ids.clone()
    labels[mask == 0] = -100
    # The first real token is never a target (it is BOS in real data): left padding would otherwise make a padding
    # position, whose attention sees nothing, predict it.
    labels[:, 0] = -100
    labels[1, LEFT_PAD] = -100
    for r in range(B):
        start = IMAGE_SPAN.start + (LEFT_PAD if r == 1 else 0)
        labels[r, start:start + len(IMAGE_SPAN)] = -100
    return embeds, mask, labels


def main():
    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    for variant, weights in (("tiny_llava", "hub_f32"), ("tiny_llava_gqa", "hub_f16_sharded")):
        path = os.path.join(FIX, variant, weights)
        model = LlavaForConditionalGeneration.from_pretrained(
            path, attn_implementation="eager", dtype=torch.float32).eval()
        cfg = model.config.text_config
        gen = torch.Generator().manual_seed(1234)
        embeds, mask, labels = batch(cfg.vocab_size, cfg.hidden_size, model.get_input_embeddings(), gen)
        embeds.requires_grad_(True)
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        out = model(inputs_embeds=embeds, attention_mask=mask, position_ids=position_ids, labels=labels)
        out.loss.backward()
        # The same loss by hand: mean next-token cross-entropy over supervised positions.
        logits = out.logits[:, :-1].reshape(-1, cfg.vocab_size)
        target = labels[:, 1:].reshape(-1)
        by_hand = torch.nn.functional.cross_entropy(logits, target, ignore_index=-100)
        assert abs(by_hand.item() - out.loss.item()) < 1e-6, (by_hand.item(), out.loss.item())
        values = {
            "inputs_embeds": embeds.detach().contiguous(),
            "attention_mask": mask.contiguous(),
            "labels": labels.contiguous(),
            "loss": out.loss.detach().reshape(1),
            "grad": embeds.grad.contiguous(),
        }
        save_file(dict(sorted(values.items())), os.path.join(FIX, variant, "lm_grad.safetensors"),
                  metadata={"torch": torch.__version__, "transformers": transformers.__version__})
        print(f"{variant}: loss {out.loss.item():.6f}, |grad| max {embeds.grad.abs().max().item():.3e}, "
              f"supervised {(target != -100).sum().item()}")


if __name__ == "__main__":
    main()
