//! [`Nccl`]: the communicator for CUDA tensors, one rank per GPU, over NVIDIA's NCCL
//! (loaded at run time through cudarc), bootstrapped by a CPU communicator: [`super::Mpi`]
//! across processes, or [`super::Local`] for one rank.
//!
//! The collectives are queued on the device's one stream, in order with the kernels, so a
//! reduction is complete for every later op on that device without a host wait, and the
//! returned [`Work`] is already done. A host wait happens at the next copy to the host or
//! [`Communicator::barrier`].

use super::{Communicator, ReduceOp, Work};
use crate::backend::cuda::CudaDevice;
use crate::storage::Storage;
use crate::{DType, Device, Error, Result, Tensor};
use cudarc::nccl::{result, sys};
use std::ffi::c_void;
use std::sync::{Arc, Mutex};

fn err(op: &'static str, msg: impl Into<String>) -> Error {
    Error::Distributed { op, msg: msg.into() }
}

fn nccl_err(op: &'static str, e: result::NcclError) -> Error {
    // SAFETY: NCCL returns a static string for every result code.
    let text = unsafe { std::ffi::CStr::from_ptr(sys::ncclGetErrorString(e.0)) };
    err(op, format!("NCCL: {} ({:?})", text.to_string_lossy(), e.0))
}

/// What to install when cudarc finds no NCCL library.
const MISSING: &str = "the NCCL library was not found. cudarc looks for libnccl.so (and \
libnccl.so.<CUDA major>), not NCCL's own libnccl.so.2: install NVIDIA's libnccl-dev (it provides \
libnccl.so), or link libnccl.so to libnccl.so.2 (pip's nvidia-nccl-cu13 ships one) in a directory \
on LD_LIBRARY_PATH";

/// One rank per GPU: all-reduce and broadcast of CUDA tensors through NCCL. Rank, world
/// size and the NCCL unique id come from a CPU communicator (the MPI job of
/// `mpirun -np <GPUs> program`).
pub struct Nccl {
    bootstrap: Arc<dyn Communicator>,
    device: Arc<CudaDevice>,
    ordinal: usize,
    comm: sys::ncclComm_t,
    stream: sys::cudaStream_t,
    /// NCCL calls on one communicator must not run concurrently.
    lock: Mutex<()>,
}

// SAFETY: the communicator and stream handles are used only under `lock`; NCCL allows a
// communicator to be used from any thread, one call at a time.
unsafe impl Send for Nccl {}
unsafe impl Sync for Nccl {}

impl Nccl {
    /// Joins the NCCL communicator of all the ranks of `bootstrap` (a CPU communicator:
    /// [`super::Mpi`], or [`super::Local`] for one rank), this one on `device`
    /// (`Device::Cuda(n)`; usually `n` = the rank's index on its node). Every rank must call
    /// it. `Err` on every rank when any of them lacks NCCL or a real CUDA device.
    pub fn init(bootstrap: Arc<dyn Communicator>, device: Device) -> Result<Nccl> {
        if bootstrap.device() != Device::Cpu {
            return Err(err("init", "the bootstrap communicator must move CPU tensors (Mpi or Local)"));
        }
        let Device::Cuda(ordinal) = device else {
            return Err(err("init", format!("NCCL moves CUDA tensors; {device:?} is not a CUDA device")));
        };
        // Checked on every rank before any of them waits on the others.
        let local = (|| -> Result<(Arc<CudaDevice>, sys::cudaStream_t)> {
            // SAFETY: only tries to dlopen libnccl under cudarc's candidate names.
            if !unsafe { sys::is_culib_present() } {
                return Err(err("init", MISSING));
            }
            let dev = CudaDevice::get(ordinal)?;
            match dev.raw_stream()? {
                Some(s) => Ok((dev, s.cast())),
                None => Err(err("init", "the CUDA emulator has no NCCL: it needs a real GPU")),
            }
        })();
        let failed = Tensor::from_vec(vec![i64::from(local.is_err())], 1, Device::Cpu)?;
        bootstrap.all_reduce(&failed, ReduceOp::Max)?;
        let (dev, stream) = local?;
        if failed.to_vec1::<i64>()?[0] != 0 {
            return Err(err("init", "another rank has no NCCL or no usable CUDA device (see its error)"));
        }
        // Rank 0's unique id reaches the others by an MPI broadcast of its 128 bytes.
        let id = if bootstrap.rank() == 0 {
            result::get_uniqueid().map_err(|e| nccl_err("init", e))?
        } else {
            sys::ncclUniqueId { internal: [0; 128] }
        };
        let bytes = Tensor::from_vec(id.internal.map(|c| c as u8).to_vec(), 128, Device::Cpu)?;
        bootstrap.broadcast(&bytes, 0)?;
        let mut internal = [0 as std::ffi::c_char; 128];
        for (d, s) in internal.iter_mut().zip(bytes.to_vec::<u8>()?) {
            *d = s as std::ffi::c_char;
        }
        let id = sys::ncclUniqueId { internal };
        let mut comm: sys::ncclComm_t = std::ptr::null_mut();
        // SAFETY: `comm` receives the new communicator; every rank passes the same id.
        unsafe { result::comm_init_rank(&mut comm, bootstrap.world_size() as i32, id, bootstrap.rank() as i32) }
            .map_err(|e| nccl_err("init", e))?;
        Ok(Nccl { bootstrap, device: dev, ordinal, comm, stream, lock: Mutex::new(()) })
    }

    fn cuda_ptr(&self, op: &'static str, t: &Tensor) -> Result<*mut c_void> {
        let (start, _) = t.layout().contiguous_range().ok_or_else(|| err(op, "needs a contiguous tensor"))?;
        let s = t.storage();
        match &*s {
            Storage::Cuda(c) => Ok((c.ptr() + (start * t.dtype().size_in_bytes()) as u64) as *mut c_void),
            _ => Err(Error::DeviceMismatch { op, lhs: t.device(), rhs: Device::Cuda(self.ordinal) }),
        }
    }
}

impl Drop for Nccl {
    fn drop(&mut self) {
        let _ = self.device.synchronize_stream();
        // SAFETY: the communicator is ours and no call on it is in flight after the sync.
        let _ = unsafe { result::comm_destroy(self.comm) };
    }
}

fn datatype(dtype: DType) -> sys::ncclDataType_t {
    match dtype {
        DType::F32 => sys::ncclDataType_t::ncclFloat32,
        DType::F64 => sys::ncclDataType_t::ncclFloat64,
        DType::F16 => sys::ncclDataType_t::ncclFloat16,
        DType::BF16 => sys::ncclDataType_t::ncclBfloat16,
        DType::I64 => sys::ncclDataType_t::ncclInt64,
        DType::U8 => sys::ncclDataType_t::ncclUint8,
    }
}

impl Communicator for Nccl {
    fn rank(&self) -> usize {
        self.bootstrap.rank()
    }
    fn world_size(&self) -> usize {
        self.bootstrap.world_size()
    }
    fn device(&self) -> Device {
        Device::Cuda(self.ordinal)
    }

    fn start_all_reduce(&self, send: &Tensor, recv: &Tensor, op: ReduceOp) -> Result<Work> {
        const OP: &str = "all_reduce";
        if send.shape() != recv.shape() || send.dtype() != recv.dtype() {
            return Err(Error::ShapeMismatch { op: OP, lhs: send.shape().clone(), rhs: recv.shape().clone() });
        }
        if op == ReduceOp::Average && !send.dtype().is_float() {
            return Err(Error::UnsupportedDType { op: "all_reduce(Average)", dtype: send.dtype() });
        }
        let (sp, rp) = (self.cuda_ptr(OP, send)?, self.cuda_ptr(OP, recv)?);
        let red = match op {
            ReduceOp::Sum => sys::ncclRedOp_t::ncclSum,
            ReduceOp::Average => sys::ncclRedOp_t::ncclAvg,
            ReduceOp::Max => sys::ncclRedOp_t::ncclMax,
            ReduceOp::Min => sys::ncclRedOp_t::ncclMin,
        };
        let _g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.device.raw_stream()?;
        // SAFETY: both buffers hold `elem_count` elements of the dtype on this device, and
        // the collective is queued on the stream every later use of them is queued on.
        unsafe { result::all_reduce(sp, rp, send.elem_count(), datatype(send.dtype()), red, self.comm, self.stream) }
            .map_err(|e| nccl_err(OP, e))?;
        Ok(Work::done())
    }

    fn start_broadcast(&self, t: &Tensor, root: usize) -> Result<Work> {
        const OP: &str = "broadcast";
        if root >= self.world_size() {
            return Err(err(OP, format!("root {root} is not a rank of a world of {}", self.world_size())));
        }
        let p = self.cuda_ptr(OP, t)?;
        let _g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.device.raw_stream()?;
        // SAFETY: `t` holds `elem_count` elements on this device; queued on its stream.
        unsafe { result::broadcast(p, p, t.elem_count(), datatype(t.dtype()), root as i32, self.comm, self.stream) }
            .map_err(|e| nccl_err(OP, e))?;
        Ok(Work::done())
    }

    /// Waits for this GPU's queued work, then for every rank (over the bootstrap
    /// communicator, with its deadline).
    fn barrier(&self) -> Result<()> {
        self.device.synchronize_stream()?;
        self.bootstrap.barrier()
    }
}
