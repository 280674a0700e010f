//! Normalising checkpoint key spellings to the names our modules use.
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
    /// PSA-VLM with a CLIP tower: LLaVA keys (any layout) under `llava.`, reference safety keys under `safety.`.
    PsaClip,
    /// PSA-VLM with a DINOv2 tower.
    PsaDinov2,
    /// A PEFT LoRA adapter of a LLaVA's language model (`base_model.model.language_model.model.layers.…`),
    /// loaded into the `LlamaForCausalLM`.
    PeftLlava,
    /// A PEFT LoRA adapter of a standalone LLaMA (`base_model.model.model.layers.…`).
    PeftLlama,
}

/// `…q_proj.lora_A.weight` → `…q_proj.lora.lora_a.weight` (and `lora_B` → `lora_b`).
fn peft_to_path(key: &str) -> Option<String> {
    for (peft, ours) in [(".lora_A.", ".lora.lora_a."), (".lora_B.", ".lora.lora_b.")] {
        if let Some(i) = key.find(peft) {
            return Some(format!("{}{ours}{}", &key[..i], &key[i + peft.len()..]));
        }
    }
    None
}

fn path_to_peft(path: &str) -> String {
    for (ours, peft) in [(".lora.lora_a.", ".lora_A."), (".lora.lora_b.", ".lora_B.")] {
        if let Some(i) = path.find(ours) {
            return format!("{}{peft}{}", &path[..i], &path[i + ours.len()..]);
        }
    }
    path.to_string()
}

fn peft_prefix(layout: Layout) -> &'static str {
    if layout == Layout::PeftLlava { "base_model.model.language_model." } else { "base_model.model." }
}

const SAFETY_PREFIXES: [&str; 4] =
    ["safety_query_tokens.", "safety_query_tokens_2.", "safe_mm_projector.", "safe_part."];

/// Whether a checkpoint key belongs to the PSA safety modules (reference naming).
pub fn is_safety_key(key: &str) -> bool {
    key == "safety_query_tokens" || key == "safety_query_tokens_2" || SAFETY_PREFIXES.iter().any(|p| key.starts_with(p))
}

/// Maps a reference safety key to our module path inside `SafetyModules`.
///
/// `safe_part.safety_head` → `safe_part.level_head`, `safe_part.other_head` → `safe_part.type_head`,
/// `proj.net.0.bK` / `proj.net.2.bK` → `proj.s1.blocks.{K−1}` / `proj.s2.blocks.{K−1}`,
/// `proj.readout.{2j}` → `proj.readout.{j}`.
pub fn safety_key_to_path(key: &str) -> Option<String> {
    if let Some(rest) = key.strip_prefix("safe_part.safety_head.") {
        return Some(format!("safe_part.level_head.{rest}"));
    }
    if let Some(rest) = key.strip_prefix("safe_part.other_head.") {
        return Some(format!("safe_part.type_head.{rest}"));
    }
    if let Some(rest) = key.strip_prefix("safe_mm_projector.proj.") {
        let mut parts = rest.splitn(3, '.');
        let (a, b, tail) = (parts.next()?, parts.next()?, parts.next().unwrap_or(""));
        let mapped = match (a, b) {
            ("net", stage @ ("0" | "2")) => {
                let mut p = tail.splitn(2, '.');
                let block: usize = p.next()?.strip_prefix('b')?.parse().ok()?;
                let stage = if stage == "0" { "s1" } else { "s2" };
                format!("{stage}.blocks.{}.{}", block.checked_sub(1)?, p.next()?)
            }
            ("readout", i) => {
                let i: usize = i.parse().ok()?;
                if !i.is_multiple_of(2) {
                    return None;
                }
                format!("readout.{}.{tail}", i / 2)
            }
            _ => return None,
        };
        return Some(format!("safe_mm_projector.proj.{mapped}"));
    }
    Some(key.to_string())
}

/// The inverse of [`safety_key_to_path`].
pub fn safety_path_to_key(path: &str) -> String {
    if let Some(rest) = path.strip_prefix("safe_part.level_head.") {
        return format!("safe_part.safety_head.{rest}");
    }
    if let Some(rest) = path.strip_prefix("safe_part.type_head.") {
        return format!("safe_part.other_head.{rest}");
    }
    if let Some(rest) = path.strip_prefix("safe_mm_projector.proj.") {
        let parts: Vec<&str> = rest.splitn(4, '.').collect();
        let idx = |s: &str| s.parse::<usize>().ok();
        match parts.as_slice() {
            [stage @ ("s1" | "s2"), "blocks", i, tail] if idx(i).is_some() => {
                let net = if *stage == "s1" { 0 } else { 2 };
                return format!("safe_mm_projector.proj.net.{net}.b{}.{tail}", idx(i).unwrap_or(0) + 1);
            }
            ["readout", i, tail @ ..] if idx(i).is_some() => {
                return format!("safe_mm_projector.proj.readout.{}.{}", idx(i).unwrap_or(0) * 2, tail.join("."));
            }
            _ => {}
        }
    }
    path.to_string()
}

/// Maps a module path back to the key a checkpoint of this layout uses (for messages and export).
pub fn denormalize(layout: Layout, path: &str) -> String {
    match layout {
        Layout::PsaClip | Layout::PsaDinov2 => {
            if let Some(rest) = path.strip_prefix("safety.") {
                safety_path_to_key(rest)
            } else {
                path.strip_prefix("llava.").unwrap_or(path).to_string()
            }
        }
        Layout::PeftLlava | Layout::PeftLlama => format!("{}{}", peft_prefix(layout), path_to_peft(path)),
        _ => path.to_string(),
    }
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
                || ["logit_scale", "visual_projection.", "text_projection."].iter().any(|p| k.starts_with(p))
            {
                return None;
            }
            if k.starts_with("vision_model.") { Some(k.to_string()) } else { Some(format!("vision_model.{k}")) }
        }
        Layout::Dinov2 => Some(key.strip_prefix("dinov2.").unwrap_or(key).to_string()),
        Layout::Llama => Some(key.to_string()),
        Layout::PeftLlava | Layout::PeftLlama => {
            // Keys outside the decoder layers (e.g. an `lm_head` adapter) map to no path and surface as unexpected.
            let rest = key.strip_prefix(peft_prefix(layout)).unwrap_or(key);
            Some(peft_to_path(rest).unwrap_or_else(|| key.to_string()))
        }
        Layout::PsaClip | Layout::PsaDinov2 => {
            if is_safety_key(key) {
                return safety_key_to_path(key).map(|p| format!("safety.{p}"));
            }
            let inner = if layout == Layout::PsaClip { Layout::LlavaClip } else { Layout::LlavaDinov2 };
            normalize(inner, key).map(|k| format!("llava.{k}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_safety_keys_round_trip() {
        let cases = [
            ("safety_query_tokens", "safety.safety_query_tokens"),
            ("safety_query_tokens_2", "safety.safety_query_tokens_2"),
            (
                "safe_mm_projector.proj.net.0.b1.conv1.bn.weight",
                "safety.safe_mm_projector.proj.s1.blocks.0.conv1.bn.weight",
            ),
            ("safe_mm_projector.proj.net.2.b3.se.fc2.bias", "safety.safe_mm_projector.proj.s2.blocks.2.se.fc2.bias"),
            ("safe_mm_projector.proj.readout.2.weight", "safety.safe_mm_projector.proj.readout.1.weight"),
            ("safe_part.safety_head.bias", "safety.safe_part.level_head.bias"),
            ("safe_part.other_head.weight", "safety.safe_part.type_head.weight"),
            ("safe_part.cross_attention.in_proj_weight", "safety.safe_part.cross_attention.in_proj_weight"),
            ("language_model.lm_head.weight", "llava.language_model.lm_head.weight"),
        ];
        for (key, path) in cases {
            assert_eq!(normalize(Layout::PsaClip, key).as_deref(), Some(path), "{key}");
            assert_eq!(denormalize(Layout::PsaClip, path), key, "{path}");
        }
        assert_eq!(normalize(Layout::PsaClip, "safe_mm_projector.proj.readout.1.weight"), None);
        let peft = "base_model.model.language_model.model.layers.0.self_attn.q_proj.lora_A.weight";
        let path = "model.layers.0.self_attn.q_proj.lora.lora_a.weight";
        assert_eq!(normalize(Layout::PeftLlava, peft).as_deref(), Some(path));
        assert_eq!(denormalize(Layout::PeftLlava, path), peft);
    }

    #[test]
    fn every_llava_spelling_reaches_the_hub_layout() {
        let cases = [
            ("language_model.model.layers.0.mlp.up_proj.weight", "language_model.model.layers.0.mlp.up_proj.weight"),
            ("model.language_model.layers.0.mlp.up_proj.weight", "language_model.model.layers.0.mlp.up_proj.weight"),
            ("lm_head.weight", "language_model.lm_head.weight"),
            ("language_model.lm_head.weight", "language_model.lm_head.weight"),
            ("model.multi_modal_projector.linear_1.bias", "multi_modal_projector.linear_1.bias"),
            ("vision_tower.pre_layrnorm.weight", "vision_tower.vision_model.pre_layrnorm.weight"),
            ("model.vision_tower.vision_model.pre_layrnorm.weight", "vision_tower.vision_model.pre_layrnorm.weight"),
        ];
        for (from, to) in cases {
            assert_eq!(normalize(Layout::LlavaClip, from).as_deref(), Some(to), "{from}");
        }
        assert_eq!(normalize(Layout::LlavaClip, "vision_tower.vision_model.embeddings.position_ids"), None);
        assert_eq!(
            normalize(Layout::LlavaDinov2, "vision_tower.embeddings.cls_token").as_deref(),
            Some("vision_tower.embeddings.cls_token")
        );
    }
}
