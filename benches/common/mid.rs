// The mid-size LLaVA configuration shared by the benches and `scripts/bench_reference.py` (included with `#[path]`).
use psa_vlm::models::LlavaConfig;

/// CLIP 384×6 at 224 px + LLaMA 768×8 (vocabulary 32064), with `<image>` at `image_token_index`.
pub fn mid_config(image_token_index: u32) -> LlavaConfig {
    let config = serde_json::json!({
        "vision_config": {"model_type": "clip_vision_model", "hidden_size": 384, "intermediate_size": 1536,
            "num_hidden_layers": 6, "num_attention_heads": 6, "image_size": 224, "patch_size": 14},
        "text_config": {"model_type": "llama", "vocab_size": 32064, "hidden_size": 768, "intermediate_size": 2048,
            "num_hidden_layers": 8, "num_attention_heads": 12, "num_key_value_heads": 4, "rms_norm_eps": 1e-5,
            "max_position_embeddings": 2048},
        "image_token_index": image_token_index
    });
    LlavaConfig::from_value(&config, "bench".as_ref()).expect("valid bench config")
}
