//! `psa serve` over loopback with a real HTTP client: verdicts and chat completions equal the library's, per-request
//! policies apply, and malformed requests get 4xx JSON errors.
mod common;

use base64::Engine;
use common::*;
use psa_vlm::models::GuardRequest;
use psa_vlm::serve::{ServeConfig, router, serve};
use serde_json::{Value, json};

/// Starts a server on an ephemeral loopback port and returns its base URL.
fn start(cfg: ServeConfig) -> String {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            serve(listener, router(tiny_pipeline("llava_hf"), cfg)).await.unwrap();
        });
    });
    format!("http://{}", rx.recv().unwrap())
}

fn png_b64(class: usize, seed: u64) -> String {
    let mut bytes = Vec::new();
    draw(class, seed).write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png).unwrap();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// POSTs a raw body; returns status and parsed JSON (errors included).
fn post(url: &str, content_type: &str, body: &str) -> (u16, Value) {
    let result = ureq::post(url).set("Content-Type", content_type).send_string(body);
    let response = match result {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{url}: {e}"),
    };
    let status = response.status();
    let text = response.into_string().unwrap();
    (status, serde_json::from_str(&text).unwrap_or_else(|e| panic!("{status} non-JSON body {text:?}: {e}")))
}

fn post_json(url: &str, body: &Value) -> (u16, Value) {
    post(url, "application/json", &body.to_string())
}

fn chat_body(image: &str, question: &str) -> Value {
    json!({
        "model": "tiny",
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": question},
            {"type": "image_url", "image_url": {"url": format!("data:image/png;base64,{image}")}}
        ]}],
        "max_tokens": 6
    })
}

#[test]
fn endpoints_answer_like_the_library_and_reject_bad_requests() {
    let base = start(ServeConfig { max_body_bytes: 64 << 10, ..ServeConfig::default() });
    let local = tiny_pipeline("llava_hf");
    let img = png_b64(2, 1);
    let request = GuardRequest {
        id: None,
        image: image::DynamicImage::ImageRgb8(draw(2, 1)),
        question: "What is this?".into(),
        policy: None,
    };

    assert_eq!(ureq::get(&format!("{base}/health")).call().unwrap().status(), 200);

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
    let garbage = base64::engine::general_purpose::STANDARD.encode(b"definitely not an image");
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
