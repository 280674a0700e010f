//! Normalising checkpoint key spellings to the names our modules use (assets.md §6).
//!
//! `None` means the tensor is a known buffer or an unused part of a larger checkpoint and is skipped silently.

/// Which architecture a set of keys is normalised for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// LLaVA with a CLIP tower: hub layout (`language_model.model.*`, `vision_tower.vision_model.*`).
    LlavaClip,
    /// LLaVA with a DINOv2 tower (`vision_tower.embeddings.*`).
    LlavaDinov2,
    /// Standalone `CLIPVisionModel` (`vision_model.*`).
    ClipVision,
    /// Standalone `Dinov2Model`.
    Dinov2,
    /// Standalone `LlamaForCausalLM`.
    Llama,
}

fn is_buffer(key: &str) -> bool {
    key.ends_with(".position_ids") || key.ends_with("rotary_emb.inv_freq")
}

/// Maps one checkpoint key to a module path, or `None` to skip it.
pub fn normalize(layout: Layout, key: &str) -> Option<String> {
    if is_buffer(key) {
        return None;
    }
    match layout {
        Layout::LlavaClip | Layout::LlavaDinov2 => {
            let k = key.strip_prefix("model.").unwrap_or(key);
            if let Some(rest) = k.strip_prefix("lm_head.") {
                return Some(format!("language_model.lm_head.{rest}"));
            }
            if let Some(rest) = k.strip_prefix("language_model.") {
                if rest.starts_with("model.") || rest.starts_with("lm_head.") {
                    return Some(k.to_string());
                }
                return Some(format!("language_model.model.{rest}"));
            }
            if let Some(rest) = k.strip_prefix("vision_tower.") {
                if layout == Layout::LlavaClip && !rest.starts_with("vision_model.") {
                    return Some(format!("vision_tower.vision_model.{rest}"));
                }
                return Some(k.to_string());
            }
            Some(k.to_string())
        }
        Layout::ClipVision => {
            let k = key.strip_prefix("vision_tower.").unwrap_or(key);
            if k.starts_with("text_model.")
                || ["logit_scale", "visual_projection.", "text_projection."]
                    .iter()
                    .any(|p| k.starts_with(p))
            {
                return None;
            }
            if k.starts_with("vision_model.") {
                Some(k.to_string())
            } else {
                Some(format!("vision_model.{k}"))
            }
        }
        Layout::Dinov2 => Some(key.strip_prefix("dinov2.").unwrap_or(key).to_string()),
        Layout::Llama => Some(key.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_llava_spelling_reaches_the_hub_layout() {
        let cases = [
            (
                "language_model.model.layers.0.mlp.up_proj.weight",
                "language_model.model.layers.0.mlp.up_proj.weight",
            ),
            (
                "model.language_model.layers.0.mlp.up_proj.weight",
                "language_model.model.layers.0.mlp.up_proj.weight",
            ),
            ("lm_head.weight", "language_model.lm_head.weight"),
            (
                "language_model.lm_head.weight",
                "language_model.lm_head.weight",
            ),
            (
                "model.multi_modal_projector.linear_1.bias",
                "multi_modal_projector.linear_1.bias",
            ),
            (
                "vision_tower.pre_layrnorm.weight",
                "vision_tower.vision_model.pre_layrnorm.weight",
            ),
            (
                "model.vision_tower.vision_model.pre_layrnorm.weight",
                "vision_tower.vision_model.pre_layrnorm.weight",
            ),
        ];
        for (from, to) in cases {
            assert_eq!(
                normalize(Layout::LlavaClip, from).as_deref(),
                Some(to),
                "{from}"
            );
        }
        assert_eq!(
            normalize(
                Layout::LlavaClip,
                "vision_tower.vision_model.embeddings.position_ids"
            ),
            None
        );
        assert_eq!(
            normalize(Layout::LlavaDinov2, "vision_tower.embeddings.cls_token").as_deref(),
            Some("vision_tower.embeddings.cls_token")
        );
    }
}
