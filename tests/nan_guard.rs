//! The comparison helpers every parity test uses fail on NaN and ±inf: an all-NaN model output, or one poisoned
//! element, cannot pass a tolerance (a max-fold with `f64::max` silently dropped NaN and passed both).
mod common;

use std::panic::{AssertUnwindSafe, catch_unwind};

use common::*;
use psa_vlm::burn::tensor::{Device, Tensor, TensorData};

/// The panic message of `f`, which must panic.
fn panic_message(f: impl FnOnce()) -> String {
    let err = catch_unwind(AssertUnwindSafe(f)).expect_err("the comparison must fail");
    err.downcast_ref::<String>().cloned().or_else(|| err.downcast_ref::<&str>().map(|s| s.to_string())).unwrap()
}

fn tensor(values: &[f64], shape: [usize; 3]) -> Tensor<3> {
    let v: Vec<f32> = values.iter().map(|&x| x as f32).collect();
    Tensor::from_data(TensorData::new(v, shape), &Device::flex())
}

#[test]
fn nan_or_infinity_in_a_model_output_fails_every_helper_and_names_the_position() {
    let fx = read_fixture(&fixtures().join("tiny_llava/fixture.safetensors"));
    let want = &fx["text_only.logits"];
    let shape: [usize; 3] = want.shape.clone().try_into().unwrap();
    let model = load_tiny_llava("tiny_llava", &Device::flex());
    let logits = model.language_model.forward(&fx["text_only.input_ids"].ids(), None, &Device::flex());
    // The real output passes: the helpers are not simply failing everything.
    assert!(assert_close("real logits", logits.clone(), want, 2e-5) <= 2e-5);

    // An all-NaN output: the old fold returned 0 here and passed every tolerance.
    let nan = logits.clone().mul_scalar(f32::NAN);
    let msg = panic_message(|| {
        assert_close("all-NaN logits", nan, want, 1e9);
    });
    assert!(msg.contains("got[0] is NaN") && msg.contains("position [0, 0, 0]"), "{msg}");

    // One poisoned element deep inside, on the output side and on the reference side.
    let k = want.values.len() - 7;
    let mut poisoned = host(logits).1;
    poisoned[k] = f64::INFINITY;
    let msg = panic_message(|| {
        max_diff(tensor(&poisoned, shape), want);
    });
    let at = psa_vlm::core::compare::unravel(k, &want.shape);
    assert!(msg.contains(&format!("got[{k}] is inf")) && msg.contains(&format!("{at:?}")), "{msg}");
    let mut bad_ref = want.clone();
    bad_ref.values[3] = f64::NAN;
    let msg = panic_message(|| {
        max_diff(tensor(&want.values, shape), &bad_ref);
    });
    assert!(msg.contains("want[3] is NaN"), "{msg}");

    // The flat-slice helpers too.
    let msg = panic_message(|| {
        max_abs_diff("host logits", &[1.0f32, f32::NAN], &[1.0f64, 2.0]);
    });
    assert!(msg.contains("host logits: got[1] is NaN"), "{msg}");
    let msg = panic_message(|| {
        largest("step losses", &[0.1, f64::NEG_INFINITY]);
    });
    assert!(msg.contains("step losses: got[1] is -inf"), "{msg}");
}
