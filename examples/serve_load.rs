//! Load test of `psa serve`: starts the server in this process on a loopback port, then for each client count
//! sends requests from that many concurrent clients and reports throughput, latency percentiles, the statuses
//! and the process's peak memory. Run it once with `--max-batch 1` (serial) and once with the default (batched);
//! `--worst-case` sends the largest accepted image (the memory bound), `--stalled N` holds N connections stalled
//! mid-body while the clients run (a stalled-body attack).
//!
//! ```sh
//! cargo run --release --example serve_load -- --model-dir runs/quickstart/model --images runs/quickstart/data/images/test_id
//! ```
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use base64::Engine;
use clap::Parser;
use psa_vlm::burn::tensor::Device;
use psa_vlm::pipeline::GuardedPipeline;
use psa_vlm::pipeline::processor::Template;
use psa_vlm::pipeline::saved_template;
use psa_vlm::serve::{Batching, ServeConfig, Server};
use serde_json::{Value, json};

#[derive(Parser, Debug)]
struct Args {
    /// A complete model directory (the quickstart writes one).
    #[arg(long, default_value = "runs/quickstart/model")]
    model_dir: PathBuf,
    /// A folder of PNG or JPEG images to send, in turn.
    #[arg(long, default_value = "runs/quickstart/data/images/test_id")]
    images: PathBuf,
    /// Concurrent client counts to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    clients: Vec<usize>,
    /// Requests each client sends per measurement.
    #[arg(long, default_value_t = 4)]
    requests: usize,
    /// `classify` or `chat`.
    #[arg(long, default_value = "classify")]
    route: String,
    /// `max_tokens` of chat requests.
    #[arg(long, default_value_t = 16)]
    max_tokens: usize,
    /// Most requests per model pass (1 = serial).
    #[arg(long, default_value_t = 8)]
    max_batch: usize,
    /// Clients that keep sending chat requests in the background while the measured ones run (to see whether
    /// classifications wait behind generations).
    #[arg(long, default_value_t = 0)]
    background_chat: usize,
    /// Most requests held at once; beyond it the server answers 503.
    #[arg(long, default_value_t = 64)]
    max_pending: usize,
    /// Send the worst image the server accepts instead of `--images`: 4096×3072 RGBA8 at the pixel limit (a
    /// 48 MiB decode from a small PNG), to measure the memory bound.
    #[arg(long)]
    worst_case: bool,
    /// Connections that send their headers and 10 bytes of a 100 000-byte body, then stall, held open while the
    /// measured clients run (a stalled-body attack).
    #[arg(long, default_value_t = 0)]
    stalled: usize,
}

/// A PNG of the largest image the default server limits accept, 4 bytes a pixel, base64.
fn worst_case_image() -> Result<String> {
    let (w, h) = (4096, 3072);
    let img = image::RgbaImage::from_fn(w, h, |x, y| image::Rgba([(x / 16) as u8, (y / 12) as u8, 128, 255]));
    let mut png = Vec::new();
    image::DynamicImage::ImageRgba8(img).write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)?;
    eprintln!("worst-case image: {w}×{h} RGBA8, {} bytes as PNG", png.len());
    Ok(base64::engine::general_purpose::STANDARD.encode(png))
}

/// Peak resident memory of this process (server and clients), MiB.
fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<f64>().ok());
    kib.unwrap_or(f64::NAN) / 1024.0
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn body(args: &Args, image: &str) -> Value {
    match args.route.as_str() {
        "chat" => json!({
            "messages": [{"role": "user", "content": [
                {"type": "text", "text": "What is in this image?"},
                {"type": "image_url", "image_url": {"url": format!("data:image/png;base64,{image}")}}
            ]}],
            "max_tokens": args.max_tokens
        }),
        _ => json!({"image": image, "question": "What is in this image?"}),
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    let mut images = Vec::new();
    if args.worst_case {
        images.push(worst_case_image()?);
    } else {
        for entry in std::fs::read_dir(&args.images).with_context(|| format!("reading {}", args.images.display()))? {
            let bytes = std::fs::read(entry?.path())?;
            images.push(base64::engine::general_purpose::STANDARD.encode(bytes));
        }
    }
    if images.is_empty() {
        bail!("no images in {}", args.images.display());
    }
    let template = Template::by_name(&saved_template(&args.model_dir).unwrap_or_else(|| "llava_v1".into()))?;
    let pipeline = GuardedPipeline::load(&args.model_dir, None, template, &Device::flex())?.with_host_vision(true)?;
    let cfg = ServeConfig {
        max_pending: args.max_pending,
        batching: Batching { max_batch: args.max_batch, window: Duration::from_millis(2) },
        ..ServeConfig::default()
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || -> Result<()> {
        let runtime = tokio::runtime::Runtime::new()?;
        runtime.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            tx.send(listener.local_addr()?)?;
            Server::new(pipeline, cfg)?.run(listener, std::future::pending()).await?;
            anyhow::Ok(())
        })
    });
    let base = format!("http://{}", rx.recv()?);
    let started = Instant::now();
    while ureq::get(&format!("{base}/health")).call().is_err() {
        if started.elapsed() > Duration::from_secs(600) {
            bail!("the server never became ready");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("ready after {:.1} s (warm-up included)", started.elapsed().as_secs_f64());
    let url = format!("{base}/v1/{}", if args.route == "chat" { "chat/completions" } else { "classify" });
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let chat_url = format!("{base}/v1/chat/completions");
    let chat_args = Args { route: "chat".into(), ..Args::parse() };
    let background: Vec<_> = (0..args.background_chat)
        .map(|c| {
            let (stop, url, image) = (stop.clone(), chat_url.clone(), images[c % images.len()].clone());
            let payload = body(&chat_args, &image).to_string();
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ = ureq::post(&url).set("Content-Type", "application/json").send_string(&payload);
                }
            })
        })
        .collect();
    let addr = base.trim_start_matches("http://").to_string();
    let stalled: Vec<std::net::TcpStream> = (0..args.stalled)
        .map(|_| -> Result<std::net::TcpStream> {
            use std::io::Write;
            let mut s = std::net::TcpStream::connect(&addr)?;
            let head = "POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
                        Content-Length: 100000\r\n\r\n{\"image\": ";
            s.write_all(head.as_bytes())?;
            Ok(s)
        })
        .collect::<Result<_>>()?;
    if !stalled.is_empty() {
        eprintln!("{} connections stalled mid-body", stalled.len());
    }
    if !background.is_empty() {
        // Let the background generations start before measuring.
        std::thread::sleep(Duration::from_secs(2));
    }
    println!(
        "| clients | requests | answered | 503 | other | throughput (req/s) | p50 (ms) | p99 (ms) | peak RSS (MiB) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for &clients in &args.clients {
        let start = Instant::now();
        let results: Vec<(u16, f64)> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..clients)
                .map(|c| {
                    let (url, images, args) = (&url, &images, &args);
                    s.spawn(move || {
                        (0..args.requests)
                            .map(|r| {
                                let payload = body(args, &images[(c * args.requests + r) % images.len()]);
                                let t = Instant::now();
                                let status = match ureq::post(url)
                                    .set("Content-Type", "application/json")
                                    .send_string(&payload.to_string())
                                {
                                    Ok(resp) => resp.status(),
                                    Err(ureq::Error::Status(code, _)) => code,
                                    Err(_) => 0,
                                };
                                (status, t.elapsed().as_secs_f64() * 1e3)
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles.into_iter().flat_map(|h| h.join().unwrap_or_default()).collect()
        });
        let wall = start.elapsed().as_secs_f64();
        let mut ok: Vec<f64> = results.iter().filter(|(s, _)| *s == 200).map(|(_, ms)| *ms).collect();
        ok.sort_by(f64::total_cmp);
        let busy = results.iter().filter(|(s, _)| *s == 503).count();
        let other = results.len() - ok.len() - busy;
        println!(
            "| {clients} | {} | {} | {busy} | {other} | {:.2} | {:.0} | {:.0} | {:.0} |",
            results.len(),
            ok.len(),
            ok.len() as f64 / wall,
            percentile(&ok, 0.5),
            percentile(&ok, 0.99),
            peak_rss_mib()
        );
    }
    drop(stalled);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in background {
        let _ = t.join();
    }
    Ok(())
}
