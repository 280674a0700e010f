//! Comparing numbers with a reference: the largest absolute difference, where NaN or ±inf on either side is an
//! error that names its position. `f64::max` drops NaN, so a plain max-fold of differences would let an all-NaN
//! output pass any tolerance; every parity check of this project goes through [`max_abs_diff`] instead.
use std::fmt;

/// Which side of a comparison held a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The values under test.
    Got,
    /// The reference values.
    Want,
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Got => "got",
            Self::Want => "want",
        })
    }
}

/// Why two sequences of numbers could not be compared.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CompareError {
    /// The sequences have different lengths.
    #[error("length mismatch: got {got} values, want {want}")]
    Length {
        /// Values under test.
        got: usize,
        /// Reference values.
        want: usize,
    },
    /// A value is NaN or infinite (the first such position, in order).
    #[error("{side}[{index}] is {value}, not a finite number")]
    NonFinite {
        /// The side that held it.
        side: Side,
        /// Its position in the flattened sequence.
        index: usize,
        /// The value.
        value: f64,
    },
}

impl CompareError {
    /// The flat position of a non-finite value, if that is the error.
    pub fn index(&self) -> Option<usize> {
        match self {
            Self::NonFinite { index, .. } => Some(*index),
            Self::Length { .. } => None,
        }
    }
}

/// The largest `|got − want|` over pairs, or the first pair holding NaN or ±inf.
pub fn max_abs_diff_pairs<A: Into<f64>, B: Into<f64>>(
    pairs: impl IntoIterator<Item = (A, B)>,
) -> Result<f64, CompareError> {
    let mut worst = 0.0f64;
    for (index, (g, w)) in pairs.into_iter().enumerate() {
        let (g, w) = (g.into(), w.into());
        for (side, value) in [(Side::Got, g), (Side::Want, w)] {
            if !value.is_finite() {
                return Err(CompareError::NonFinite { side, index, value });
            }
        }
        let d = (g - w).abs();
        if d > worst {
            worst = d;
        }
    }
    Ok(worst)
}

/// The largest `|got[i] − want[i]|`; an error for different lengths or any NaN or ±inf on either side.
pub fn max_abs_diff<A: Copy + Into<f64>, B: Copy + Into<f64>>(got: &[A], want: &[B]) -> Result<f64, CompareError> {
    if got.len() != want.len() {
        return Err(CompareError::Length { got: got.len(), want: want.len() });
    }
    max_abs_diff_pairs(got.iter().copied().zip(want.iter().copied()))
}

/// The largest `|x|`; an error naming the first NaN or ±inf.
pub fn max_abs<A: Copy + Into<f64>>(values: &[A]) -> Result<f64, CompareError> {
    max_abs_diff_pairs(values.iter().map(|&v| (v, 0.0f64)))
}

/// The row-major multi-index of flat position `index` in a tensor of `shape`.
pub fn unravel(mut index: usize, shape: &[usize]) -> Vec<usize> {
    let mut out = vec![0; shape.len()];
    for (o, &d) in out.iter_mut().zip(shape).rev() {
        if d > 0 {
            *o = index % d;
            index /= d;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finite_values_give_the_largest_difference() {
        assert_eq!(max_abs_diff(&[1.0f32, 2.0, 3.0], &[1.5f64, 2.0, 0.0]), Ok(3.0));
        assert_eq!(max_abs_diff::<f32, f32>(&[], &[]), Ok(0.0));
        assert_eq!(max_abs(&[-4.0f32, 2.0]), Ok(4.0));
    }

    #[test]
    fn nan_and_infinity_on_either_side_name_their_position() {
        let err = max_abs_diff(&[0.0f32, f32::NAN, 1.0], &[0.0f32, 0.0, 1.0]).unwrap_err();
        assert!(matches!(err, CompareError::NonFinite { side: Side::Got, index: 1, value } if value.is_nan()));
        assert_eq!(err.to_string(), "got[1] is NaN, not a finite number");
        let err = max_abs_diff(&[0.0f64, 0.0], &[0.0f64, f64::NEG_INFINITY]).unwrap_err();
        assert_eq!(err, CompareError::NonFinite { side: Side::Want, index: 1, value: f64::NEG_INFINITY });
        // What this replaces: f64::max drops NaN, so a max-fold over an all-NaN output looked like a perfect match.
        let nan = [f64::NAN; 4];
        assert_eq!(f64::max(0.0, f64::NAN), 0.0);
        assert_eq!(max_abs_diff(&nan, &[0.0; 4]).unwrap_err().index(), Some(0));
        assert!(max_abs(&[1.0f32, f32::INFINITY]).is_err());
    }

    #[test]
    fn lengths_must_agree() {
        assert_eq!(max_abs_diff(&[1.0f32], &[1.0f32, 2.0]), Err(CompareError::Length { got: 1, want: 2 }));
    }

    #[test]
    fn unravel_is_row_major() {
        assert_eq!(unravel(0, &[2, 3, 4]), vec![0, 0, 0]);
        assert_eq!(unravel(23, &[2, 3, 4]), vec![1, 2, 3]);
        assert_eq!(unravel(5, &[2, 3]), vec![1, 2]);
    }
}
