//! Printing values the way numpy does: nested brackets, aligned columns, `...` for long axes.

use super::Tensor;
use crate::DType;
use std::fmt;

/// Axes longer than this print only their first and last `EDGE` entries.
const SUMMARIZE_OVER: usize = 1000;
const EDGE: usize = 3;

fn format_value(v: f64, float: bool) -> String {
    if !float {
        return format!("{}", v as i64);
    }
    if v.is_nan() {
        return "nan".into();
    }
    if v.is_infinite() {
        return if v > 0.0 { "inf".into() } else { "-inf".into() };
    }
    let a = v.abs();
    if a != 0.0 && !(1e-4..1e8).contains(&a) {
        return format!("{v:.4e}");
    }
    let s = format!("{v:.4}");
    let s = s.trim_end_matches('0');
    s.to_string()
}

/// Pads plain decimals so their points line up, as numpy does (`[ 1.   2.5]`).
fn align_decimal_points(cells: &mut [String]) {
    let split = |c: &str| c.find('.').filter(|_| !c.contains('e')).map(|p| (p, c.len() - p - 1));
    let frac = cells.iter().filter_map(|c| split(c)).map(|(_, f)| f).max();
    if let Some(frac) = frac {
        for c in cells.iter_mut() {
            if let Some((_, f)) = split(c) {
                c.push_str(&" ".repeat(frac - f));
            }
        }
    }
}

fn write_axis(
    f: &mut fmt::Formatter<'_>,
    cells: &[String],
    dims: &[usize],
    width: usize,
    depth: usize,
    summarize: bool,
) -> fmt::Result {
    if dims.is_empty() {
        return write!(f, "{:>width$}", cells[0]);
    }
    let n = dims[0];
    let stride: usize = dims[1..].iter().product();
    let idx: Vec<Option<usize>> = if summarize && n > 2 * EDGE {
        (0..EDGE).map(Some).chain(std::iter::once(None)).chain((n - EDGE..n).map(Some)).collect()
    } else {
        (0..n).map(Some).collect()
    };
    f.write_str("[")?;
    for (k, i) in idx.iter().enumerate() {
        if k > 0 {
            if dims.len() == 1 {
                f.write_str(" ")?;
            } else {
                f.write_str("\n".repeat(dims.len() - 1).as_str())?;
                f.write_str(&" ".repeat(depth + 1))?;
            }
        }
        match i {
            Some(i) => write_axis(f, &cells[i * stride..(i + 1) * stride], &dims[1..], width, depth + 1, summarize)?,
            None => f.write_str("...")?,
        }
    }
    f.write_str("]")
}

impl Tensor {
    fn fmt_values(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let vals = match self.to_vec_f64() {
            Ok(v) => v,
            Err(e) => return write!(f, "<unreadable: {e}>"),
        };
        let float = self.dtype().is_float();
        let mut cells: Vec<String> = vals.iter().map(|&v| format_value(v, float)).collect();
        align_decimal_points(&mut cells);
        let width = cells.iter().map(|c| c.len()).max().unwrap_or(0);
        let summarize = self.elem_count() > SUMMARIZE_OVER;
        write_axis(f, &cells, self.dims(), width, 0, summarize)
    }
}

impl fmt::Display for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.fmt_values(f)
    }
}

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("tensor(")?;
        self.fmt_values(f)?;
        let dt = if self.dtype() == DType::F32 { String::new() } else { format!(", dtype={}", self.dtype().as_str()) };
        write!(f, "{dt}, shape={:?}, device={})", self.dims(), self.device())
    }
}
