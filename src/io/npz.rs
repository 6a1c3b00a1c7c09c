//! placeholder
use crate::{Result, Tensor};
use std::path::Path;
pub fn read_npz(_p: impl AsRef<Path>) -> Result<Vec<(String, Tensor)>> { todo!() }
pub fn write_npz(_p: impl AsRef<Path>, _t: &[(&str, &Tensor)]) -> Result<()> { todo!() }
pub fn from_npz_bytes(_b: &[u8]) -> Result<Vec<(String, Tensor)>> { todo!() }
pub fn to_npz_bytes(_t: &[(&str, &Tensor)]) -> Result<Vec<u8>> { todo!() }
