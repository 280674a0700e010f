//! PSA-VLM safety concept bottleneck (taxonomy, safety projector, tokens, head, loss, policy); see issue #3.
