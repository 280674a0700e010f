//! PSA-VLM progressive two-stage training (data, schedules, checkpoints); see issue #4.
