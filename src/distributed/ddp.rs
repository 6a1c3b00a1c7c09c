//! Data-parallel training as PyTorch users know it (`DistributedDataParallel`): replicas
//! start equal (a broadcast from rank 0), each rank runs its shard of the batch, and the
//! gradients are averaged in buckets that start reducing while backward is still running.

use super::{Communicator, ReduceOp, Work, signature};
use crate::param::ParameterStore;
use crate::tensor::TensorId;
use crate::{DType, Error, Result, Tensor};
use std::collections::HashMap;
use std::sync::Arc;

/// PyTorch's default bucket size (25 MiB of gradients per all-reduce).
pub const DEFAULT_BUCKET_BYTES: usize = 25 << 20;

/// Gradients reduced by one collective: consecutive parameters of one dtype, packed into
/// one flat buffer.
struct Bucket {
    /// Indices into `params`, with each one's offset in the flat buffers.
    members: Vec<(usize, usize)>,
    send: Tensor,
    recv: Tensor,
    /// Members whose gradient this pass has completed.
    ready: usize,
    work: Option<Work>,
}

/// Keeps the replicas of a model equal across the ranks of a [`Communicator`].
///
/// Built from the [`ParameterStore`] of the model, it broadcasts every parameter and
/// buffer from rank 0, then [`DistributedDataParallel::backward`] replaces
/// `loss.backward()`: as backward completes each parameter's gradient, the parameter joins
/// its bucket (parameters in reverse creation order, about [`DEFAULT_BUCKET_BYTES`] each, the
/// order in which backward finishes them), and a full bucket starts its all-reduce at once,
/// so communication overlaps the rest of backward. Buckets start in one fixed order on
/// every rank; after backward each parameter's gradient is the average over the ranks.
///
/// A parameter that got no gradient in a step counts as a zero gradient (PyTorch's
/// `find_unused_parameters`), so ranks whose graphs differ still agree. Ranks that run
/// different numbers of steps get an `Err` at the collective's deadline rather than a hang;
/// [`crate::data::BatchIter::shard`] gives every rank the same number of batches.
///
/// ```
/// use std::sync::Arc;
/// use tensorforge::distributed::{DistributedDataParallel, Local};
/// use tensorforge::param::{Init, ParameterStore};
/// use tensorforge::Device;
/// let mut store = ParameterStore::new(Device::Cpu);
/// let w = store.get_or_init("w", (2,), Init::Ones)?;
/// let mut ddp = DistributedDataParallel::new(Arc::new(Local::new(Device::Cpu)), &store)?;
/// ddp.backward(&w.sqr()?.sum_all()?)?;
/// assert_eq!(w.grad().unwrap().to_vec1::<f32>()?, vec![2., 2.]);
/// # Ok::<(), tensorforge::Error>(())
/// ```
pub struct DistributedDataParallel {
    comm: Arc<dyn Communicator>,
    params: Vec<Tensor>,
    /// The bucket of each parameter, by tensor id.
    slot: HashMap<TensorId, usize>,
    buckets: Vec<Bucket>,
    sync: bool,
}

impl DistributedDataParallel {
    /// Wraps the model whose parameters `store` holds, with buckets of
    /// [`DEFAULT_BUCKET_BYTES`]. Every rank must call it with the same parameters.
    pub fn new(comm: Arc<dyn Communicator>, store: &ParameterStore) -> Result<Self> {
        Self::with_bucket_bytes(comm, store, DEFAULT_BUCKET_BYTES)
    }

    /// [`DistributedDataParallel::new`] with buckets of about `bucket_bytes` (at least one
    /// parameter each; 0 gives one bucket per parameter).
    pub fn with_bucket_bytes(comm: Arc<dyn Communicator>, store: &ParameterStore, bucket_bytes: usize) -> Result<Self> {
        let named = store.named_tensors();
        if named.is_empty() {
            return Err(Error::Distributed {
                op: "init",
                msg: "the parameter store is empty: nothing to train".into(),
            });
        }
        for (name, t) in &named {
            if t.device() != comm.device() {
                return Err(Error::Distributed {
                    op: "init",
                    msg: format!(
                        "`{name}` is on {:?} but the communicator moves {:?} tensors",
                        t.device(),
                        comm.device()
                    ),
                });
            }
        }
        // Every rank must hold the same parameters: names, shapes and dtypes, in order.
        let mut sig = Vec::new();
        for (name, t) in &named {
            sig.extend(name.bytes().map(i64::from));
            sig.push(t.dtype() as i64);
            sig.extend(t.dims().iter().map(|&d| d as i64));
            sig.push(-1);
        }
        comm.check_agree("init", "parameter names, shapes and dtypes", &signature(&sig))?;
        // Equal replicas: rank 0's values everywhere (buffers too, e.g. running statistics).
        for (_, t) in &named {
            comm.broadcast(t, 0)?;
        }

        let params = store.parameters();
        let mut buckets: Vec<Bucket> = Vec::new();
        let mut slot = HashMap::new();
        let (mut members, mut bytes, mut dtype) = (Vec::new(), 0usize, None::<DType>);
        let device = comm.device();
        let flush = |members: &mut Vec<(usize, usize)>, dtype: DType, buckets: &mut Vec<Bucket>| -> Result<()> {
            let len = members.last().map_or(0, |&(i, off): &(usize, usize)| off + params[i].elem_count());
            let send = Tensor::zeros(len, dtype, device)?;
            let recv = Tensor::zeros(len, dtype, device)?;
            buckets.push(Bucket { members: std::mem::take(members), send, recv, ready: 0, work: None });
            Ok(())
        };
        // Reverse creation order: the order in which backward completes the gradients.
        for (i, p) in params.iter().enumerate().rev() {
            let size = p.elem_count() * p.dtype().size_in_bytes();
            if let Some(d) = dtype
                && (d != p.dtype() || (bytes > 0 && bytes + size > bucket_bytes))
            {
                flush(&mut members, d, &mut buckets)?;
                bytes = 0;
            }
            let off = members.last().map_or(0, |&(j, off): &(usize, usize)| off + params[j].elem_count());
            slot.insert(p.id(), buckets.len());
            members.push((i, off));
            bytes += size;
            dtype = Some(p.dtype());
        }
        if let Some(d) = dtype {
            flush(&mut members, d, &mut buckets)?;
        }
        Ok(DistributedDataParallel { comm, params, slot, buckets, sync: true })
    }

    /// The communicator.
    pub fn comm(&self) -> &Arc<dyn Communicator> {
        &self.comm
    }
    /// This process's rank.
    pub fn rank(&self) -> usize {
        self.comm.rank()
    }
    /// The number of ranks.
    pub fn world_size(&self) -> usize {
        self.comm.world_size()
    }
    /// True on rank 0, the rank that prints and writes files.
    pub fn is_main(&self) -> bool {
        self.comm.rank() == 0
    }
    /// The number of buckets (gradient all-reduces per step).
    pub fn num_buckets(&self) -> usize {
        self.buckets.len()
    }

    /// Runs `f` with gradient averaging off: backward only accumulates locally, and the
    /// next synchronized backward averages the sum (gradient accumulation, PyTorch's
    /// `no_sync`).
    pub fn no_sync<R>(&mut self, f: impl FnOnce(&mut Self) -> R) -> R {
        let prev = std::mem::replace(&mut self.sync, false);
        let r = f(self);
        self.sync = prev;
        r
    }

    /// `loss.backward()`, then every parameter's gradient averaged over the ranks, the
    /// reductions overlapping backward.
    pub fn backward(&mut self, loss: &Tensor) -> Result<()> {
        if !self.sync || self.comm.world_size() == 1 {
            return loss.backward();
        }
        for b in &mut self.buckets {
            b.ready = 0;
            b.work = None;
        }
        let mut next = 0usize;
        let (comm, params, slot, buckets) = (&*self.comm, &self.params, &self.slot, &mut self.buckets);
        let result = loss.backward_with_hook(&mut |v| {
            if let Some(&b) = slot.get(&v.id()) {
                buckets[b].ready += 1;
                while next < buckets.len() && buckets[next].ready == buckets[next].members.len() {
                    launch(comm, params, &mut buckets[next])?;
                    next += 1;
                }
            }
            // Non-blocking collectives advance inside the transport's calls.
            for b in buckets[..next].iter_mut() {
                if let Some(w) = &mut b.work {
                    w.test()?;
                }
            }
            Ok(())
        });
        // The rest (parameters without a gradient this pass) still go, in the same order, so
        // every rank runs the same collectives even after an error here.
        let mut first_err = result.err();
        for b in &mut buckets[next..] {
            if let Err(e) = launch(comm, params, b) {
                first_err.get_or_insert(e);
            }
        }
        for b in buckets.iter_mut() {
            if let Some(w) = b.work.take()
                && let Err(e) = w.wait()
            {
                first_err.get_or_insert(e);
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        for b in buckets.iter() {
            for &(i, off) in &b.members {
                let p = &params[i];
                p.set_grad(Some(b.recv.narrow(0, off, p.elem_count())?.reshape(p.shape().clone())?))?;
            }
        }
        Ok(())
    }
}

/// Packs a bucket's gradients (zeros for a parameter without one) and starts its average.
fn launch(comm: &dyn Communicator, params: &[Tensor], b: &mut Bucket) -> Result<()> {
    for &(i, off) in &b.members {
        let p = &params[i];
        let dst = b.send.narrow(0, off, p.elem_count())?;
        match p.grad() {
            Some(g) => dst.write_from(&g.reshape(p.elem_count())?)?,
            None => dst.write_from(&Tensor::zeros(p.elem_count(), p.dtype(), p.device())?)?,
        }
    }
    b.work = Some(comm.start_all_reduce(&b.send, &b.recv, ReduceOp::Average)?);
    Ok(())
}
