//! The UCI "Optical Recognition of Handwritten Digits" set, bundled in the binary.
//!
//! 1,797 grey-level 8×8 images of the digits 0–9 (CC BY 4.0; see `data/README.md` for
//! attribution). It is small enough to embed, so examples and convergence tests can train
//! a real classifier with no download and no network.

use super::Dataset;

/// Image height in pixels.
pub const ROWS: usize = 8;
/// Image width in pixels.
pub const COLS: usize = 8;
/// Number of samples in the bundled copy.
pub const NUM_SAMPLES: usize = 1797;
/// Number of classes (the digits 0–9).
pub const NUM_CLASSES: usize = 10;
/// Largest raw pixel value: each pixel counts the "on" pixels of a 4×4 block.
const MAX_PIXEL: u8 = 16;

/// One sample per line: 64 pixels (row-major, 0..=16) then the label, comma-separated.
const CSV: &str = include_str!("../../data/digits.csv");

/// The whole bundled set: pixels scaled to `[0, 1]` (raw value / 16), labels 0–9, in file
/// order. Use [`Dataset::split`] to hold out a test set.
///
/// # Panics
/// Never in a build whose tests pass: the data is compiled in and validated by them.
pub fn load() -> Dataset {
    // The text is compiled in and checked by the tests below, so a failure here is a broken
    // build, not bad user input.
    parse(CSV).expect("bundled data/digits.csv is malformed")
}

fn parse(text: &str) -> Result<Dataset, String> {
    let dim = ROWS * COLS;
    let mut features = Vec::with_capacity(NUM_SAMPLES * dim);
    let mut labels = Vec::with_capacity(NUM_SAMPLES);
    for (lineno, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let at = |what: String| format!("digits.csv line {}: {what}", lineno + 1);
        let mut fields = 0;
        for (k, field) in line.trim().split(',').enumerate() {
            let v: u8 =
                field.trim().parse().map_err(|_| at(format!("field {} is not an integer: {field:?}", k + 1)))?;
            if k < dim {
                if v > MAX_PIXEL {
                    return Err(at(format!("pixel value {v} exceeds {MAX_PIXEL}")));
                }
                features.push(f32::from(v) / f32::from(MAX_PIXEL));
            } else if k == dim {
                if usize::from(v) >= NUM_CLASSES {
                    return Err(at(format!("label {v} is not a digit")));
                }
                labels.push(i64::from(v));
            } else {
                return Err(at(format!("more than {} fields", dim + 1)));
            }
            fields = k + 1;
        }
        if fields != dim + 1 {
            return Err(at(format!("expected {} fields, found {fields}", dim + 1)));
        }
    }
    Ok(Dataset { n: labels.len(), features, labels, dim, rows: ROWS, cols: COLS })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundled_set_shape_and_values() {
        let d = load();
        assert_eq!(d.len(), NUM_SAMPLES);
        assert_eq!((d.dim, d.rows, d.cols), (64, 8, 8));
        assert_eq!(d.features.len(), NUM_SAMPLES * 64);
        assert_eq!(d.labels.len(), NUM_SAMPLES);
        assert_eq!(d.num_classes(), NUM_CLASSES);
        assert!(d.features.iter().all(|v| (0.0..=1.0).contains(v)));
        // Both ends of the range occur, so the scaling is by 16, not by the max per image.
        assert!(d.features.contains(&0.0) && d.features.contains(&1.0));

        let mut counts = [0usize; NUM_CLASSES];
        for &l in &d.labels {
            counts[l as usize] += 1;
        }
        assert!(counts.iter().all(|c| (170..=185).contains(c)), "{counts:?}");
    }

    #[test]
    fn first_sample_is_a_zero() {
        // The first row of the UCI test file; pins the pixel order and the scaling.
        let d = load();
        assert_eq!(d.labels[0], 0);
        let raw: Vec<f32> = d.features[..8].iter().map(|v| v * 16.0).collect();
        assert_eq!(raw, vec![0.0, 0.0, 5.0, 13.0, 9.0, 1.0, 0.0, 0.0]);
    }

    #[test]
    fn parse_rejects_malformed_lines() {
        let good = format!("{}7\n", "0,".repeat(64));
        assert_eq!(parse(&good).unwrap().labels, vec![7]);
        assert!(parse(&format!("{}7\n", "0,".repeat(63))).is_err(), "too few");
        assert!(parse(&format!("{}7,1\n", "0,".repeat(64))).is_err(), "too many");
        assert!(parse(&format!("17,{}7\n", "0,".repeat(63))).is_err(), "pixel > 16");
        assert!(parse(&format!("{}10\n", "0,".repeat(64))).is_err(), "label > 9");
        assert!(parse(&format!("x,{}7\n", "0,".repeat(63))).is_err(), "not a number");
    }
}
