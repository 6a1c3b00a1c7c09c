//! Fork-join for the kernels, shaped for short parallel sections.
//!
//! A kernel splits its work into numbered tasks. The calling thread claims tasks itself from
//! the start, and `threads - 1` helper jobs on the rayon pool claim the rest as they arrive.
//! The caller never sleeps: once no task is left it spins until the helpers that did start
//! are done, and a helper that starts after that finds the section closed and touches
//! nothing. When the caller is outside the pool (a program's main thread), a helper then
//! lingers for a moment (see [`spin_budget`]), running whatever the pool is given, so that the
//! next section finds it awake. Inside the pool it returns at once: it may have been picked
//! up by a worker waiting in a `join`, which lingering would hold up.
//!
//! Why not plain rayon: from a thread outside the pool, `par_iter` hands everything to the
//! pool and blocks on a condition variable, and a rayon worker sleeps a few microseconds
//! after its last job. Waking a sleeping thread on a virtual machine took 20–150 µs here
//! (docs/PERFORMANCE.md, "Sixth session"), as long as a whole 256³ product; OpenBLAS and
//! OpenMP spin instead, for the same reason.

use std::cell::Cell;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::*};
use std::time::{Duration, Instant};

/// Runs `f(i)` for every `i in 0..tasks`, split across the current rayon pool (the calling
/// thread included). Tasks may run in any order and on any thread; each runs once.
pub(crate) fn for_each_task(tasks: usize, f: impl Fn(usize) + Sync) {
    for_each_task_init(tasks, || (), |_, i| f(i));
}

/// [`for_each_task`] with per-thread state: every thread that takes part calls `init` once
/// and hands the state to each task it runs (scratch buffers, say).
pub(crate) fn for_each_task_init<S>(tasks: usize, init: impl Fn() -> S + Sync, f: impl Fn(&mut S, usize) + Sync) {
    let threads = if alone() { 1 } else { rayon::current_num_threads().min(tasks) };
    if threads < 2 {
        let mut s = init();
        (0..tasks).for_each(|i| f(&mut s, i));
        return;
    }
    // Each thread first runs its own share of the tasks, in order: the caller the first, the
    // helpers the others in the order they arrive. Consecutive kernels over tensors of one
    // shape (a batch's activations) then find their data in the cache of the thread that
    // wrote it, instead of wherever a free-for-all claim sent it. A thread done with its
    // share takes what is left of the others', so a late helper holds up nothing. Claims
    // are of several tasks at once when there are many (cheap chunks of an elementwise
    // kernel): fewer contended atomic updates, still ~8 claims per thread to even out.
    let grain = (tasks / (threads * 8)).max(1);
    let shares: Vec<(AtomicUsize, usize)> =
        (0..threads).map(|t| (AtomicUsize::new(t * tasks / threads), (t + 1) * tasks / threads)).collect();
    let arrived = AtomicUsize::new(1);
    let caller = std::thread::current().id();
    let take_part = || {
        let first = if std::thread::current().id() == caller { 0 } else { arrived.fetch_add(1, Relaxed) % threads };
        let mut state = None;
        for (next, end) in (0..threads).map(|d| &shares[(first + d) % threads]) {
            loop {
                let start = next.fetch_add(grain, Relaxed);
                if start >= *end {
                    break;
                }
                let s = state.get_or_insert_with(&init);
                (start..(start + grain).min(*end)).for_each(|i| f(s, i));
            }
        }
    };
    fork(threads - 1, &take_part);
}

thread_local! {
    /// Whether this thread runs a task of [`run_alone`]: its kernels then stay on it.
    static ALONE: Cell<bool> = const { Cell::new(false) };
}

/// Whether the kernels called on this thread run on it alone (inside [`run_alone`]).
pub(crate) fn alone() -> bool {
    ALONE.get()
}

/// Runs `f(i)` for every `i in 0..tasks` as [`for_each_task`] does, and returns the results in
/// task order; each task runs whole on one thread, and the kernels it calls do not split. For
/// work made of a few long independent tasks (an LSTM's batch rows through every time step),
/// which would otherwise pay a fork and a join for each of their many small kernels.
pub(crate) fn run_alone<R: Send>(tasks: usize, f: impl Fn(usize) -> R + Sync) -> Vec<R> {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            ALONE.set(self.0);
        }
    }
    let mut results: Vec<Option<R>> = (0..tasks).map(|_| None).collect();
    for_each_chunk(&mut results, 1, |i, r| {
        let _restore = Restore(ALONE.replace(true));
        r[0] = Some(f(i));
    });
    results.into_iter().map(|r| r.expect("for_each_chunk runs every task")).collect()
}

/// Splits `out` into `chunk`-long pieces (the last may be shorter) and runs `f(i, piece i)` on
/// each, as [`for_each_task`].
pub(crate) fn for_each_chunk<U: Send>(out: &mut [U], chunk: usize, f: impl Fn(usize, &mut [U]) + Sync) {
    for_each_chunk_init(out, chunk, || (), |_, i, o| f(i, o));
}

/// [`for_each_chunk`] with per-thread state, as [`for_each_task_init`].
pub(crate) fn for_each_chunk_init<U: Send, S>(
    out: &mut [U],
    chunk: usize,
    init: impl Fn() -> S + Sync,
    f: impl Fn(&mut S, usize, &mut [U]) + Sync,
) {
    assert!(chunk > 0, "for_each_chunk: chunk must be positive");
    let (len, base) = (out.len(), SendPtr(out.as_mut_ptr()));
    for_each_task_init(len.div_ceil(chunk), init, |s, i| {
        let start = i * chunk;
        // SAFETY: task i is run once and owns elements start..start+chunk of `out`, which
        // stays mutably borrowed for the whole call; no two tasks' ranges overlap.
        let piece = unsafe { std::slice::from_raw_parts_mut(base.get().add(start), chunk.min(len - start)) };
        f(s, i, piece);
    });
}

/// The base of a buffer whose disjoint parts go to different threads (a kernel's output, C of
/// a GEMM).
pub(crate) struct SendPtr<U>(pub(crate) *mut U);
// By hand: a derive would require `U: Copy`.
impl<U> Clone for SendPtr<U> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<U> Copy for SendPtr<U> {}
// SAFETY: only used to hand disjoint parts of one buffer to the tasks of a section, while
// the buffer stays borrowed by the call that runs them.
unsafe impl<U: Send> Send for SendPtr<U> {}
// SAFETY: as above.
unsafe impl<U: Send> Sync for SendPtr<U> {}
impl<U> SendPtr<U> {
    // A method, so that closures capture the whole wrapper rather than its raw field.
    pub(crate) fn get(self) -> *mut U {
        self.0
    }
}

/// What the caller and its helpers share. `part` points at the caller's stack: a helper may
/// call it only between entering (`active` counted, `closed` still false) and leaving.
struct Section {
    part: *const (dyn Fn() + Sync + 'static),
    active: AtomicUsize,
    closed: AtomicBool,
    panicked: AtomicBool,
}
// SAFETY: `part` is `Sync`, and the entry protocol (`Section::help`, `Closer`) keeps every call
// of it inside the caller's borrow.
unsafe impl Send for Section {}
// SAFETY: as above.
unsafe impl Sync for Section {}

impl Section {
    fn help(&self) {
        // Entering and the caller's closing are both SeqCst, so either the caller sees this
        // helper as active and waits for it, or this helper sees the section closed.
        self.active.fetch_add(1, SeqCst);
        if !self.closed.load(SeqCst) {
            // SAFETY: entered before the close: the caller waits for `active` to drop, so the
            // closure is alive for this call.
            let part = unsafe { &*self.part };
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(part)).is_err() {
                self.panicked.store(true, Relaxed);
            }
        }
        // Release: the caller's Acquire load sees everything this helper wrote.
        self.active.fetch_sub(1, Release);
    }
}

/// Closes the section and waits for the helpers inside it, also when the caller's own part
/// unwinds, so that no helper outlives the closure it borrows.
struct Closer<'a>(&'a Section);

impl Drop for Closer<'_> {
    fn drop(&mut self) {
        self.0.closed.store(true, SeqCst);
        // Helpers inside are running (they entered), so this is at most one task long.
        spin_until(|| self.0.active.load(SeqCst) == 0);
    }
}

/// Waits for `ready()` without sleeping, for waits of at most a task's length: pauses first,
/// then, after ~50 µs of them, yields the core in case the thread being waited for needs it
/// (more threads than cores).
pub(crate) fn spin_until(mut ready: impl FnMut() -> bool) {
    let mut spins = 0u32;
    while !ready() {
        if spins < 1 << 10 {
            spins += 1;
            std::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
    }
}

/// Runs `part` on the calling thread and on up to `helpers` rayon workers, returning when every
/// started call has returned; a panic in any of them resumes on the caller.
fn fork(helpers: usize, part: &(dyn Fn() + Sync)) {
    // SAFETY: only the lifetime is erased; `Closer` keeps helpers from calling it after this
    // function returns.
    let part: *const (dyn Fn() + Sync + '_) = part;
    let erased: *const (dyn Fn() + Sync + 'static) = unsafe { std::mem::transmute(part) };
    let section = Arc::new(Section {
        part: erased,
        active: AtomicUsize::new(0),
        closed: AtomicBool::new(false),
        panicked: AtomicBool::new(false),
    });
    let from_outside = rayon::current_thread_index().is_none();
    for _ in 0..helpers {
        let s = Arc::clone(&section);
        rayon::spawn(move || {
            s.help();
            drop(s);
            if from_outside {
                linger();
            }
        });
    }
    {
        let _closer = Closer(&section);
        // SAFETY: the caller's own borrow, alive here.
        unsafe { (*part)() };
    }
    if section.panicked.load(Relaxed) {
        panic!("a parallel kernel task panicked on a pool thread");
    }
}

/// How long a helper stays awake after its last job: `TENSORFORGE_SPIN_US` microseconds
/// (default 1000; 0 lets workers sleep at once, as plain rayon does).
pub(crate) fn spin_budget() -> Duration {
    static BUDGET: OnceLock<Duration> = OnceLock::new();
    *BUDGET.get_or_init(|| {
        let us = std::env::var("TENSORFORGE_SPIN_US").ok().and_then(|v| v.trim().parse().ok()).unwrap_or(1000);
        Duration::from_micros(us)
    })
}

/// Runs whatever the pool is given until `done` is set (see `on_pool`).
pub(crate) fn poll_until(done: &AtomicBool) {
    while !done.load(Acquire) {
        match rayon::yield_now() {
            Some(rayon::Yield::Executed) => {}
            _ => (0..4).for_each(|_| std::hint::spin_loop()),
        }
    }
}

/// Workers lingering now (see [`linger`]).
static LINGERERS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// Whether this worker is already lingering further up its stack.
    static LINGERING: Cell<bool> = const { Cell::new(false) };
}

/// Keeps this worker busy-polling the pool for [`spin_budget`] after the last job it ran,
/// running any job that arrives (the next section's helper, typically) at once.
fn linger() {
    let budget = spin_budget();
    if budget.is_zero() || LINGERING.get() {
        return;
    }
    // A caller outside the pool takes part in its sections, so `threads - 1` workers awake
    // are all it can use; one more spinning worker would share a core with the caller, and
    // every serial stretch of the caller's would then run at a fraction of its speed.
    let wanted = rayon::current_num_threads().saturating_sub(1);
    if LINGERERS.fetch_add(1, Relaxed) >= wanted {
        LINGERERS.fetch_sub(1, Relaxed);
        return;
    }
    LINGERING.set(true);
    let mut last = Instant::now();
    while last.elapsed() < budget {
        match rayon::yield_now() {
            Some(rayon::Yield::Executed) => last = Instant::now(),
            Some(rayon::Yield::Idle) => (0..4).for_each(|_| std::hint::spin_loop()),
            None => break,
        }
    }
    LINGERING.set(false);
    LINGERERS.fetch_sub(1, Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(threads: usize) -> rayon::ThreadPool {
        rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("a rayon pool")
    }

    /// Every task runs exactly once, for task counts around the claim grain, with pools of
    /// one to three threads, from inside and outside a pool.
    #[test]
    fn every_task_runs_once() {
        for threads in 1..=3 {
            for tasks in [0, 1, 2, 3, 7, 48, 49, 1000] {
                let counts: Vec<AtomicUsize> = (0..tasks).map(|_| AtomicUsize::new(0)).collect();
                pool(threads).install(|| for_each_task(tasks, |i| _ = counts[i].fetch_add(1, Relaxed)));
                assert!(counts.iter().all(|c| c.load(Relaxed) == 1), "{threads} threads, {tasks} tasks");
            }
        }
        let counts: Vec<AtomicUsize> = (0..100).map(|_| AtomicUsize::new(0)).collect();
        for_each_task(100, |i| _ = counts[i].fetch_add(1, Relaxed));
        assert!(counts.iter().all(|c| c.load(Relaxed) == 1));
    }

    /// Chunks cover the slice, the last one short, each handed its own index.
    #[test]
    fn chunks_cover_the_slice() {
        let mut v = vec![0usize; 1003];
        pool(3).install(|| for_each_chunk(&mut v, 10, |i, o| o.iter_mut().for_each(|x| *x += i + 1)));
        assert!(v.iter().enumerate().all(|(j, &x)| x == j / 10 + 1));
    }

    /// Per-thread state is made at most once per thread that takes part.
    #[test]
    fn state_is_made_once_per_thread() {
        let made = AtomicUsize::new(0);
        let mut v = vec![0u8; 4096];
        pool(2).install(|| {
            for_each_chunk_init(&mut v, 1, || made.fetch_add(1, Relaxed), |_, _, o| o[0] = 1);
        });
        assert!(v.iter().all(|&x| x == 1));
        assert!((1..=2).contains(&made.load(Relaxed)), "{}", made.load(Relaxed));
    }

    /// Sections nest: a task may itself split (on a pool thread).
    #[test]
    fn sections_nest() {
        let total = AtomicUsize::new(0);
        pool(2).install(|| for_each_task(8, |_| for_each_task(8, |j| _ = total.fetch_add(j, Relaxed))));
        assert_eq!(total.load(Relaxed), 8 * 28);
    }

    /// Tasks of `run_alone` come back in order, and kernels inside them do not split.
    #[test]
    fn tasks_alone_keep_their_kernels() {
        let r = pool(2).install(|| {
            run_alone(5, |i| {
                let threads = std::sync::Mutex::new(std::collections::HashSet::new());
                for_each_task(64, |_| _ = threads.lock().unwrap().insert(std::thread::current().id()));
                (i, threads.into_inner().unwrap().len(), alone())
            })
        });
        assert_eq!(r, (0..5).map(|i| (i, 1, true)).collect::<Vec<_>>());
        assert!(!alone());
    }

    /// A panicking task reaches the caller, wherever it ran.
    #[test]
    fn a_task_panic_reaches_the_caller() {
        for victim in [0, 7] {
            let r = std::panic::catch_unwind(|| {
                pool(2).install(|| {
                    for_each_task(8, |i| {
                        if i == victim {
                            panic!("task {i}")
                        }
                    })
                })
            });
            assert!(r.is_err(), "task {victim}");
        }
    }
}
