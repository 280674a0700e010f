//! `psa serve` as a hostile but fair client sees it: the operator's policy cannot be overridden unless allowed, a
//! key guards the API, every input is bounded, slow or idle connections are closed, a full server answers 503,
//! concurrent requests share model passes and equal single runs, and shutdown completes in bounded time.
mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::http::*;
use common::*;
use psa_vlm::pipeline::GuardRequest;
use psa_vlm::serve::{ApiKey, Batching, ServeConfig};
use serde_json::json;

fn classify_url(base: &str) -> String {
    format!("{base}/v1/classify")
}

fn encoded(img: image::DynamicImage, format: image::ImageFormat) -> Vec<u8> {
    let mut bytes = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut bytes), format).unwrap();
    bytes
}

#[test]
fn client_overrides_are_refused_unless_the_operator_allows_them() {
    let server = start(tiny_pipeline("llava_hf"), ServeConfig::default(), true);
    let (classify, chat) = (classify_url(&server.base), format!("{}/v1/chat/completions", server.base));
    let img = png_b64(2, 1);
    let mut with_policy = chat_body(&img, "Hi");
    with_policy["psa_policy"] = json!({"disabled_types": ["privacy"]});
    let mut guard_off = chat_body(&img, "Hi");
    guard_off["psa_guard"] = json!(false);
    let cases = [
        (classify.clone(), json!({"image": img, "policy": {"default_action": "allow"}}), "`policy`"),
        (chat.clone(), with_policy, "`psa_policy`"),
        (chat.clone(), guard_off, "`psa_guard: false`"),
    ];
    for (url, body, what) in cases {
        let (status, err) = post_json(&url, &body);
        assert_eq!(status, 403, "{err}");
        assert_eq!(err["error"]["code"], "client_policy_disabled");
        let message = err["error"]["message"].as_str().unwrap();
        assert!(message.contains(what) && message.contains("--allow-client-policy"), "{message}");
    }
    let mut guard_on = chat_body(&img, "Hi");
    guard_on["psa_guard"] = json!(true);
    assert_eq!(post_json(&chat, &guard_on).0, 200);
}

#[test]
fn a_bearer_key_guards_the_api_but_not_health() {
    let cfg = ServeConfig { api_key: Some(ApiKey::new("s3cret\n").unwrap()), ..ServeConfig::default() };
    let server = start(tiny_pipeline("llava_hf"), cfg, true);
    let url = classify_url(&server.base);
    let body = json!({"image": png_b64(0, 1)}).to_string();
    for headers in [vec![], vec![("Authorization", "Bearer wrong")], vec![("Authorization", "s3cret")]] {
        let (status, err) = post_with(&url, "application/json", &headers, &body);
        assert_eq!((status, err["error"]["code"].as_str()), (401, Some("invalid_api_key")), "{headers:?}");
    }
    let (status, verdict) = post_with(&url, "application/json", &[("Authorization", "Bearer s3cret")], &body);
    assert_eq!(status, 200, "{verdict}");
    assert!(ApiKey::new("  ").is_err());
    assert_eq!(format!("{:?}", ApiKey::new("s3cret").unwrap()), "ApiKey(<redacted>)");
}

#[test]
fn images_and_questions_beyond_the_limits_are_refused_before_the_model() {
    let server = start(tiny_pipeline("llava_hf"), ServeConfig::default(), true);
    let url = classify_url(&server.base);
    let strip = encoded(image::DynamicImage::new_rgb8(4096, 1), image::ImageFormat::Png);
    let photo = encoded(image::DynamicImage::ImageRgb8(draw(1, 3)), image::ImageFormat::Jpeg);
    let mut huge_claim = photo.clone();
    let sof = huge_claim.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
    // 3000 × 3000: within the server's pixel limits, far beyond what the scan data can hold.
    huge_claim[sof + 5..sof + 9].copy_from_slice(&[0x0B, 0xB8, 0x0B, 0xB8]);
    let giant = encoded(image::DynamicImage::new_rgb8(4097, 8), image::ImageFormat::Png);
    let cases = [
        (json!({"image": b64(&strip)}), "resizes to"),
        (json!({"image": b64(&giant)}), "declares 4097×8"),
        (json!({"image": b64(&photo[..photo.len() - 40])}), "truncated"),
        (json!({"image": b64(&huge_claim)}), "blocks its frame declares"),
        (json!({"image": png_b64(0, 1), "question": "x".repeat(20 << 10)}), "limit is 16384"),
        (json!({"image": png_b64(0, 1), "question": "a ".repeat(2000)}), "tokens"),
    ];
    for (body, needle) in cases {
        let start = Instant::now();
        let (status, err) = post_json(&url, &body);
        let message = err["error"]["message"].as_str().unwrap_or_default();
        assert_eq!(status, 400, "{message}");
        assert!(message.contains(needle), "{message:?} should mention {needle:?}");
        assert!(start.elapsed() < Duration::from_secs(2), "refusing took {:?}", start.elapsed());
    }
    assert_eq!(post_json(&url, &json!({"image": b64(&photo)})).0, 200, "the whole JPEG is fine");
}

/// Reads until the server closes the connection (or `limit` passes); returns what arrived and when it closed.
fn read_until_closed(mut stream: TcpStream, limit: Duration) -> (String, Option<Duration>) {
    let start = Instant::now();
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return (String::from_utf8_lossy(&got).into(), Some(start.elapsed())),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return (String::from_utf8_lossy(&got).into(), Some(start.elapsed()));
            }
            Err(_) => return (String::from_utf8_lossy(&got).into(), None),
        }
    }
}

#[test]
fn idle_half_sent_and_slow_connections_are_closed_and_shutdown_is_bounded() {
    let cfg = ServeConfig {
        header_timeout: Duration::from_millis(500),
        body_timeout: Duration::from_millis(500),
        shutdown_grace: Duration::from_secs(1),
        ..ServeConfig::default()
    };
    let server = start(tiny_pipeline("llava_hf"), cfg, true);
    let addr = server.base.trim_start_matches("http://").to_string();
    let connect = || TcpStream::connect(&addr).unwrap();

    let (_, closed) = read_until_closed(connect(), Duration::from_secs(5));
    assert!(closed.is_some_and(|t| t < Duration::from_secs(3)), "idle connection closed after {closed:?}");

    let mut half = connect();
    half.write_all(b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: appl").unwrap();
    let (_, closed) = read_until_closed(half, Duration::from_secs(5));
    assert!(closed.is_some_and(|t| t < Duration::from_secs(3)), "half-sent headers closed after {closed:?}");

    let mut slow = connect();
    slow.write_all(
        b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"im",
    )
    .unwrap();
    let (reply, _) = read_until_closed(slow, Duration::from_secs(5));
    assert!(reply.starts_with("HTTP/1.1 408"), "slow body got {reply:?}");
    assert!(reply.contains("body_timeout"), "{reply}");

    // Shutdown with a stalled connection open returns within the grace period.
    let mut stalled = connect();
    stalled.write_all(b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n").unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let took = server.shut_down();
    assert!(took < Duration::from_secs(3), "shutdown took {took:?}");
}

#[test]
fn a_full_server_answers_503_and_every_request_gets_an_answer() {
    let cfg = ServeConfig {
        max_pending: 2,
        batching: Batching { max_batch: 8, window: Duration::from_millis(300) },
        ..ServeConfig::default()
    };
    let server = start(tiny_pipeline("llava_hf"), cfg, true);
    let url = classify_url(&server.base);
    let body = json!({"image": png_b64(1, 2)});
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..16).map(|_| s.spawn(|| post_json(&url, &body))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).map(|(status, _)| status).collect()
    });
    let (ok, busy) = (statuses.iter().filter(|&&s| s == 200).count(), statuses.iter().filter(|&&s| s == 503).count());
    eprintln!("16 concurrent requests, 2 pending at most: {ok} answered, {busy} refused with 503");
    assert_eq!(ok + busy, 16, "{statuses:?}");
    assert!(ok >= 2 && busy >= 1, "{statuses:?}");
}

#[test]
fn concurrent_requests_share_a_model_pass_and_equal_single_runs() {
    let cfg = ServeConfig {
        batching: Batching { max_batch: 8, window: Duration::from_millis(300) },
        ..ServeConfig::default()
    };
    let server = start(tiny_pipeline("llava_hf"), cfg, true);
    let url = classify_url(&server.base);
    let local = tiny_pipeline("llava_hf");
    let verdicts: Vec<serde_json::Value> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..5)
            .map(|i| {
                let url = url.clone();
                s.spawn(move || post_json(&url, &json!({"image": png_b64(i, 7), "id": i.to_string()})))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .map(|(status, v)| (assert_eq!(status, 200, "{v}"), v).1)
            .collect()
    });
    let mut largest = 0;
    for v in &verdicts {
        let i: usize = v["id"].as_str().unwrap().parse().unwrap();
        let image = image::DynamicImage::ImageRgb8(draw(i, 7));
        let request = GuardRequest { id: None, image, question: "Describe the image.".into(), policy: None };
        let want = &local.classify(&[request]).unwrap()[0];
        let probs: Vec<f64> = serde_json::from_value(v["assessment"]["level_probs"].clone()).unwrap();
        let diff = max_abs_diff("batched level probabilities", &probs, &want.assessment.level_probs);
        assert!(diff < 1e-5, "request {i}: batched probabilities differ by {diff}");
        assert_eq!(v["decision"]["action"], serde_json::to_value(want.decision.action).unwrap());
        largest = largest.max(v["timings"]["batch_size"].as_u64().unwrap());
    }
    assert!(largest > 1, "no two of five concurrent requests shared a pass");
}

#[test]
fn health_reports_ready_only_after_a_successful_warm_up() {
    let mut broken = tiny_pipeline("llava_hf");
    // A preprocessor that does not fit the vision tower: the warm-up inference fails.
    broken.images = psa_vlm::pipeline::processor::ImageProcessorConfig::clip(112).build().unwrap();
    let server = start(broken, ServeConfig::default(), false);
    let until = Instant::now() + Duration::from_secs(60);
    let health = loop {
        let (status, health) = get(&format!("{}/health", server.base));
        assert_eq!(status, 503, "{health}");
        if health["status"] != "warming_up" {
            break health;
        }
        assert!(Instant::now() < until, "warm-up never finished");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(health["status"], "failed", "{health}");
    let (status, err) = post_json(&classify_url(&server.base), &json!({"image": png_b64(0, 1)}));
    assert_eq!((status, err["error"]["code"].as_str()), (503, Some("unavailable")), "{err}");
    let text = err.to_string();
    assert!(!text.contains("panicked") && !text.contains(".rs:"), "{text}");
}

/// Starts `psa serve` on `addr` and returns its first stderr lines up to "listening" (and the warning before it).
fn serve_banner(addr: &str, extra: &[&str]) -> String {
    use std::io::BufRead;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_psa"))
        .args(["serve", "--model-dir"])
        .arg(fixtures().join("tiny_psa/model"))
        .arg("--tokenizer")
        .arg(fixtures().join("tiny_tokenizer/tokenizer.json"))
        .args(["--template", "llava_hf", "--addr", addr])
        .args(extra)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut banner = String::new();
    for line in std::io::BufReader::new(child.stderr.take().unwrap()).lines() {
        let line = line.unwrap();
        banner.push_str(&line);
        banner.push('\n');
        if line.contains("listening") {
            break;
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    banner
}

#[test]
fn binding_beyond_loopback_without_a_key_warns() {
    let open = serve_banner("0.0.0.0:0", &[]);
    assert!(open.contains("warning") && open.contains("without an API key"), "{open}");
    let key = scratch("serve-key").join("key");
    std::fs::write(&key, "s3cret\n").unwrap();
    let keyed = serve_banner("0.0.0.0:0", &["--api-key-file", key.to_str().unwrap()]);
    assert!(!keyed.contains("warning"), "{keyed}");
    let local = serve_banner("127.0.0.1:0", &[]);
    assert!(!local.contains("warning"), "{local}");
}

#[test]
fn clients_stalled_mid_body_hold_no_place_and_other_clients_are_served() {
    let cfg = ServeConfig { max_pending: 4, ..ServeConfig::default() };
    let server = start(tiny_pipeline("llava_hf"), cfg, true);
    let addr = server.base.trim_start_matches("http://").to_string();
    // Twice as many stalled bodies as there are places: each sends its headers and 10 of 100 000 bytes.
    let stalled: Vec<TcpStream> = (0..8)
        .map(|_| {
            let mut s = TcpStream::connect(&addr).unwrap();
            let head = "POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
                        Content-Length: 100000\r\n\r\n{\"image\": ";
            s.write_all(head.as_bytes()).unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let url = classify_url(&server.base);
    let body = json!({"image": png_b64(1, 2)});
    let start = Instant::now();
    for _ in 0..4 {
        let (status, verdict) = post_json(&url, &body);
        assert_eq!(status, 200, "{verdict}");
    }
    let took = start.elapsed();
    eprintln!("4 requests beside 8 stalled bodies (4 places): served in {took:?}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    drop(stalled);
}

#[test]
fn requests_still_running_at_the_end_of_the_shutdown_grace_get_a_503() {
    let cfg = ServeConfig {
        shutdown_grace: Duration::from_millis(50),
        batching: Batching { max_batch: 1, window: Duration::from_millis(1) },
        ..ServeConfig::default()
    };
    let server = start(tiny_pipeline("llava_hf"), cfg, true);
    let chat = format!("{}/v1/chat/completions", server.base);
    let mut body = chat_body(&png_b64(1, 2), "Describe it.");
    body["max_tokens"] = json!(40);
    let answers: Vec<(u16, serde_json::Value)> = std::thread::scope(|s| {
        // Enough work (one chat a pass) that some is still running or queued on a machine several times faster.
        let handles: Vec<_> = (0..48).map(|_| s.spawn(|| post_json(&chat, &body))).collect();
        std::thread::sleep(Duration::from_millis(100));
        let took = server.shut_down();
        assert!(took < Duration::from_secs(5), "shutdown took {took:?}");
        // Every client got a status (post_json fails the test on a connection closed without one).
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let aborted = answers.iter().filter(|(s, b)| *s == 503 && b["error"]["code"] == "shutting_down").count();
    let served = answers.iter().filter(|(s, _)| *s == 200).count();
    eprintln!("48 chats at shutdown: {served} answered, {aborted} answered 503 shutting_down");
    assert_eq!(served + aborted, 48, "{answers:?}");
    assert!(aborted >= 1, "{answers:?}");
}

#[test]
fn content_types_auth_schemes_and_unusable_settings_are_judged_exactly() {
    let key = ApiKey::new("s3cret").unwrap();
    let server = start(tiny_pipeline("llava_hf"), ServeConfig { api_key: Some(key), ..ServeConfig::default() }, true);
    let url = classify_url(&server.base);
    let body = json!({"image": png_b64(0, 1)}).to_string();
    let auth = [("Authorization", "bearer s3cret")];
    for (content_type, status) in
        [("application/jsonfoo", 415), ("application/json; charset=utf-8", 200), ("Application/JSON", 200)]
    {
        assert_eq!(post_with(&url, content_type, &auth, &body).0, status, "{content_type}");
    }
    assert_eq!(post_with(&url, "application/json", &[("Authorization", "BEARER s3cret")], &body).0, 200);
    assert!(ApiKey::new("one\ntwo").is_err() && ApiKey::new("a b").is_err());
    let bad = [
        ServeConfig { request_timeout: Duration::ZERO, ..ServeConfig::default() },
        ServeConfig { body_timeout: Duration::ZERO, ..ServeConfig::default() },
        ServeConfig { max_body_bytes: 0, ..ServeConfig::default() },
        ServeConfig { max_body_bytes: usize::MAX, ..ServeConfig::default() },
        ServeConfig { max_pending: 0, ..ServeConfig::default() },
        ServeConfig { max_image_memory: 1 << 20, ..ServeConfig::default() },
    ];
    for cfg in bad {
        let shown = format!("{cfg:?}");
        let e = psa_vlm::serve::Server::new(tiny_pipeline("llava_hf"), cfg).map(|_| ()).unwrap_err();
        assert!(e.to_string().starts_with("invalid server setting"), "{shown}: {e}");
    }
}

#[test]
fn a_model_whose_verdicts_are_all_invalid_is_not_ready_and_health_says_why() {
    let mut p = tiny_pipeline("llava_hf");
    let head = &mut p.model.safety.safe_part.level_head;
    head.weight = psa_vlm::burn::module::Param::from_tensor(head.weight.val().zeros_like());
    head.bias = head.bias.take().map(|b| psa_vlm::burn::module::Param::from_tensor(b.val().zeros_like()));
    let server = start(p, ServeConfig::default(), false);
    let until = Instant::now() + Duration::from_secs(60);
    let (status, health) = loop {
        let (status, health) = get(&format!("{}/health", server.base));
        if health["status"] != "warming_up" || Instant::now() > until {
            break (status, health);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!((status, health["status"].as_str()), (503, Some("failed")), "{health}");
    assert!(health["error"].as_str().unwrap().contains("no valid verdict"), "{health}");
    assert_eq!(post_json(&classify_url(&server.base), &json!({"image": png_b64(0, 1)})).0, 503);
}
