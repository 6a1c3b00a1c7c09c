//! The tape: operations record their inputs on the output tensor when an input requires a
//! gradient; `backward` walks the recorded graph in reverse topological order.

use crate::tensor::TensorId;
use crate::{Error, Result, Tensor};
use std::cell::Cell;
use std::collections::{HashMap, HashSet};

/// A differentiable operation: `forward` computes the output, `backward` receives the
/// output's gradient and *accumulates* into the inputs' gradients (never overwrites).
///
/// Implementing this trait is how a new op joins autograd; [`apply`] runs it.
pub trait Operation: Send + Sync + 'static {
    /// A name for error messages and debugging.
    fn name(&self) -> &str;
    /// Computes the output from the inputs (called with recording off).
    fn forward(&self, inputs: &[&Tensor]) -> Result<Tensor>;
    /// Adds each input's gradient to `grads`, given `grad` (the gradient of `output`).
    /// Runs with recording off, so it may use any tensor op.
    fn backward(&self, inputs: &[Tensor], output: &Tensor, grad: &Tensor, grads: &mut Gradients) -> Result<()>;
}

/// How a tensor was computed: the op and its inputs.
pub(crate) struct Node {
    pub(crate) op: Box<dyn Operation>,
    pub(crate) inputs: Vec<Tensor>,
}

thread_local! {
    static GRAD_ENABLED: Cell<bool> = const { Cell::new(true) };
}

/// True unless inside [`no_grad`].
pub fn is_grad_enabled() -> bool {
    GRAD_ENABLED.with(|g| g.get())
}

/// Runs `f` without recording operations (evaluation, optimizer updates).
///
/// ```
/// use tensorforge::{Tensor, no_grad};
/// let w = Tensor::ones((2,), tensorforge::DType::F32, tensorforge::Device::Cpu).unwrap().requires_grad();
/// let y = no_grad(|| w.exp()).unwrap();
/// assert!(!y.tracks_grad());
/// ```
pub fn no_grad<R>(f: impl FnOnce() -> R) -> R {
    let prev = GRAD_ENABLED.with(|g| g.replace(false));
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            GRAD_ENABLED.with(|g| g.set(self.0));
        }
    }
    let _restore = Restore(prev);
    f()
}

/// Runs `op` on `inputs` and, when recording and some input tracks gradients, records it.
pub fn apply(op: impl Operation, inputs: &[&Tensor]) -> Result<Tensor> {
    let out = crate::profile::timed(op.name(), "forward", || no_grad(|| op.forward(inputs)))?;
    if is_grad_enabled() && inputs.iter().any(|t| t.tracks_grad()) {
        let node = Node { op: Box::new(op), inputs: inputs.iter().map(|t| (*t).clone()).collect() };
        return Ok(out.with_node(node));
    }
    Ok(out)
}

/// An operation with several outputs (a value and its indices, a normalization and its
/// statistics). [`apply_multi`] runs it; each output joins the graph, and `backward` runs once
/// with the gradients of all of them.
pub trait MultiOperation: Send + Sync + 'static {
    /// A name for error messages and debugging.
    fn name(&self) -> &str;
    /// Computes the outputs from the inputs (called with recording off).
    fn forward(&self, inputs: &[&Tensor]) -> Result<Vec<Tensor>>;
    /// Adds each input's gradient to `grads`, given the outputs' gradients (`None` for an
    /// output the loss does not depend on). Runs with recording off.
    fn backward(
        &self,
        inputs: &[Tensor],
        outputs: &[Tensor],
        output_grads: &[Option<Tensor>],
        grads: &mut Gradients,
    ) -> Result<()>;
}

/// Runs `op` on `inputs`; when recording and some input tracks gradients, records it.
///
/// The outputs hang off one hidden empty tensor (the *hub*) whose node is the op: each
/// output's own node only hands its gradient to the hub, and reverse topological order
/// reaches the hub after every output, so the op's backward runs once with all of them.
pub fn apply_multi(op: impl MultiOperation, inputs: &[&Tensor]) -> Result<Vec<Tensor>> {
    let outs = crate::profile::timed(op.name(), "forward", || no_grad(|| op.forward(inputs)))?;
    if !(is_grad_enabled() && inputs.iter().any(|t| t.tracks_grad())) {
        return Ok(outs);
    }
    let inputs: Vec<Tensor> = inputs.iter().map(|t| (*t).clone()).collect();
    if let [out] = &outs[..] {
        // One output needs no hub.
        let node = Node { op: Box::new(Single(op)), inputs };
        return Ok(vec![out.clone().with_node(node)]);
    }
    // Detached copies: the hub must not own the outputs that own it.
    let joint = Joint { op: Box::new(op), outputs: outs.iter().map(Tensor::detach).collect() };
    let hub = Tensor::hub().with_node(Node { op: Box::new(joint), inputs });
    let n = outs.len();
    // Integer outputs (indices) carry no gradient and are not recorded.
    Ok(outs
        .into_iter()
        .enumerate()
        .map(|(index, o)| {
            if o.dtype().is_float() {
                o.with_node(Node { op: Box::new(Pick { index, of: n }), inputs: vec![hub.clone()] })
            } else {
                o
            }
        })
        .collect())
}

/// `forward` of the nodes below: they are recorded after their op ran, never run again.
fn never_forward() -> Result<Tensor> {
    Err(Error::Autograd("a recorded multi-output node is never run forward".into()))
}

struct Single<O>(O);
impl<O: MultiOperation> Operation for Single<O> {
    fn name(&self) -> &str {
        self.0.name()
    }
    fn forward(&self, _: &[&Tensor]) -> Result<Tensor> {
        never_forward()
    }
    fn backward(&self, inputs: &[Tensor], output: &Tensor, grad: &Tensor, grads: &mut Gradients) -> Result<()> {
        self.0.backward(inputs, std::slice::from_ref(output), &[Some(grad.clone())], grads)
    }
}

struct Joint {
    op: Box<dyn MultiOperation>,
    outputs: Vec<Tensor>,
}
impl Operation for Joint {
    fn name(&self) -> &str {
        self.op.name()
    }
    fn forward(&self, _: &[&Tensor]) -> Result<Tensor> {
        never_forward()
    }
    fn backward(&self, inputs: &[Tensor], hub: &Tensor, _: &Tensor, grads: &mut Gradients) -> Result<()> {
        let gs = grads.outputs.remove(&hub.id()).unwrap_or_default();
        self.op.backward(inputs, &self.outputs, &gs, grads)
    }
}

/// Output `index` of `of`: hands its gradient to the hub (its one input).
struct Pick {
    index: usize,
    of: usize,
}
impl Operation for Pick {
    fn name(&self) -> &str {
        "multi_output"
    }
    fn forward(&self, _: &[&Tensor]) -> Result<Tensor> {
        never_forward()
    }
    fn backward(&self, inputs: &[Tensor], _: &Tensor, grad: &Tensor, grads: &mut Gradients) -> Result<()> {
        let hub = &inputs[0];
        let slots = grads.outputs.entry(hub.id()).or_insert_with(|| vec![None; self.of]);
        slots[self.index] = Some(grad.clone());
        // The hub's own "gradient" is only the mark that makes the pass visit it.
        grads.map.entry(hub.id()).or_insert_with(|| hub.detach());
        Ok(())
    }
}

/// Gradients being accumulated during one backward pass, by tensor.
#[derive(Default)]
pub struct Gradients {
    map: HashMap<TensorId, Tensor>,
    /// Gradients this pass allocated itself (sums, scattered slices): no one else holds
    /// them, so slice gradients may be added into them in place.
    owned: HashSet<TensorId>,
    /// The outputs' gradients of multi-output ops, by hub, until the hub's turn.
    outputs: HashMap<TensorId, Vec<Option<Tensor>>>,
}

impl Gradients {
    /// Adds `g` to the gradient of `t` (ignored when `t` tracks no gradient). `g` must
    /// have `t`'s shape.
    pub fn accumulate(&mut self, t: &Tensor, g: Tensor) -> Result<()> {
        if !t.tracks_grad() {
            return Ok(());
        }
        if g.shape() != t.shape() {
            return Err(Error::Autograd(format!(
                "gradient of shape {:?} for a tensor of shape {:?}",
                g.shape(),
                t.shape()
            )));
        }
        let g = if g.dtype() != t.dtype() { g.to_dtype(t.dtype())? } else { g };
        let sum = match self.map.remove(&t.id()) {
            Some(prev) => {
                let s = prev.add(&g)?;
                self.owned.insert(s.id());
                s
            }
            None => g,
        };
        self.map.insert(t.id(), sum);
        Ok(())
    }

    /// Adds `g` to the elements `start, start+step, …` (`g.dims()[axis]` of them) along
    /// `axis` of the gradient of `t` — the backward of a slice. Touches only those elements
    /// when the accumulated gradient is this pass's own buffer, so slicing a sequence step by
    /// step (an RNN) costs O(step) per slice instead of O(sequence).
    pub fn accumulate_slice(&mut self, t: &Tensor, axis: usize, start: usize, step: usize, g: &Tensor) -> Result<()> {
        if !t.tracks_grad() {
            return Ok(());
        }
        let len = g.dims().get(axis).copied().unwrap_or(0);
        let g = if g.dtype() != t.dtype() { g.to_dtype(t.dtype())? } else { g.clone() };
        let full = match self.map.remove(&t.id()) {
            Some(prev) if self.owned.contains(&prev.id()) && prev.is_contiguous() => prev,
            Some(prev) => prev.copy()?,
            None => t.zeros_like()?,
        };
        let view = full.layout().slice(axis, start, len, step);
        if view.dims() != g.dims() {
            return Err(Error::Autograd(format!(
                "slice gradient {:?} for a slice of shape {:?}",
                g.shape(),
                view.shape()
            )));
        }
        let sum = full.view_as(view.clone()).add(&g)?;
        sum.storage().copy_strided(sum.layout(), &mut full.storage_mut(), &view)?;
        self.owned.insert(full.id());
        self.map.insert(t.id(), full);
        Ok(())
    }
    fn take(&mut self, t: &Tensor) -> Option<Tensor> {
        // Handed to a backward, a gradient may be passed on unchanged to several inputs (an
        // add gives both its `g`): it is no longer this pass's alone to add into in place.
        let g = self.map.remove(&t.id())?;
        self.owned.remove(&g.id());
        Some(g)
    }
}

/// The tensors reachable from `root` through recorded nodes, inputs before outputs.
fn topological_order(root: &Tensor) -> Vec<Tensor> {
    let mut order = Vec::new();
    let mut seen = HashSet::new();
    // Iterative DFS: (tensor, children pushed?) so deep graphs (long RNNs) don't overflow.
    let mut stack = vec![(root.clone(), false)];
    while let Some((t, expanded)) = stack.pop() {
        if expanded {
            order.push(t);
            continue;
        }
        if !seen.insert(t.id()) {
            continue;
        }
        stack.push((t.clone(), true));
        t.with_node_ref(|n| {
            if let Some(n) = n {
                for i in &n.inputs {
                    if i.tracks_grad() && !seen.contains(&i.id()) {
                        stack.push((i.clone(), false));
                    }
                }
            }
        });
    }
    order
}

/// Back-propagates from `root` (which must hold one element), adding into the `.grad()` of
/// every leaf variable. The recorded graph is freed as it is consumed, so a training loop's
/// memory stays flat; a second `backward` through the same graph is an error.
pub(crate) fn backward(root: &Tensor) -> Result<()> {
    backward_hooked(root, &mut |_| Ok(()))
}

/// [`backward`], calling `ready` with each variable as soon as its gradient for this pass is
/// complete: reverse topological order reaches a leaf only after every op that used it, so
/// its gradient can be handed on (to an all-reduce) while the rest of the pass still runs.
pub(crate) fn backward_hooked(root: &Tensor, ready: &mut dyn FnMut(&Tensor) -> Result<()>) -> Result<()> {
    if root.elem_count() != 1 {
        return Err(Error::Autograd(format!("backward needs a single-element tensor, got shape {:?}", root.shape())));
    }
    if !root.tracks_grad() {
        return Err(Error::Autograd("backward on a tensor that tracks no gradient".into()));
    }
    // Backward runs each op in the dtypes its forward chose, whatever autocast says now.
    crate::amp::with(None, || {
        no_grad(|| {
            let order = topological_order(root);
            let mut grads = Gradients::default();
            grads.map.insert(root.id(), root.ones_like()?);
            for t in order.iter().rev() {
                let Some(g) = grads.take(t) else { continue };
                match t.take_node() {
                    Some(node) => crate::profile::timed(node.op.name(), "backward", || {
                        node.op.backward(&node.inputs, t, &g, &mut grads)
                    })?,
                    None if t.is_variable() => {
                        t.accumulate_grad(g)?;
                        ready(t)?;
                    }
                    None => {
                        return Err(Error::Autograd(
                            "the graph was already freed by an earlier backward (compute the loss again)".into(),
                        ));
                    }
                }
            }
            Ok(())
        })
    })
}
