//! Datasets and batching in plain Rust types (`Vec<f32>` features, `Vec<i64>` labels).
//!
//! Kept free of `Tensor` on purpose: loading and shuffling data has nothing to do with
//! devices or autograd, and the caller decides where (CPU or GPU) a batch should live.

pub mod batch;
pub mod digits;
pub mod mnist;

pub use batch::BatchIter;

/// An in-memory labelled image dataset, stored row-major: sample `i` occupies
/// `features[i * dim..(i + 1) * dim]`, an image of `rows × cols` pixels (`dim == rows * cols`),
/// and has class `labels[i]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    /// `n * dim` feature values, sample after sample.
    pub features: Vec<f32>,
    /// One class index per sample.
    pub labels: Vec<i64>,
    /// Number of samples.
    pub n: usize,
    /// Features per sample (`rows * cols`).
    pub dim: usize,
    /// Image height in pixels.
    pub rows: usize,
    /// Image width in pixels.
    pub cols: usize,
}

impl Dataset {
    /// Number of samples.
    pub fn len(&self) -> usize {
        self.n
    }

    /// Whether the dataset has no samples.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// `max(label) + 1`, i.e. the width a one-hot / logits layer needs; 0 when empty.
    /// Negative labels are ignored.
    pub fn num_classes(&self) -> usize {
        self.labels.iter().copied().max().map_or(0, |m| usize::try_from(m).map_or(0, |m| m + 1))
    }

    /// The features (`idx.len() * dim` values, in the order of `idx`) and labels of the
    /// selected samples: one mini-batch, ready to be turned into tensors.
    ///
    /// # Panics
    /// If an index is `>= self.len()`.
    pub fn gather(&self, idx: &[usize]) -> (Vec<f32>, Vec<i64>) {
        let mut x = Vec::with_capacity(idx.len() * self.dim);
        let mut y = Vec::with_capacity(idx.len());
        for &i in idx {
            assert!(i < self.n, "Dataset::gather: index {i} out of range for {} samples", self.n);
            x.extend_from_slice(&self.features[i * self.dim..(i + 1) * self.dim]);
            y.push(self.labels[i]);
        }
        (x, y)
    }

    /// A new dataset holding the selected samples, in the order of `idx`.
    ///
    /// # Panics
    /// If an index is `>= self.len()`.
    pub fn subset(&self, idx: &[usize]) -> Dataset {
        let (features, labels) = self.gather(idx);
        Dataset { features, labels, n: idx.len(), dim: self.dim, rows: self.rows, cols: self.cols }
    }

    /// Splits into `(train, test)` after a seeded shuffle; `test` gets
    /// `round(len * test_fraction)` samples. The same seed always gives the same split, so
    /// results stay comparable between runs.
    ///
    /// # Panics
    /// If `test_fraction` is not within `0.0..=1.0` (a NaN included).
    pub fn split(&self, test_fraction: f64, seed: u64) -> (Dataset, Dataset) {
        assert!(
            (0.0..=1.0).contains(&test_fraction),
            "Dataset::split: test_fraction must be in [0, 1], got {test_fraction}"
        );
        let order = batch::permutation(self.n, seed);
        let n_test = ((self.n as f64) * test_fraction).round() as usize;
        let n_test = n_test.min(self.n);
        let (test_idx, train_idx) = order.split_at(n_test);
        (self.subset(train_idx), self.subset(test_idx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sample `i` has label `i` and features `[i, i + 0.5]`, so provenance is traceable.
    fn toy(n: usize) -> Dataset {
        Dataset {
            features: (0..n).flat_map(|i| [i as f32, i as f32 + 0.5]).collect(),
            labels: (0..n as i64).collect(),
            n,
            dim: 2,
            rows: 1,
            cols: 2,
        }
    }

    #[test]
    fn split_sizes_and_determinism() {
        let d = toy(101);
        let (train, test) = d.split(0.2, 9);
        assert_eq!((train.len(), test.len()), (81, 20));
        assert_eq!(train.features.len(), 81 * 2);
        assert_eq!(test.features.len(), 20 * 2);

        let mut all: Vec<i64> = train.labels.iter().chain(&test.labels).copied().collect();
        all.sort_unstable();
        assert_eq!(all, d.labels, "split is a partition");
        for part in [&train, &test] {
            for (k, &l) in part.labels.iter().enumerate() {
                assert_eq!(part.features[2 * k..2 * k + 2], [l as f32, l as f32 + 0.5]);
            }
        }

        assert_eq!(d.split(0.2, 9), (train.clone(), test.clone()));
        assert_ne!(d.split(0.2, 10).1.labels, test.labels);
    }

    #[test]
    fn split_extremes() {
        let d = toy(10);
        let (train, test) = d.split(0.0, 1);
        assert_eq!((train.len(), test.len()), (10, 0));
        assert!(test.is_empty());
        let (train, test) = d.split(1.0, 1);
        assert_eq!((train.len(), test.len()), (0, 10));
        let (train, test) = toy(0).split(0.5, 1);
        assert!(train.is_empty() && test.is_empty());
    }

    #[test]
    #[should_panic(expected = "test_fraction")]
    fn split_rejects_bad_fraction() {
        let _ = toy(4).split(1.5, 0);
    }

    #[test]
    fn gather_and_num_classes() {
        let d = toy(5);
        let (x, y) = d.gather(&[3, 0, 3]);
        assert_eq!(x, vec![3.0, 3.5, 0.0, 0.5, 3.0, 3.5]);
        assert_eq!(y, vec![3, 0, 3]);
        assert_eq!(d.num_classes(), 5);
        assert_eq!(toy(0).num_classes(), 0);
    }
}
