//! Training one model on several processes: a [`Communicator`] (rank, world size,
//! all-reduce, broadcast, barrier) over the engines clusters already run — MPI for CPU
//! tensors (feature `mpi`), NCCL for CUDA tensors (feature `nccl`) — and
//! [`DistributedDataParallel`], which keeps the replicas equal the way PyTorch's DDP does.
//!
//! Every collective either completes or returns [`Error::Distributed`]: waits have a
//! deadline ([`DEFAULT_TIMEOUT`], or `TENSORFORGE_DIST_TIMEOUT` seconds), so a rank that
//! died, erred or ran one step more than the others does not hang its peers forever.
//!
//! [`Local`] is the world of one process: the same code runs unchanged without `mpirun`.
//!
//! ```
//! use tensorforge::distributed::{Communicator, Local, ReduceOp};
//! use tensorforge::{Device, Tensor};
//! let comm = Local::new(Device::Cpu);
//! let t = Tensor::from_vec(vec![1f32, 2.], 2, Device::Cpu)?;
//! comm.all_reduce(&t, ReduceOp::Average)?; // one rank: the average is the value itself
//! assert_eq!((comm.rank(), comm.world_size()), (0, 1));
//! assert_eq!(t.to_vec1::<f32>()?, vec![1., 2.]);
//! # Ok::<(), tensorforge::Error>(())
//! ```

mod ddp;
#[cfg(feature = "mpi")]
mod mpi;
#[cfg(feature = "nccl")]
mod nccl;

pub use ddp::{DEFAULT_BUCKET_BYTES, DistributedDataParallel};
#[cfg(feature = "mpi")]
pub use mpi::Mpi;
#[cfg(feature = "nccl")]
pub use nccl::Nccl;

use crate::{Device, Error, Result, Tensor};
use std::time::Duration;

/// How long a collective waits for its peers before it gives up with an `Err` (10 minutes,
/// PyTorch's default for its process groups). `TENSORFORGE_DIST_TIMEOUT` (seconds) overrides.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// The deadline for one collective: `TENSORFORGE_DIST_TIMEOUT` seconds, else the default.
pub fn timeout_from_env() -> Duration {
    std::env::var("TENSORFORGE_DIST_TIMEOUT")
        .ok()
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0)
        .map(Duration::from_secs_f64)
        .unwrap_or(DEFAULT_TIMEOUT)
}

/// How values from all ranks combine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReduceOp {
    /// The elementwise sum.
    Sum,
    /// The elementwise sum divided by the world size (float tensors).
    Average,
    /// The elementwise maximum.
    Max,
    /// The elementwise minimum.
    Min,
}

/// A collective in flight, for a transport to implement; [`Work`] wraps it.
pub trait PendingWork: Send {
    /// True once the collective has completed (its output may then be read). Makes progress.
    fn test(&mut self) -> Result<bool>;
    /// Waits until the collective completes, or returns `Err` at its deadline.
    fn wait(self: Box<Self>) -> Result<()>;
}

/// A started collective: its output is valid after [`Work::wait`] returns `Ok`. Until then
/// its tensors must be neither read nor written. Dropping a `Work` waits for it.
#[must_use = "a collective's output is valid only after wait()"]
pub struct Work(Option<Box<dyn PendingWork>>);

impl Work {
    /// A collective that already completed (a world of one).
    pub fn done() -> Work {
        Work(None)
    }
    /// Wraps a transport's pending collective.
    pub fn pending(p: Box<dyn PendingWork>) -> Work {
        Work(Some(p))
    }
    /// True once complete; calling it lets the transport make progress (MPI's
    /// non-blocking collectives advance only inside MPI calls).
    pub fn test(&mut self) -> Result<bool> {
        match &mut self.0 {
            None => Ok(true),
            Some(p) => p.test(),
        }
    }
    /// Waits for completion, or returns `Err` at the deadline.
    pub fn wait(mut self) -> Result<()> {
        match self.0.take() {
            None => Ok(()),
            Some(p) => p.wait(),
        }
    }
}

impl Drop for Work {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = p.wait();
        }
    }
}

/// A group of processes (ranks) that reduce and share tensors: one process per CPU node
/// or per GPU. Every rank must call the same collectives in the same order with tensors of
/// the same shape and dtype.
pub trait Communicator: Send + Sync {
    /// This process's index, `0..world_size()`.
    fn rank(&self) -> usize;
    /// The number of processes.
    fn world_size(&self) -> usize;
    /// The device whose tensors this communicator moves (CPU for MPI, a GPU for NCCL).
    fn device(&self) -> Device;
    /// Starts combining `send` from every rank into `recv` with `op`. Both must be
    /// contiguous tensors of one shape and dtype on [`Communicator::device`], with distinct
    /// buffers.
    fn start_all_reduce(&self, send: &Tensor, recv: &Tensor, op: ReduceOp) -> Result<Work>;
    /// Starts copying `t` (contiguous, on [`Communicator::device`]) from rank `root` into
    /// `t` on every other rank.
    fn start_broadcast(&self, t: &Tensor, root: usize) -> Result<Work>;
    /// Returns when every rank has called it.
    fn barrier(&self) -> Result<()>;

    /// Combines `t` across ranks in place, after checking that every rank passed the same
    /// shape and dtype (a mismatch is an `Err` on every rank, not a hang or garbage).
    fn all_reduce(&self, t: &Tensor, op: ReduceOp) -> Result<()> {
        check_device(self, "all_reduce", t)?;
        let mut sig = vec![t.dtype() as i64, t.rank() as i64];
        sig.extend(t.dims().iter().map(|&d| d as i64));
        self.check_agree("all_reduce", "shape and dtype", &signature(&sig))?;
        if self.world_size() == 1 {
            return Ok(()); // one rank: sum, average, max and min of one value are the value
        }
        let send = t.contiguous()?.copy()?;
        let recv = send.zeros_like()?;
        self.start_all_reduce(&send, &recv, op)?.wait()?;
        t.write_from(&recv)
    }
    /// Copies `t` from rank `root` into `t` on every rank, in place.
    fn broadcast(&self, t: &Tensor, root: usize) -> Result<()> {
        check_device(self, "broadcast", t)?;
        if root >= self.world_size() {
            return Err(Error::Distributed {
                op: "broadcast",
                msg: format!("root {root} is not a rank of a world of {}", self.world_size()),
            });
        }
        if self.world_size() == 1 {
            return Ok(());
        }
        let buf = t.contiguous()?.copy()?;
        self.start_broadcast(&buf, root)?.wait()?;
        if self.rank() != root { t.write_from(&buf) } else { Ok(()) }
    }
    /// `Ok` when every rank passed the same `values`, else an `Err` on every rank naming
    /// `what` disagrees (shapes, parameter lists): one small all-reduce of the values and
    /// their negations with `Max`.
    fn check_agree(&self, op: &'static str, what: &str, values: &[i64]) -> Result<()> {
        if self.world_size() == 1 || values.is_empty() {
            return Ok(());
        }
        let n = values.len();
        let mut both: Vec<i64> = values.to_vec();
        both.extend(values.iter().map(|v| v.wrapping_neg()));
        let send = Tensor::from_vec(both, 2 * n, Device::Cpu)?.to_device(self.device())?;
        let recv = send.zeros_like()?;
        self.start_all_reduce(&send, &recv, ReduceOp::Max)?.wait()?;
        let r = recv.to_vec::<i64>()?;
        if (0..n).any(|i| r[i] != r[n + i].wrapping_neg()) {
            return Err(Error::Distributed {
                op,
                msg: format!("the ranks disagree on the {what} (rank {} of {})", self.rank(), self.world_size()),
            });
        }
        Ok(())
    }
}

fn check_device<C: Communicator + ?Sized>(c: &C, op: &'static str, t: &Tensor) -> Result<()> {
    if t.device() != c.device() {
        return Err(Error::DeviceMismatch { op, lhs: t.device(), rhs: c.device() });
    }
    Ok(())
}

/// A 64-bit FNV-1a digest of `values` (a few words per collective instead of every value).
pub(crate) fn signature(values: &[i64]) -> Vec<i64> {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for v in values {
        for b in v.to_le_bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    vec![h as i64, values.len() as i64]
}

/// The world of one process: every collective is the identity. What code written for
/// several ranks runs on when it is started without `mpirun`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Local {
    device: Device,
}

impl Local {
    /// The world of one process, for tensors on `device`.
    pub fn new(device: Device) -> Local {
        Local { device }
    }
}

impl Communicator for Local {
    fn rank(&self) -> usize {
        0
    }
    fn world_size(&self) -> usize {
        1
    }
    fn device(&self) -> Device {
        self.device
    }
    fn start_all_reduce(&self, send: &Tensor, recv: &Tensor, op: ReduceOp) -> Result<Work> {
        recv.write_from(send)?;
        let _ = op; // one rank: sum, average, max and min of one value are the value
        Ok(Work::done())
    }
    fn start_broadcast(&self, _t: &Tensor, _root: usize) -> Result<Work> {
        Ok(Work::done())
    }
    fn barrier(&self) -> Result<()> {
        Ok(())
    }
}
