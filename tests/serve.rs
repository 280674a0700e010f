//! `psa serve` over loopback with a real HTTP client: verdicts and chat completions equal the library's, per-request
//! policies apply where the server allows them, and malformed requests get 4xx JSON errors.
mod common;

use common::http::*;
use common::*;
use psa_vlm::pipeline::GuardRequest;
use psa_vlm::serve::ServeConfig;
use serde_json::json;

#[test]
fn endpoints_answer_like_the_library_and_reject_bad_requests() {
    let cfg = ServeConfig { max_body_bytes: 64 << 10, allow_client_policy: true, ..ServeConfig::default() };
    let server = start(tiny_pipeline("llava_hf"), cfg, true);
    let base = server.base.clone();
    let local = tiny_pipeline("llava_hf");
    let img = png_b64(2, 1);
    let request = GuardRequest {
        id: None,
        image: image::DynamicImage::ImageRgb8(draw(2, 1)),
        question: "What is this?".into(),
        policy: None,
    };

    let (status, health) = get(&format!("{base}/health"));
    assert_eq!((status, health["status"].as_str()), (200, Some("ready")));

    // Classify equals the library's verdict.
    let (status, verdict) =
        post_json(&format!("{base}/v1/classify"), &json!({"image": img, "question": "What is this?", "id": "x"}));
    assert_eq!(status, 200, "{verdict}");
    let want = &local.classify(std::slice::from_ref(&request)).unwrap()[0];
    assert_eq!(verdict["id"], "x");
    assert_eq!(verdict["assessment"]["level"], want.assessment.level);
    assert_eq!(verdict["assessment"]["risk_type"], want.assessment.risk_type);
    let probs: Vec<f64> = serde_json::from_value(verdict["assessment"]["type_probs"].clone()).unwrap();
    assert!(probs.iter().zip(&want.assessment.type_probs).all(|(a, b)| (a - *b as f64).abs() < 1e-6));
    assert_eq!(verdict["decision"]["action"], serde_json::to_value(want.decision.action).unwrap());

    // Chat completion equals the library's guarded answer.
    let (status, chat) = post_json(&format!("{base}/v1/chat/completions"), &chat_body(&img, "What is this?"));
    assert_eq!(status, 200, "{chat}");
    let want = &local.respond(std::slice::from_ref(&request), &local.generation_config(6), true).unwrap()[0];
    assert_eq!(chat["object"], "chat.completion");
    assert_eq!(chat["model"], "tiny");
    assert_eq!(chat["choices"][0]["message"]["content"], want.answer.as_str());
    assert_eq!(chat["usage"]["completion_tokens"], want.completion_tokens);
    assert_eq!(chat["psa"]["prompt"], json!(want.prompt));
    assert_eq!(chat["psa"]["decision"], serde_json::to_value(&want.decision).unwrap());

    // A per-request policy: refuse everything risky.
    let mut refuse = chat_body(&img, "What is this?");
    refuse["psa_policy"] = json!({"default_action": "refuse", "refusal": "No."});
    let (status, refused) = post_json(&format!("{base}/v1/chat/completions"), &refuse);
    assert_eq!(status, 200, "{refused}");
    assert_eq!(chat["psa"]["decision"]["action"], "hint", "the fixture image gets a risky verdict");
    assert_eq!(refused["choices"][0]["finish_reason"], "content_filter");
    assert_eq!(refused["choices"][0]["message"]["content"], "No.");
    assert_eq!(refused["usage"]["total_tokens"], 0);

    // Bad requests: each a 4xx JSON error naming the problem.
    let chat_url = format!("{base}/v1/chat/completions");
    let classify_url = format!("{base}/v1/classify");
    let garbage = b64(b"definitely not an image");
    let mut unknown = chat_body(&img, "Hi");
    unknown["colour"] = json!("red");
    let mut bad_policy = chat_body(&img, "Hi");
    bad_policy["psa_policy"] = json!({"disabled_types": ["porn"]});
    let mut too_many = chat_body(&img, "Hi");
    too_many["max_tokens"] = json!(100_000);
    let huge = "A".repeat(100 << 10);
    let cases: Vec<(String, String, &str, u16, &str)> = vec![
        (classify_url.clone(), json!({"image": garbage}).to_string(), "application/json", 400, "format not recognised"),
        (classify_url.clone(), json!({"image": "@@@"}).to_string(), "application/json", 400, "not valid base64"),
        (classify_url.clone(), json!({"image": "https://x.org/a.png"}).to_string(), "application/json", 400, "remote"),
        (classify_url.clone(), json!({"image": img, "extra": 1}).to_string(), "application/json", 422, "extra"),
        (classify_url.clone(), "{not json".into(), "application/json", 400, ""),
        (classify_url.clone(), json!({"image": img}).to_string(), "text/plain", 415, "Content-Type"),
        (classify_url.clone(), json!({"image": huge}).to_string(), "application/json", 413, "the limit is 65536"),
        (chat_url.clone(), unknown.to_string(), "application/json", 422, "colour"),
        (chat_url.clone(), bad_policy.to_string(), "application/json", 400, "porn"),
        (chat_url.clone(), too_many.to_string(), "application/json", 400, "max_tokens"),
        (
            chat_url.clone(),
            json!({"messages": [{"role": "user", "content": "no image"}]}).to_string(),
            "application/json",
            400,
            "image_url",
        ),
    ];
    for (url, body, content_type, want_status, needle) in cases {
        let (status, err) = post(&url, content_type, &body);
        let message = err["error"]["message"].as_str().unwrap_or_default();
        eprintln!("{status} {}: {message}", err["error"]["code"]);
        assert_eq!(status, want_status, "{url} {}: {err}", &body[..body.len().min(80)]);
        assert!(message.contains(needle), "{message:?} should mention {needle:?}");
        assert_eq!(err["error"]["type"], "invalid_request_error");
    }
}
