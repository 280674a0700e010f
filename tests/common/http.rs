//! A `psa serve` on an ephemeral loopback port, and a small HTTP client over it.
use std::time::{Duration, Instant};

use base64::Engine;
use psa_vlm::pipeline::GuardedPipeline;
use psa_vlm::serve::{ServeConfig, Server};
use serde_json::{Value, json};

/// A running server: its base URL, and a switch that shuts it down (dropping it does too).
pub struct Running {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    done: std::sync::mpsc::Receiver<()>,
}

impl Running {
    /// Asks for a shutdown and returns how long `run` took to return.
    pub fn shut_down(mut self) -> Duration {
        let start = Instant::now();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.done.recv_timeout(Duration::from_secs(60)).expect("the server did not stop");
        start.elapsed()
    }
}

/// Starts `pipeline` behind `cfg` and waits until `/health` reports ready (or `wait_ready` is false).
pub fn start(pipeline: GuardedPipeline, cfg: ServeConfig, wait_ready: bool) -> Running {
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (done_tx, done) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            addr_tx.send(listener.local_addr().unwrap()).unwrap();
            let shutdown = async {
                let _ = stop_rx.await;
            };
            Server::new(pipeline, cfg).unwrap().run(listener, shutdown).await.unwrap();
        });
        let _ = done_tx.send(());
    });
    let base = format!("http://{}", addr_rx.recv().unwrap());
    let running = Running { base, stop: Some(stop), done };
    let until = Instant::now() + Duration::from_secs(60);
    while wait_ready && get(&format!("{}/health", running.base)).0 != 200 {
        assert!(Instant::now() < until, "the server never became ready");
        std::thread::sleep(Duration::from_millis(20));
    }
    running
}

/// Status and JSON body of a response (errors included).
fn read(result: Result<ureq::Response, ureq::Error>, url: &str) -> (u16, Value) {
    let response = match result {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{url}: {e}"),
    };
    let status = response.status();
    let text = response.into_string().unwrap();
    (status, serde_json::from_str(&text).unwrap_or_else(|e| panic!("{status} non-JSON body {text:?}: {e}")))
}

/// GETs a URL.
pub fn get(url: &str) -> (u16, Value) {
    read(ureq::get(url).call(), url)
}

/// POSTs a raw body with extra headers.
pub fn post_with(url: &str, content_type: &str, headers: &[(&str, &str)], body: &str) -> (u16, Value) {
    let mut request = ureq::post(url).set("Content-Type", content_type);
    for (k, v) in headers {
        request = request.set(k, v);
    }
    read(request.send_string(body), url)
}

/// POSTs a raw body.
pub fn post(url: &str, content_type: &str, body: &str) -> (u16, Value) {
    post_with(url, content_type, &[], body)
}

/// POSTs JSON.
pub fn post_json(url: &str, body: &Value) -> (u16, Value) {
    post(url, "application/json", &body.to_string())
}

/// Base64 of an encoded image.
pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Base64 PNG of the synthetic image of `class`.
pub fn png_b64(class: usize, seed: u64) -> String {
    let mut bytes = Vec::new();
    super::draw(class, seed).write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png).unwrap();
    b64(&bytes)
}

/// A one-turn chat request with one PNG image.
pub fn chat_body(image: &str, question: &str) -> Value {
    json!({
        "model": "tiny",
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": question},
            {"type": "image_url", "image_url": {"url": format!("data:image/png;base64,{image}")}}
        ]}],
        "max_tokens": 6
    })
}
