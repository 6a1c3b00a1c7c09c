//! The CPU forward of both forms of custom op.

use super::view::{Input, Output, View};
use super::{DynCpuKernel, DynKernel, Prepared};
use crate::backend::cpu::{CpuStorage, pool};
use crate::storage::Storage;
use crate::{DType, Error, Result, Shape, Tensor, WithDType};

/// The storage behind `t` (checked by `prepare`: every input is on the CPU).
fn host(s: &Storage) -> Result<&CpuStorage> {
    match s {
        Storage::Cpu(c) => Ok(c),
        #[cfg(feature = "cuda")]
        Storage::Cuda(_) => Err(Error::msg("custom op: a CUDA input reached the CPU forward")),
    }
}

fn slice<T: WithDType>(c: &CpuStorage) -> Result<&[T]> {
    T::cpu_slice(c).ok_or_else(|| Error::msg("custom op: an input's storage is not of its dtype"))
}

/// Elementwise: `x` already broadcast to `shape` and contiguous.
pub(super) fn elementwise(
    k: &dyn DynCpuKernel,
    x: &[&Tensor],
    shape: Shape,
    dtype: DType,
    scalars: &[f64],
) -> Result<Tensor> {
    let n = shape.elem_count();
    let out = match dtype {
        DType::F32 => {
            let mut out = pool::filled(n, 0f32);
            with_slices(x, |ins| k.f32(ins, &mut out, scalars))?;
            CpuStorage::F32(out)
        }
        DType::F64 => {
            let mut out = pool::filled(n, 0f64);
            with_slices(x, |ins| k.f64(ins, &mut out, scalars))?;
            CpuStorage::F64(out)
        }
        DType::F16 | DType::BF16 => {
            // Widen to f32, compute, round once on the way back (as the built-in kernels).
            let wide = x.iter().map(|t| t.to_dtype(DType::F32)).collect::<Result<Vec<_>>>()?;
            let wide: Vec<&Tensor> = wide.iter().collect();
            return elementwise(k, &wide, shape, DType::F32, scalars)?.to_dtype(dtype);
        }
        d => return Err(Error::UnsupportedDType { op: "custom op", dtype: d }),
    };
    Ok(Tensor::from_contiguous(Storage::Cpu(out), shape))
}

/// Calls `f` with the contiguous inputs as slices. One or two inputs (nearly every op) stay
/// on the stack: a custom op's dispatch should cost what a built-in's does.
fn with_slices<T: WithDType>(x: &[&Tensor], f: impl FnOnce(&[&[T]])) -> Result<()> {
    fn view<'a, T: WithDType>(t: &Tensor, g: &'a Storage) -> Result<&'a [T]> {
        // `contiguous()` may leave an offset (a contiguous slice of a larger buffer).
        let (a, b) = t.layout().contiguous_range().ok_or_else(|| Error::msg("custom op: input not contiguous"))?;
        Ok(&slice::<T>(host(g)?)?[a..b])
    }
    match x {
        [a] => {
            let ga = a.storage();
            f(&[view(a, &ga)?]);
        }
        [a, b] => {
            let (ga, gb) = (a.storage(), b.storage());
            f(&[view(a, &ga)?, view(b, &gb)?]);
        }
        _ => {
            let guards: Vec<_> = x.iter().map(|t| t.storage()).collect();
            let ins = x.iter().zip(&guards).map(|(t, g)| view(t, g)).collect::<Result<Vec<_>>>()?;
            f(&ins);
        }
    }
    Ok(())
}

/// The compute types of the CPU half, and how each calls the kernel.
trait Compute: crate::custom::Float + WithDType {
    fn call(k: &dyn DynKernel, x: &[Input<'_, Self>], y: &mut [Output<'_, Self>], s: &[f64]) -> Result<()>;
}
impl Compute for f32 {
    fn call(k: &dyn DynKernel, x: &[Input<'_, f32>], y: &mut [Output<'_, f32>], s: &[f64]) -> Result<()> {
        k.f32(x, y, s)
    }
}
impl Compute for f64 {
    fn call(k: &dyn DynKernel, x: &[Input<'_, f64>], y: &mut [Output<'_, f64>], s: &[f64]) -> Result<()> {
        k.f64(x, y, s)
    }
}

/// General: strided views of the inputs, zeroed outputs of the declared shapes.
pub(super) fn general(k: &dyn DynKernel, p: &Prepared, scalars: &[f64]) -> Result<Vec<Tensor>> {
    match p.dtype {
        DType::F32 => run::<f32>(k, &p.inputs, &p.shapes, scalars),
        DType::F64 => run::<f64>(k, &p.inputs, &p.shapes, scalars),
        DType::F16 | DType::BF16 => {
            let wide = p
                .inputs
                .iter()
                .map(|t| if t.dtype() == p.dtype { t.to_dtype(DType::F32) } else { Ok(t.clone()) })
                .collect::<Result<Vec<_>>>()?;
            run::<f32>(k, &wide, &p.shapes, scalars)?.iter().map(|y| y.to_dtype(p.dtype)).collect()
        }
        d => Err(Error::UnsupportedDType { op: "custom op", dtype: d }),
    }
}

fn run<T: Compute>(k: &dyn DynKernel, xs: &[Tensor], shapes: &[Shape], scalars: &[f64]) -> Result<Vec<Tensor>> {
    let guards: Vec<_> = xs.iter().map(|t| t.storage()).collect();
    let inputs = xs
        .iter()
        .zip(&guards)
        .map(|(t, g)| {
            let (c, l) = (host(g)?, t.layout());
            let at = l.offset();
            Ok(if t.dtype() == DType::I64 {
                Input::Index(View::new(&slice::<i64>(c)?[at..], l.dims(), l.strides()))
            } else {
                Input::Float(View::new(&slice::<T>(c)?[at..], l.dims(), l.strides()))
            })
        })
        .collect::<Result<Vec<_>>>()?;
    // From the engine's buffer cache, as built-in outputs: a fresh large buffer costs a page
    // fault per page on its first write.
    let mut bufs: Vec<Vec<T>> = shapes.iter().map(|s| pool::filled(s.elem_count(), T::ZERO)).collect();
    let mut outputs: Vec<Output<'_, T>> =
        bufs.iter_mut().zip(shapes).map(|(b, s)| Output::new(b.as_mut_slice(), s.dims())).collect();
    T::call(k, &inputs, &mut outputs, scalars)?;
    drop(outputs);
    Ok(bufs
        .into_iter()
        .zip(shapes)
        .map(|(b, s)| Tensor::from_contiguous(Storage::Cpu(T::into_cpu_storage(b)), s.clone()))
        .collect())
}
