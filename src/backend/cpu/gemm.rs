//! Placeholder GEMM (replaced by the packed SIMD kernel).
pub trait GemmElem:
    Copy + Send + Sync + 'static + std::ops::Add<Output = Self> + std::ops::Mul<Output = Self> + Default
{
}
impl GemmElem for f32 {}
impl GemmElem for f64 {}
#[derive(Clone, Copy)]
pub struct MatRef<'a, T> {
    pub data: &'a [T],
    pub offset: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}
pub fn gemm<T: GemmElem>(m: usize, n: usize, k: usize, a: MatRef<T>, b: MatRef<T>, c: &mut [T], _parallel: bool) {
    for i in 0..m {
        for j in 0..n {
            let mut s = T::default();
            for p in 0..k {
                s = s + a.data[a.offset + i * a.row_stride + p * a.col_stride]
                    * b.data[b.offset + p * b.row_stride + j * b.col_stride];
            }
            c[i * n + j] = s;
        }
    }
}
