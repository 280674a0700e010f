"""PyTorch/transformers reference timings for `benches/forward.rs` (same mid-size random LLaVA configuration).

Needs the fixture environment (torch==2.15.0, transformers==5.23.0; see fixtures/README.md); not run in CI.
    ~/.cache/psa-py/bin/python scripts/bench_reference.py
Prints median wall time over 10 runs after 2 warm-up runs, on 2 threads, f32, eager CPU.
"""
import statistics
import time

import torch
import transformers
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

assert torch.__version__.startswith("2.15.0"), torch.__version__
assert transformers.__version__ == "5.23.0", transformers.__version__

torch.manual_seed(0)
torch.set_num_threads(2)

config = LlavaConfig(
    vision_config=CLIPVisionConfig(hidden_size=384, intermediate_size=1536, num_hidden_layers=6,
                                   num_attention_heads=6, image_size=224, patch_size=14),
    text_config=LlamaConfig(vocab_size=32064, hidden_size=768, intermediate_size=2048, num_hidden_layers=8,
                            num_attention_heads=12, num_key_value_heads=4, rms_norm_eps=1e-5,
                            max_position_embeddings=2048),
    image_token_index=32000,
)
model = LlavaForConditionalGeneration(config).eval()
pixels = torch.randn(1, 3, 224, 224)
ids = torch.tensor([[1] + list(range(100, 120)) + [32000] * 256 + list(range(200, 210))])


def timeit(fn, runs=10, warmup=2):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


with torch.inference_mode():
    vision = timeit(lambda: model.model.get_image_features(pixel_values=pixels, vision_feature_layer=-2,
                                                           vision_feature_select_strategy="default"))
    feats = model.model.get_image_features(pixel_values=pixels, vision_feature_layer=-2,
                                           vision_feature_select_strategy="default")
    feats = feats if torch.is_tensor(feats) else torch.cat(list(feats.pooler_output if hasattr(feats, "pooler_output") else feats), 0)
    embeds = model.model.get_input_embeddings()(ids.clamp(max=31999))
    embeds[ids == 32000] = feats.reshape(-1, 768)

    def prefill():
        h = model.model.language_model(inputs_embeds=embeds).last_hidden_state
        return model.lm_head(h[:, -1:])

    pre = timeit(prefill)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, threads {torch.get_num_threads()}, "
          f"attention {model.config._attn_implementation}")
    print(f"vision+projector/clip-384x6-224px: {vision:.1f} ms")
    print(f"prefill/llama-768x8-{ids.shape[1]}tok: {pre:.1f} ms")
