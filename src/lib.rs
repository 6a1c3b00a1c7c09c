//! # tensorforge
//!
//! A deep-learning framework with a native tensor engine: every primitive has a
//! hand-written SIMD/rayon CPU kernel and a hand-written CUDA kernel (compiled at run time
//! by NVRTC), chosen per tensor by its device, behind one dispatch trait
//! ([`backend::BackendStorage`]).
//!
//! ```
//! use tensorforge::{Tensor, Device, DType};
//! let x = Tensor::from_vec(vec![1f32, -2., 3.], 3, Device::Cpu)?.requires_grad();
//! let y = x.sqr()?.sum_all()?;
//! y.backward()?;
//! assert_eq!(x.grad().unwrap().to_vec1::<f32>()?, vec![2., -4., 6.]);
//! # Ok::<(), tensorforge::Error>(())
//! ```
//!
//! Bad input (shapes, dtypes, devices, sizes that overflow, memory that is not there) is an
//! [`Error`], never a panic; files the engine saves survive a kill at any moment. The
//! repository's `docs/RELIABILITY.md` lists each guarantee with the test that checks it.

#![warn(missing_docs)]

pub mod amp;
pub mod autograd;
pub mod backend;
pub mod checkpoint;
pub mod custom;
pub mod data;
mod device;
pub mod distributed;
mod dtype;
mod error;
pub mod gradcheck;
pub mod io;
pub mod nn;
pub mod ops;
pub mod optim;
pub mod param;
pub mod profile;
pub mod shape;
pub mod storage;
mod tensor;
pub mod train;

pub use autograd::{Gradients, MultiOperation, Operation, apply, apply_multi, is_grad_enabled, no_grad};
pub use device::Device;
pub use dtype::{DType, WithDType};
pub use error::{Error, Result};
pub use shape::{Axes, Layout, Shape};
pub use tensor::{Generator, Tensor, TensorId, manual_seed, rng_state, set_rng_state};

/// The README's code blocks, compiled and run by `cargo test --doc` so they stay true.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

/// The tutorial's code, compiled and run by `cargo test --doc` so it stays true.
#[doc = include_str!("../docs/TUTORIAL.md")]
#[cfg(doctest)]
pub struct TutorialDoctests;
