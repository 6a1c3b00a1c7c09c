//! [`Mpi`]: the communicator for CPU tensors, over the system's MPI library (OpenMPI,
//! MPICH) through the `mpi` crate's raw bindings.
//!
//! Every collective is MPI's non-blocking form (`MPI_Iallreduce`, `MPI_Ibcast`,
//! `MPI_Ibarrier`) finished by polling `MPI_Test` against a deadline, so a lost peer is an
//! `Err` after the timeout instead of a process blocked forever in `MPI_Allreduce`, and a
//! bucket of gradients progresses while backward goes on. MPI's errors are returned, not
//! fatal (`MPI_ERRORS_RETURN`), and become [`Error::Distributed`].

use super::{Communicator, PendingWork, ReduceOp, Work, timeout_from_env};
use crate::storage::Storage;
use crate::{DType, Device, Error, Result, Tensor};
use mpi::ffi;
use std::os::raw::{c_int, c_void};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// One process of an MPI job (`mpirun -np N program`): rank and world size come from the
/// launcher. Only one may exist per process (MPI is initialized once); dropping it
/// finalizes MPI.
///
/// The calls into MPI are serialized by a lock, so an `Mpi` may be shared between threads
/// (MPI runs in its `MPI_THREAD_SERIALIZED` mode).
pub struct Mpi {
    rank: usize,
    size: usize,
    lock: Arc<Mutex<()>>,
    timeout: Duration,
    // Last: finalizes MPI when the communicator goes.
    _universe: mpi::environment::Universe,
}

// SAFETY: every MPI call made through an `Mpi` holds `lock`, and MPI was initialized with
// `MPI_THREAD_SERIALIZED`, which allows calls from any thread one at a time. The universe
// only finalizes on drop.
unsafe impl Send for Mpi {}
unsafe impl Sync for Mpi {}

fn err(op: &'static str, msg: impl Into<String>) -> Error {
    Error::Distributed { op, msg: msg.into() }
}

/// `Ok` for `MPI_SUCCESS`, else MPI's own description of the error code.
fn check(op: &'static str, rc: c_int) -> Result<()> {
    if rc == 0 {
        return Ok(());
    }
    let mut buf = vec![0u8; 512];
    let mut len: c_int = 0;
    // SAFETY: MPI writes at most MPI_MAX_ERROR_STRING (≤ 512 in OpenMPI and MPICH) bytes.
    unsafe { ffi::MPI_Error_string(rc, buf.as_mut_ptr().cast(), &mut len) };
    buf.truncate(len.clamp(0, 512) as usize);
    Err(err(op, format!("MPI error {rc}: {}", String::from_utf8_lossy(&buf))))
}

impl Mpi {
    /// Initializes MPI (the job's launcher gives rank and size). `Err` when MPI was
    /// already initialized in this process. The collectives' deadline is
    /// [`super::DEFAULT_TIMEOUT`] unless `TENSORFORGE_DIST_TIMEOUT` sets it.
    pub fn init() -> Result<Mpi> {
        let (universe, threading) = mpi::initialize_with_threading(mpi::Threading::Serialized)
            .ok_or_else(|| err("init", "MPI is already initialized in this process (one Mpi per process)"))?;
        if threading < mpi::Threading::Serialized {
            return Err(err(
                "init",
                format!("the MPI library offers only {threading:?} threading; Serialized is needed"),
            ));
        }
        let (mut rank, mut size): (c_int, c_int) = (0, 0);
        // SAFETY: MPI is initialized; the world communicator and error handler are MPI's constants.
        unsafe {
            check("init", ffi::MPI_Comm_set_errhandler(ffi::RSMPI_COMM_WORLD, ffi::RSMPI_ERRORS_RETURN))?;
            check("init", ffi::MPI_Comm_rank(ffi::RSMPI_COMM_WORLD, &mut rank))?;
            check("init", ffi::MPI_Comm_size(ffi::RSMPI_COMM_WORLD, &mut size))?;
        }
        Ok(Mpi {
            rank: rank as usize,
            size: size as usize,
            lock: Arc::new(Mutex::new(())),
            timeout: timeout_from_env(),
            _universe: universe,
        })
    }

    /// The same communicator with another deadline for each collective.
    pub fn with_timeout(mut self, timeout: Duration) -> Mpi {
        self.timeout = timeout;
        self
    }

    /// True when this process was started by an MPI launcher (`mpirun`, `srun`), judged by
    /// the environment it sets: how a program chooses between [`Mpi`] and
    /// [`super::Local`] before initializing anything.
    pub fn launched() -> bool {
        ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS"]
            .iter()
            .any(|v| std::env::var_os(v).is_some())
    }

    fn locked(&self) -> MutexGuard<'_, ()> {
        self.lock.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn pending(&self, op: &'static str, req: ffi::MPI_Request, keep: Vec<Tensor>, after: After) -> Work {
        Work::pending(Box::new(MpiWork {
            op,
            req,
            lock: self.lock.clone(),
            started: Instant::now(),
            timeout: self.timeout,
            _keep: keep,
            after: Some(after),
        }))
    }
}

/// The element types MPI collectives carry here (halves widened to f32 for reductions).
fn supported(dtype: DType) -> bool {
    matches!(dtype, DType::F32 | DType::F64 | DType::F16 | DType::BF16 | DType::I64 | DType::U8)
}

/// The MPI datatype of a dtype's elements (f16/bf16 travel as f32 for reductions).
fn datatype(dtype: DType) -> Result<ffi::MPI_Datatype> {
    // SAFETY: reading MPI's predefined datatype handles.
    Ok(unsafe {
        match dtype {
            DType::F32 => ffi::RSMPI_FLOAT,
            DType::F64 => ffi::RSMPI_DOUBLE,
            DType::I64 => ffi::RSMPI_INT64_T,
            DType::U8 => ffi::RSMPI_UINT8_T,
            d => return Err(Error::UnsupportedDType { op: "mpi", dtype: d }),
        }
    })
}

fn mpi_op(op: ReduceOp) -> ffi::MPI_Op {
    // SAFETY: reading MPI's predefined operation handles.
    unsafe {
        match op {
            ReduceOp::Sum | ReduceOp::Average => ffi::RSMPI_SUM,
            ReduceOp::Max => ffi::RSMPI_MAX,
            ReduceOp::Min => ffi::RSMPI_MIN,
        }
    }
}

/// The address of a contiguous CPU tensor's first element. The pointer stays valid while
/// the tensor lives and nothing reallocates its storage: the caller keeps the tensor in
/// the pending collective and no one else holds it.
fn address(op: &'static str, t: &Tensor) -> Result<*mut c_void> {
    let (start, _) = t.layout().contiguous_range().ok_or_else(|| err(op, "needs a contiguous tensor"))?;
    let mut s = t.storage_mut();
    match &mut *s {
        Storage::Cpu(c) => {
            crate::backend::cpu::with_vec!(c, v => Ok(v[start..].as_mut_ptr().cast::<c_void>()))
        }
        #[allow(unreachable_patterns)] // without the `cuda` feature there is one variant
        _ => Err(Error::DeviceMismatch { op, lhs: t.device(), rhs: Device::Cpu }),
    }
}

fn count(op: &'static str, n: usize) -> Result<c_int> {
    c_int::try_from(n).map_err(|_| err(op, format!("{n} elements exceed MPI's count limit ({})", c_int::MAX)))
}

/// After a sum: divides by the world size for `Average` (floats only).
fn average_in_place(t: &Tensor, op: ReduceOp, world: usize) -> Result<()> {
    if op != ReduceOp::Average || world == 1 {
        return Ok(());
    }
    if !t.dtype().is_float() {
        return Err(Error::UnsupportedDType { op: "all_reduce(Average)", dtype: t.dtype() });
    }
    let scaled = crate::no_grad(|| t.affine(1.0 / world as f64, 0.0))?;
    t.write_from(&scaled)
}

/// What to do with the output once MPI is done with it.
enum After {
    Nothing,
    /// Divide by the world size (an average).
    Scale(Tensor, usize),
    /// Convert the f32 result into the half-precision output.
    Narrow {
        wide: Tensor,
        out: Tensor,
        op: ReduceOp,
        world: usize,
    },
}

struct MpiWork {
    op: &'static str,
    req: ffi::MPI_Request,
    lock: Arc<Mutex<()>>,
    started: Instant,
    timeout: Duration,
    /// The buffers MPI reads and writes, alive until it completes.
    _keep: Vec<Tensor>,
    after: Option<After>,
}

// SAFETY: the request handle is used only under `lock` (MPI_THREAD_SERIALIZED), and the
// buffers it points into are owned by `keep`.
unsafe impl Send for MpiWork {}

impl MpiWork {
    fn finish(&mut self) -> Result<()> {
        match self.after.take() {
            None | Some(After::Nothing) => Ok(()),
            Some(After::Scale(t, world)) => average_in_place(&t, ReduceOp::Average, world),
            Some(After::Narrow { wide, out, op, world }) => {
                average_in_place(&wide, op, world)?;
                out.write_from(&wide)
            }
        }
    }
}

impl PendingWork for MpiWork {
    fn test(&mut self) -> Result<bool> {
        if self.after.is_none() {
            return Ok(true);
        }
        let mut flag: c_int = 0;
        {
            let _g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
            // SAFETY: `req` came from a non-blocking collective that has not completed yet.
            check(self.op, unsafe { ffi::MPI_Test(&mut self.req, &mut flag, ffi::RSMPI_STATUS_IGNORE) })?;
        }
        if flag == 0 {
            return Ok(false);
        }
        self.finish()?;
        Ok(true)
    }

    fn wait(mut self: Box<Self>) -> Result<()> {
        let mut polls = 0u32;
        loop {
            if self.test()? {
                return Ok(());
            }
            if self.started.elapsed() > self.timeout {
                let (op, t) = (self.op, self.timeout);
                // MPI may still write into the buffers: they must outlive this process's use
                // of MPI, so they are leaked rather than freed.
                Box::leak(self);
                return Err(err(
                    op,
                    format!(
                        "no completion after {t:?}: a rank has died, returned an error, or is running \
                         different collectives (uneven batch counts?); TENSORFORGE_DIST_TIMEOUT sets the deadline"
                    ),
                ));
            }
            polls += 1;
            // Spin briefly (shared-memory peers answer in microseconds), then stop burning the
            // core a compute thread may want.
            if polls > 1000 {
                std::thread::sleep(Duration::from_micros(50));
            } else {
                std::hint::spin_loop();
            }
        }
    }
}

impl Communicator for Mpi {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world_size(&self) -> usize {
        self.size
    }
    fn device(&self) -> Device {
        Device::Cpu
    }

    fn start_all_reduce(&self, send: &Tensor, recv: &Tensor, op: ReduceOp) -> Result<Work> {
        const OP: &str = "all_reduce";
        if send.shape() != recv.shape() || send.dtype() != recv.dtype() {
            return Err(Error::ShapeMismatch { op: OP, lhs: send.shape().clone(), rhs: recv.shape().clone() });
        }
        if !supported(send.dtype()) {
            return Err(Error::UnsupportedDType { op: OP, dtype: send.dtype() });
        }
        if send.same_storage(recv) {
            return Err(err(OP, "send and recv must be distinct buffers"));
        }
        if op == ReduceOp::Average && !send.dtype().is_float() {
            return Err(Error::UnsupportedDType { op: "all_reduce(Average)", dtype: send.dtype() });
        }
        // MPI has no 16-bit float: halves are reduced in f32 and rounded once at the end.
        let (s, r, after) = match send.dtype() {
            DType::F16 | DType::BF16 => {
                let wide = recv.to_dtype(DType::F32)?;
                let after = After::Narrow { wide: wide.clone(), out: recv.clone(), op, world: self.size };
                (send.to_dtype(DType::F32)?, wide, after)
            }
            _ if op == ReduceOp::Average => (send.clone(), recv.clone(), After::Scale(recv.clone(), self.size)),
            _ => (send.clone(), recv.clone(), After::Nothing),
        };
        let n = count(OP, s.elem_count())?;
        let dt = datatype(s.dtype())?;
        let (sp, rp) = (address(OP, &s)?, address(OP, &r)?);
        let mut req: ffi::MPI_Request = unsafe { ffi::RSMPI_REQUEST_NULL };
        {
            let _g = self.locked();
            // SAFETY: both buffers hold `n` elements of `dt` and stay alive (and untouched)
            // in the returned work until MPI completes.
            check(OP, unsafe { ffi::MPI_Iallreduce(sp, rp, n, dt, mpi_op(op), ffi::RSMPI_COMM_WORLD, &mut req) })?;
        }
        Ok(self.pending(OP, req, vec![s, r], after))
    }

    fn start_broadcast(&self, t: &Tensor, root: usize) -> Result<Work> {
        const OP: &str = "broadcast";
        if root >= self.size {
            return Err(err(OP, format!("root {root} is not a rank of a world of {}", self.size)));
        }
        // Bytes: a broadcast copies, so any dtype travels as its bytes.
        let n = count(OP, t.elem_count() * t.dtype().size_in_bytes())?;
        let p = address(OP, t)?;
        let mut req: ffi::MPI_Request = unsafe { ffi::RSMPI_REQUEST_NULL };
        {
            let _g = self.locked();
            // SAFETY: `t` holds `n` bytes and stays alive in the returned work.
            check(OP, unsafe {
                ffi::MPI_Ibcast(p, n, ffi::RSMPI_UINT8_T, root as c_int, ffi::RSMPI_COMM_WORLD, &mut req)
            })?;
        }
        Ok(self.pending(OP, req, vec![t.clone()], After::Nothing))
    }

    fn barrier(&self) -> Result<()> {
        let mut req: ffi::MPI_Request = unsafe { ffi::RSMPI_REQUEST_NULL };
        {
            let _g = self.locked();
            // SAFETY: a barrier has no buffers.
            check("barrier", unsafe { ffi::MPI_Ibarrier(ffi::RSMPI_COMM_WORLD, &mut req) })?;
        }
        self.pending("barrier", req, Vec::new(), After::Nothing).wait()
    }
}
