//! Deterministic shuffling and mini-batch index iteration.
//!
//! The PRNG lives here rather than in a crate dependency so that a given seed produces the
//! same batches on every platform and every version of the engine: experiments and tests
//! that pin a seed must not change when a third-party RNG changes its algorithm.

/// SplitMix64: tiny, fast, and good enough for shuffling. Also used as a seed mixer, because
/// nearby seeds (0, 1, 2, ...) give unrelated streams after one round.
#[derive(Clone, Debug)]
pub(crate) struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    pub(crate) fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform integer in `0..bound` (`bound > 0`). Lemire's multiply-shift with rejection,
    /// so small bounds carry no modulo bias.
    pub(crate) fn below(&mut self, bound: u64) -> u64 {
        debug_assert!(bound > 0);
        let threshold = bound.wrapping_neg() % bound;
        loop {
            let m = u128::from(self.next_u64()) * u128::from(bound);
            if (m as u64) >= threshold {
                return (m >> 64) as u64;
            }
        }
    }

    /// Fisher–Yates shuffle.
    pub(crate) fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }
}

/// A seeded permutation of `0..n`; the same `(n, seed)` always gives the same order.
pub(crate) fn permutation(n: usize, seed: u64) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..n).collect();
    SplitMix64::new(seed).shuffle(&mut idx);
    idx
}

/// Mini-batches of sample indices for one epoch at a time.
///
/// Iterating yields the batches of the current epoch (the last one may be shorter than
/// `batch_size`); then call [`BatchIter::next_epoch`] to start the next, reshuffled, epoch.
/// The order of epoch `e` depends only on `(n, seed, e)`, never on how many epochs were
/// iterated before, so a run resumed with [`BatchIter::set_epoch`] sees the same batches as
/// an uninterrupted one.
///
/// ```
/// use tensorforge::data::{BatchIter, digits};
/// let (train, _test) = digits::load().split(0.2, 7);
/// let mut batches = BatchIter::new(train.len(), 64, true, 42);
/// let mut seen = 0;
/// for _epoch in 0..2 {
///     for idx in &mut batches {
///         let (x, _y) = train.gather(&idx);
///         assert_eq!(x.len(), idx.len() * 64);
///         seen += idx.len();
///     }
///     batches.next_epoch();
/// }
/// assert_eq!(seen, 2 * train.len());
/// ```
#[derive(Clone, Debug)]
pub struct BatchIter {
    order: Vec<usize>,
    batch_size: usize,
    shuffle: bool,
    seed: u64,
    epoch: u64,
    pos: usize,
    /// Samples in the whole dataset.
    n: usize,
    /// This process's shard of each epoch: `(rank, world_size)`.
    shard: (usize, usize),
}

impl BatchIter {
    /// Batches over `0..n`, starting at epoch 0. With `shuffle == false` every epoch visits
    /// the indices in ascending order and `seed` is ignored.
    ///
    /// # Panics
    /// If `batch_size == 0`: there is no sensible batch of nothing, and looping forever on
    /// empty batches would hide the mistake.
    pub fn new(n: usize, batch_size: usize, shuffle: bool, seed: u64) -> Self {
        assert!(batch_size > 0, "BatchIter: batch_size must be positive");
        let mut it = Self { order: (0..n).collect(), batch_size, shuffle, seed, epoch: 0, pos: 0, n, shard: (0, 1) };
        it.reset_order();
        it
    }

    /// Only this rank's share of every epoch, for data-parallel training (PyTorch's
    /// `DistributedSampler`): each epoch's order is the same on every rank (same `n`, seed
    /// and epoch), padded by repeating its start to a multiple of `world_size`, and rank `r`
    /// takes positions `r, r + world_size, …`. So every rank gets the same number of
    /// batches, and batch `k` of all ranks together is batch `k` of one process with
    /// `world_size` times the batch size.
    ///
    /// ```
    /// use tensorforge::data::BatchIter;
    /// let a: Vec<Vec<usize>> = BatchIter::new(5, 2, false, 0).shard(0, 2).collect();
    /// let b: Vec<Vec<usize>> = BatchIter::new(5, 2, false, 0).shard(1, 2).collect();
    /// assert_eq!(a, vec![vec![0, 2], vec![4]]);
    /// assert_eq!(b, vec![vec![1, 3], vec![0]]); // padded with the epoch's first index
    /// ```
    ///
    /// # Panics
    /// If `rank >= world_size`.
    pub fn shard(mut self, rank: usize, world_size: usize) -> Self {
        assert!(rank < world_size, "BatchIter::shard: rank {rank} is not below world_size {world_size}");
        self.shard = (rank, world_size);
        self.reset_order();
        self
    }

    /// Starts the next epoch: reshuffles (when shuffling) and rewinds to the first batch.
    pub fn next_epoch(&mut self) {
        self.set_epoch(self.epoch + 1);
    }

    /// Jumps to epoch `epoch` (e.g. to resume training) and rewinds to its first batch.
    pub fn set_epoch(&mut self, epoch: u64) {
        self.epoch = epoch;
        self.reset_order();
    }

    /// The current epoch number, starting at 0.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Number of samples covered per epoch.
    pub fn len_samples(&self) -> usize {
        self.order.len()
    }

    /// The configured batch size (the last batch of an epoch may be smaller).
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// Batches per epoch, counting the final partial batch.
    pub fn num_batches(&self) -> usize {
        self.order.len().div_ceil(self.batch_size)
    }

    fn reset_order(&mut self) {
        self.pos = 0;
        // Restore identity first so each epoch's order is a function of the epoch alone.
        let n = self.n;
        self.order.clear();
        self.order.extend(0..n);
        if self.shuffle {
            // Mix the epoch in through SplitMix rather than adding it to the seed, so that
            // (seed, epoch + 1) and (seed + 1, epoch) do not produce the same order.
            let epoch_seed = SplitMix64::new(self.seed ^ SplitMix64::new(self.epoch).next_u64()).next_u64();
            SplitMix64::new(epoch_seed).shuffle(&mut self.order);
        }
        let (rank, world) = self.shard;
        if world > 1 && n > 0 {
            let per_rank = n.div_ceil(world);
            self.order = (0..per_rank).map(|k| self.order[(k * world + rank) % n]).collect();
        }
    }
}

impl Iterator for BatchIter {
    type Item = Vec<usize>;

    fn next(&mut self) -> Option<Vec<usize>> {
        if self.pos >= self.order.len() {
            return None;
        }
        let end = (self.pos + self.batch_size).min(self.order.len());
        let batch = self.order[self.pos..end].to_vec();
        self.pos = end;
        Some(batch)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = (self.order.len() - self.pos).div_ceil(self.batch_size);
        (left, Some(left))
    }
}

impl ExactSizeIterator for BatchIter {}

#[cfg(test)]
mod tests {
    use super::*;

    fn epoch_order(it: &mut BatchIter) -> Vec<usize> {
        it.by_ref().flatten().collect()
    }

    #[test]
    fn covers_every_index_once_per_epoch() {
        let mut it = BatchIter::new(103, 10, true, 7);
        for _ in 0..3 {
            assert_eq!(it.len(), 11);
            let batches: Vec<Vec<usize>> = it.by_ref().collect();
            assert_eq!(batches.len(), 11);
            assert!(batches[..10].iter().all(|b| b.len() == 10));
            assert_eq!(batches[10].len(), 3, "last partial batch is kept");
            let mut seen: Vec<usize> = batches.concat();
            seen.sort_unstable();
            assert_eq!(seen, (0..103).collect::<Vec<_>>());
            assert!(it.next().is_none(), "epoch ends until next_epoch is called");
            it.next_epoch();
        }
    }

    #[test]
    fn epochs_differ_and_are_reproducible() {
        let mut a = BatchIter::new(100, 16, true, 42);
        let e0 = epoch_order(&mut a);
        a.next_epoch();
        let e1 = epoch_order(&mut a);
        assert_ne!(e0, e1);
        assert_ne!(e0, (0..100).collect::<Vec<_>>());

        let mut b = BatchIter::new(100, 16, true, 42);
        assert_eq!(epoch_order(&mut b), e0);
        // Jumping straight to epoch 1 gives the same order as stepping through epoch 0.
        b.set_epoch(1);
        assert_eq!(epoch_order(&mut b), e1);

        let mut c = BatchIter::new(100, 16, true, 43);
        assert_ne!(epoch_order(&mut c), e0);
    }

    #[test]
    fn no_shuffle_is_sequential() {
        let mut it = BatchIter::new(5, 2, false, 99);
        assert_eq!(it.by_ref().collect::<Vec<_>>(), vec![vec![0, 1], vec![2, 3], vec![4]]);
        it.next_epoch();
        assert_eq!(it.epoch(), 1);
        assert_eq!(epoch_order(&mut it), vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn empty_and_oversized_batch() {
        let mut it = BatchIter::new(0, 4, true, 1);
        assert_eq!(it.num_batches(), 0);
        assert!(it.next().is_none());
        let mut it = BatchIter::new(3, 100, true, 1);
        let b: Vec<_> = it.by_ref().collect();
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].len(), 3);
    }

    #[test]
    #[should_panic(expected = "batch_size")]
    fn zero_batch_size_panics() {
        let _ = BatchIter::new(10, 0, false, 0);
    }

    #[test]
    fn below_is_in_range_and_roughly_uniform() {
        let mut rng = SplitMix64::new(123);
        let mut counts = [0usize; 7];
        for _ in 0..70_000 {
            counts[rng.below(7) as usize] += 1;
        }
        assert!(counts.iter().all(|&c| (9_000..11_000).contains(&c)), "{counts:?}");
    }

    #[test]
    fn permutation_is_a_permutation() {
        let mut p = permutation(50, 5);
        assert_eq!(p, permutation(50, 5));
        p.sort_unstable();
        assert_eq!(p, (0..50).collect::<Vec<_>>());
    }
}
