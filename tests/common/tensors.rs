//! Tensor helpers shared by the numerical tests (finite differences, references).

use candle_core::{DType, Device, Tensor};

/// An f32 tensor of `shape` from f64 values.
pub fn tensor(v: &[f64], shape: &[usize]) -> Tensor {
    let v: Vec<f32> = v.iter().map(|x| *x as f32).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// Every element of `t` (any float dtype) as f64, in row-major order.
pub fn values(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap()
}

/// max_i |a_i − b_i| (the slices must have the same length).
pub fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}
