//! A cache of freed host buffers, so a new large tensor reuses memory that is already mapped.
//!
//! A fresh 64 MiB buffer from the system allocator is a new mapping: its first write takes
//! 16 k page faults, each zeroing a page, which costs more than the kernel that fills it. A
//! training step or a benchmark loop frees and allocates buffers of the same sizes over and
//! over, so when the last tensor viewing a large buffer is dropped, the buffer goes here, and
//! the next allocation of that size class takes it back without touching the kernel.
//!
//! Buffers under [`MIN_BYTES`] (4 KiB, a page) are left to the system allocator. Above that,
//! glibc maps a buffer of 128 KiB or more afresh on every call (a 256 KiB output cost its 64
//! page faults each time), and smaller ones come from a heap whose top it hands back to the
//! kernel whenever a step frees its activations: an LSTM step's 16 KiB gate gradients then
//! faulted their pages in anew at every step (docs/PERFORMANCE.md, "Seventeenth session").
//! Sizes are rounded up to classes at most 1/8 apart, so nearby sizes share buffers. The cache
//! holds at most `TENSORFORGE_CPU_CACHE_MB` (default 1024) MiB; [`empty_cache`] frees it.

use super::CpuStorage;
use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

/// Smaller buffers go straight to the system allocator.
pub const MIN_BYTES: usize = 1 << 12;

#[derive(Default)]
struct Cache {
    /// Free buffers by (element type, capacity in bytes); each is a `Vec<T>` of length 0.
    free: HashMap<(TypeId, usize), Vec<Box<dyn Any + Send>>>,
    bytes: usize,
}

fn cache() -> &'static Mutex<Cache> {
    static CACHE: OnceLock<Mutex<Cache>> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

fn lock() -> std::sync::MutexGuard<'static, Cache> {
    // The cache holds only free buffers; a panic while it was locked leaves it consistent.
    cache().lock().unwrap_or_else(|e| e.into_inner())
}

fn limit_bytes() -> usize {
    static LIMIT: OnceLock<usize> = OnceLock::new();
    *LIMIT.get_or_init(|| {
        let mb = std::env::var("TENSORFORGE_CPU_CACHE_MB").ok().and_then(|s| s.parse::<usize>().ok());
        mb.unwrap_or(1024) << 20
    })
}

/// The size class of `bytes`: rounded up to a multiple of 1/8 of the power of two below it.
fn class_bytes(bytes: usize) -> usize {
    let below = 1usize << (usize::BITS - 1 - bytes.max(1).leading_zeros());
    let step = (below / 8).max(4096);
    bytes.div_ceil(step) * step
}

/// What an allocation that failed unwinds with, up to [`super::guard`], which turns it into
/// [`crate::Error::OutOfMemory`]. Kernels allocate their outputs deep inside loops and rayon
/// tasks that return plain `Vec`s; unwinding carries the failure out of all of them without a
/// `Result` on every kernel, and `resume_unwind` skips the panic hook, so nothing is printed.
pub(crate) struct AllocFailed {
    pub bytes: usize,
}

/// Reserves exactly `cap` elements, or unwinds with [`AllocFailed`].
fn reserve<T>(cap: usize) -> Vec<T> {
    let mut v = Vec::new();
    if v.try_reserve_exact(cap).is_err() {
        let bytes = cap.saturating_mul(std::mem::size_of::<T>());
        std::panic::resume_unwind(Box::new(AllocFailed { bytes }));
    }
    v
}

/// An empty `Vec<T>` with room for at least `n` elements, from the cache when it holds a
/// buffer of that size class. A failed allocation unwinds to `backend::cpu::guard` (see
/// `AllocFailed`) instead of aborting the process.
pub fn alloc<T: Send + 'static>(n: usize) -> Vec<T> {
    let size = std::mem::size_of::<T>().max(1);
    let Some(bytes) = n.checked_mul(size) else {
        std::panic::resume_unwind(Box::new(AllocFailed { bytes: usize::MAX }));
    };
    if bytes < MIN_BYTES {
        return reserve(n);
    }
    let class = class_bytes(bytes);
    let cap = class / size;
    let reused = {
        let mut c = lock();
        let hit = c.free.get_mut(&(TypeId::of::<T>(), class)).and_then(|list| list.pop());
        if hit.is_some() {
            c.bytes -= class;
        }
        hit
    };
    match reused.map(|b| b.downcast::<Vec<T>>()) {
        Some(Ok(v)) => *v,
        // The key holds the type id, so the downcast cannot fail; allocate anew if it did.
        _ => reserve(cap),
    }
}

/// `Ok` when `bytes` of host memory could be reserved now, else the out-of-memory `Err` for
/// `op`. For constructors that make many tensors in a loop (a stack of recurrent layers): the
/// whole request is refused up front instead of filling memory one tensor at a time. The
/// probe reserves address space and gives it back without touching it.
pub fn ensure_fits(op: &'static str, bytes: usize) -> crate::Result<()> {
    let mut probe: Vec<u8> = Vec::new();
    probe.try_reserve_exact(bytes).map_err(|_| crate::Error::OutOfMemory { op, device: crate::Device::Cpu, bytes })
}

/// An empty `Vec<T>` with room for exactly `n` elements, or the out-of-memory `Err` for `op`
/// naming the bytes asked for: for host copies made outside the kernels (reading a tensor
/// back, serializing a file), where a `Result` is at hand.
pub fn try_with_capacity<T>(op: &'static str, n: usize) -> crate::Result<Vec<T>> {
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|_| crate::Error::OutOfMemory {
        op,
        device: crate::Device::Cpu,
        bytes: n.saturating_mul(std::mem::size_of::<T>()),
    })?;
    Ok(v)
}

/// A `Vec<T>` of `n` copies of `v`, from the cache when it can.
pub fn filled<T: Clone + Send + 'static>(n: usize, v: T) -> Vec<T> {
    let mut out = alloc(n);
    out.resize(n, v);
    out
}

/// Takes a buffer back for reuse; one that is small, of an odd capacity (not made by
/// [`alloc`]) or over the cache's limit is freed instead.
pub fn recycle(s: CpuStorage) {
    super::with_vec!(s, v => recycle_vec(v))
}

/// [`recycle`] for a kernel's scratch buffer of any element type.
pub(crate) fn recycle_vec<T: Send + 'static>(mut v: Vec<T>) {
    {
        let size = std::mem::size_of::<T>().max(1);
        let bytes = v.capacity() * size;
        if bytes < MIN_BYTES || class_bytes(bytes) != bytes || bytes > limit_bytes() {
            return;
        }
        v.clear();
        let evicted = {
            let mut c = lock();
            // Over the limit, older buffers of other sizes go first: the newest one is the
            // size the program uses now.
            let mut evicted: Vec<Box<dyn Any + Send>> = Vec::new();
            while c.bytes + bytes > limit_bytes() {
                let Some(key) = c.free.iter().find(|(_, l)| !l.is_empty()).map(|(k, _)| *k) else { break };
                let list = c.free.get_mut(&key).expect("key just found");
                evicted.push(list.pop().expect("list is not empty"));
                c.bytes -= key.1;
            }
            c.bytes += bytes;
            c.free.entry((TypeId::of::<T>(), bytes)).or_default().push(Box::new(v));
            evicted
        };
        // Freed after the lock is released: unmapping takes time.
        drop(evicted);
    }
}

/// Bytes held by the cache, free for reuse.
pub fn cached_bytes() -> usize {
    lock().bytes
}

/// Frees every cached buffer.
pub fn empty_cache() {
    let free = {
        let mut c = lock();
        c.bytes = 0;
        std::mem::take(&mut c.free)
    };
    drop(free);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_round_up_by_at_most_an_eighth() {
        for bytes in [MIN_BYTES, MIN_BYTES + 1, 3 << 20, (64 << 20) - 5, 100 << 20] {
            let c = class_bytes(bytes);
            assert!(c >= bytes && c - bytes <= bytes / 8 + 4096, "{bytes} -> {c}");
            assert_eq!(class_bytes(c), c, "a class is its own class");
        }
    }

    #[test]
    fn a_recycled_buffer_is_reused_for_the_same_class() {
        // An odd u8 size no other test allocates, so the process-wide cache is ours here.
        let n = 5_123_457;
        let mut v = alloc::<u8>(n);
        assert!(v.capacity() >= n);
        v.resize(n, 1);
        let ptr = v.as_ptr();
        recycle(CpuStorage::U8(v));
        let w = alloc::<u8>(n - 1000);
        assert!(w.is_empty());
        assert_eq!((w.as_ptr(), w.capacity()), (ptr, class_bytes(n)));
        let odd: Vec<u8> = Vec::with_capacity(n); // not a class size: freed, not kept
        let before = cached_bytes();
        recycle(CpuStorage::U8(odd));
        assert!(cached_bytes() <= before);
    }
}
