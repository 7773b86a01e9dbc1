//! Plain-slice f32 kernels for the fast paths: a strided matrix product on the same `gemm`
//! crate candle's CPU matmul uses (so its throughput is the project's), the LSTM gate
//! nonlinearities, and row deduplication for discrete inputs.
//!
//! Everything here works on row-major buffers outside the autograd graph; the graph-level
//! wrappers (`nn::lstm_seq`, `posterior::filter`) call them and own the mathematics.

use rayon::prelude::*;
use std::collections::HashMap;
use std::ops::Range;

/// Items (tasks, rows) a part of a batch-parallel loop gets at least: below that, a second
/// thread costs more to wake than it saves.
pub const MIN_PART_ITEMS: usize = 32;

/// How many parts a loop over `items` independent items (the tasks of a batch, the rows of a
/// layer) is split into: the configured thread count (`candle_core::utils::get_num_threads`),
/// at most one part per [`MIN_PART_ITEMS`] items, at least one. One part is the serial code
/// on the calling thread. The split depends only on the thread count and the sizes, so results
/// are deterministic for a given thread count.
pub fn parts(items: usize) -> usize {
    let threads = candle_core::utils::get_num_threads();
    threads.min(items / MIN_PART_ITEMS).max(1)
}

/// 0..len as `parts` contiguous ranges of near-equal length (the first len % parts one longer).
pub fn split_even(len: usize, parts: usize) -> Vec<Range<usize>> {
    let parts = parts.max(1);
    let (base, extra) = (len / parts, len % parts);
    let mut start = 0;
    (0..parts)
        .map(|p| {
            let end = start + base + usize::from(p < extra);
            let r = start..end;
            start = end;
            r
        })
        .collect()
}

/// The rows `ranges` (consecutive, covering all rows) of a row-major buffer of `width`
/// columns, as disjoint mutable slices.
pub fn split_rows_mut<'a, T>(
    mut buf: &'a mut [T],
    width: usize,
    ranges: &[Range<usize>],
) -> Vec<&'a mut [T]> {
    let mut out = Vec::with_capacity(ranges.len());
    for r in ranges {
        let (head, tail) = std::mem::take(&mut buf).split_at_mut(r.len() * width);
        out.push(head);
        buf = tail;
    }
    out
}

/// A step-major buffer (steps × batch rows of `width`) split by tasks: part p holds, for every
/// step, the rows of the tasks `ranges[p]` (consecutive, covering the batch).
pub fn split_steps_mut<'a, T>(
    buf: &'a mut [T],
    batch: usize,
    width: usize,
    ranges: &[Range<usize>],
) -> Vec<Vec<&'a mut [T]>> {
    let mut parts: Vec<Vec<&mut [T]>> = ranges.iter().map(|_| vec![]).collect();
    for step in buf.chunks_mut(batch * width) {
        for (part, rows) in parts.iter_mut().zip(split_rows_mut(step, width, ranges)) {
            part.push(rows);
        }
    }
    parts
}

/// `f` on every item of `parts`, on the calling thread for one item, else on rayon's threads;
/// the results in the items' order.
pub fn run_parts<I: Send, R: Send>(parts: Vec<I>, f: impl Fn(I) -> R + Sync + Send) -> Vec<R> {
    if parts.len() <= 1 {
        parts.into_iter().map(f).collect()
    } else {
        parts.into_par_iter().map(f).collect()
    }
}

/// Σ_p parts[p] elementwise, added in the parts' order (the same sum for a given split).
pub fn sum_in_order(mut parts: Vec<Vec<f32>>) -> Vec<f32> {
    let mut total = parts.remove(0);
    for p in parts {
        total.iter_mut().zip(p).for_each(|(t, v)| *t += v);
    }
    total
}

/// A read-only matrix view: `data[r·rs + c·cs]` is entry (r, c).
#[derive(Clone, Copy)]
pub struct Mat<'a> {
    pub data: &'a [f32],
    pub rs: isize,
    pub cs: isize,
}

impl<'a> Mat<'a> {
    /// A contiguous row-major matrix with `cols` columns.
    pub fn rows(data: &'a [f32], cols: usize) -> Self {
        Self {
            data,
            rs: cols as isize,
            cs: 1,
        }
    }

    /// The transpose of a contiguous row-major matrix with `cols` columns.
    pub fn rows_t(data: &'a [f32], cols: usize) -> Self {
        Self {
            data,
            rs: 1,
            cs: cols as isize,
        }
    }
}

/// The parallelism candle's matmul would use: rayon with the configured thread count.
pub fn parallelism() -> gemm::Parallelism {
    let threads = candle_core::utils::get_num_threads();
    if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    }
}

/// Multiply-adds under which [`sgemm`] does not split a product between threads.
const SMALL_GEMM: usize = 1 << 23;

/// C (m×n, row-major, contiguous) = A (m×k) · B (k×n), or C += A·B with `accumulate`.
/// `parallel` = false runs on the calling thread (for use inside an outer parallel loop).
#[allow(clippy::too_many_arguments)]
pub fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    a: Mat,
    b: Mat,
    c: &mut [f32],
    accumulate: bool,
    parallel: bool,
) {
    assert!(c.len() >= m * n, "sgemm: destination too small");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            c[..m * n].iter_mut().for_each(|v| *v = 0.0);
        }
        return;
    }
    let last =
        |mat: &Mat, r: usize, cols: usize| (r as isize - 1) * mat.rs + (cols as isize - 1) * mat.cs;
    assert!(
        last(&a, m, k) < a.data.len() as isize && last(&b, k, n) < b.data.len() as isize,
        "sgemm: operand too small"
    );
    // Products below ~8 M multiply-adds (the rollout's small layers) run on the calling thread:
    // splitting them costs more in synchronisation than it saves.
    let par = if parallel && m * n * k >= SMALL_GEMM {
        parallelism()
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the asserts above keep every index of A, B and C inside its slice.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs,
            a.rs,
            b.data.as_ptr(),
            b.cs,
            b.rs,
            1.0,
            1.0,
            false,
            false,
            false,
            par,
        )
    }
}

/// Σ_k x_k·y_k in eight interleaved partial sums, which the compiler turns into SIMD lanes (a
/// left fold over f32 cannot be vectorised; the result differs from it only by rounding).
#[inline]
pub fn lane_dot(x: &[f32], y: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (xc, yc) = (x.chunks_exact(8), y.chunks_exact(8));
    let tail: f32 = (xc.remainder().iter().zip(yc.remainder()))
        .map(|(a, b)| a * b)
        .sum();
    for (a, b) in xc.zip(yc) {
        for k in 0..8 {
            acc[k] += a[k] * b[k];
        }
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// Σ_k x_k in eight interleaved partial sums (see [`lane_dot`]).
#[inline]
pub fn lane_sum(x: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = x.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().sum();
    for a in chunks {
        for k in 0..8 {
            acc[k] += a[k];
        }
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// e^x in f32 without branches or library calls, so that loops over slices vectorise (libm's
/// `expf` is one call per element): x = n·ln 2 + r with n = round(x/ln 2), e^r from Cephes'
/// `expf` polynomial on |r| ≤ ln 2/2, and 2^n written into the exponent bits. Within 2 ulp of
/// the exact value (tested against f64); x is clamped to [−87.3, 88.3], where e^x is a normal
/// f32, and NaN stays NaN.
#[inline]
pub fn exp(x: f32) -> f32 {
    const ROUND: f32 = 12_582_912.0; // 1.5·2^23: adding and subtracting it rounds to an integer
    let x = x.clamp(-87.3, 88.3);
    let n = (x * std::f32::consts::LOG2_E + ROUND) - ROUND;
    // r = x − n ln 2, with ln 2 split in two so that n·ln2_hi is exact.
    let r = (x - n * 0.693_359_4) + n * 2.121_944_4e-4;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let er = p * r * r + r + 1.0;
    er * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// σ(x) = 1 / (1 + e^{−x}), with [`exp`].
#[inline]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// tanh(x) in f32 to within a few ulp (tested against f64 over a dense grid): an odd
/// polynomial for |x| < 0.625 (Cephes' `tanhf` coefficients), 1 − 2/(e^{2|x|} + 1) beyond.
/// Both are computed and one is selected, so loops over slices vectorise (glibc's `tanhf`
/// goes through `expm1f` and cost ~12% of an RNN update).
#[inline]
pub fn tanh(x: f32) -> f32 {
    let a = x.abs();
    let z = x * x;
    let p = ((((-5.704_988_7e-3 * z + 2.063_909e-2) * z - 5.373_971_6e-2) * z + 1.333_144_2e-1)
        * z
        - 3.333_328e-1)
        * z;
    let small = x + x * p;
    let large = (1.0 - 2.0 / (exp(2.0 * a) + 1.0)).copysign(x);
    if a < 0.625 { small } else { large }
}

/// Turns pre-activations z = [z_i, z_f, z_g, z_o] (one row of 4H) into gate activations
/// in place: i, f, o = σ(·), g = tanh(·).
#[inline(always)]
pub fn activate_gates(z: &mut [f32], hidden: usize) {
    let (ifg, o) = z.split_at_mut(3 * hidden);
    let (if_, g) = ifg.split_at_mut(2 * hidden);
    if_.iter_mut().for_each(|v| *v = sigmoid(*v));
    g.iter_mut().for_each(|v| *v = tanh(*v));
    o.iter_mut().for_each(|v| *v = sigmoid(*v));
}

/// [`activate_gates`] on every row of `z` (rows of 4H), the rows split between the threads
/// ([`parts`]).
pub fn activate_gate_rows(z: &mut [f32], hidden: usize) {
    let g4 = 4 * hidden;
    let rows = z.len() / g4.max(1);
    let ranges = split_even(rows, parts(rows));
    if ranges.len() == 1 {
        return activate_gate_rows_serial(z, hidden);
    }
    run_parts(split_rows_mut(z, g4, &ranges), |part| {
        activate_gate_rows_serial(part, hidden)
    });
}

fn activate_gate_rows_serial(z: &mut [f32], hidden: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked just above).
            return unsafe { activate_gate_rows_avx2(z, hidden) };
        }
    }
    activate_gate_rows_generic(z, hidden)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn activate_gate_rows_avx2(z: &mut [f32], hidden: usize) {
    activate_gate_rows_generic(z, hidden)
}

#[inline(always)]
fn activate_gate_rows_generic(z: &mut [f32], hidden: usize) {
    z.chunks_mut(4 * hidden)
        .for_each(|row| activate_gates(row, hidden));
}

/// The elementwise part of one LSTM step for B rows, given the pre-activations
/// z = xw + h W_h (B×4H, overwritten by the gates): c ← f∘c + i∘g, h ← o∘tanh(c).
pub fn lstm_cells(z: &mut [f32], c: &mut [f32], h: &mut [f32], hidden: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked just above).
            return unsafe { lstm_cells_avx2(z, c, h, hidden) };
        }
    }
    lstm_cells_generic(z, c, h, hidden)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn lstm_cells_avx2(z: &mut [f32], c: &mut [f32], h: &mut [f32], hidden: usize) {
    lstm_cells_generic(z, c, h, hidden)
}

#[inline(always)]
fn lstm_cells_generic(z: &mut [f32], c: &mut [f32], h: &mut [f32], hidden: usize) {
    let rows = z
        .chunks_mut(4 * hidden)
        .zip(c.chunks_mut(hidden).zip(h.chunks_mut(hidden)));
    for (zb, (cb, hb)) in rows {
        activate_gates(zb, hidden);
        let (ifg, o) = zb.split_at(3 * hidden);
        let (i, fg) = ifg.split_at(hidden);
        let (f, g) = fg.split_at(hidden);
        for j in 0..hidden {
            cb[j] = f[j] * cb[j] + i[j] * g[j];
            hb[j] = o[j] * tanh(cb[j]);
        }
    }
}

/// Distinct rows of a row-major matrix (compared bit for bit): returns the distinct rows in
/// order of first appearance and, for every input row, the index of its distinct row.
/// Discrete inputs (bandit, gridworld) collapse to a handful of rows, so layers applied to
/// them can run once per distinct row and be gathered (DESIGN "speed").
pub fn dedup_rows(data: &[f32], cols: usize) -> (Vec<f32>, Vec<u32>) {
    let rows = data.len() / cols.max(1);
    let mut seen: HashMap<Vec<u32>, u32> = HashMap::new();
    let mut unique = Vec::new();
    let mut index = Vec::with_capacity(rows);
    for r in 0..rows {
        let row = &data[r * cols..(r + 1) * cols];
        let key: Vec<u32> = row.iter().map(|v| v.to_bits()).collect();
        let next = seen.len() as u32;
        let id = *seen.entry(key).or_insert_with(|| {
            unique.extend_from_slice(row);
            next
        });
        index.push(id);
    }
    (unique, index)
}

// Candle CPU storage: how the custom ops (`nn`, `posterior`, `linalg`) read their inputs.

use candle_core::Layout;
use std::borrow::Cow;

/// The logical (row-major) elements of a CPU storage slice described by `layout`.
pub(crate) fn logical<'a, T: Copy>(data: &'a [T], layout: &Layout) -> Cow<'a, [T]> {
    if let Some((start, end)) = layout.contiguous_offsets() {
        return Cow::Borrowed(&data[start..end]);
    }
    let dims = layout.dims();
    let stride = layout.stride();
    let count = layout.shape().elem_count();
    let mut out = Vec::with_capacity(count);
    if count == 0 {
        return Cow::Owned(out);
    }
    let mut idx = vec![0usize; dims.len()];
    let mut off = layout.start_offset();
    for _ in 0..count {
        out.push(data[off]);
        for d in (0..dims.len()).rev() {
            idx[d] += 1;
            off += stride[d];
            if idx[d] < dims[d] {
                break;
            }
            off -= stride[d] * dims[d];
            idx[d] = 0;
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tanh_is_within_a_few_ulp_of_f64() {
        let mut worst = 0f64;
        for k in -200_000..=200_000 {
            let x = k as f32 * 1e-4; // [−20, 20] in steps of 1e-4
            let want = (x as f64).tanh();
            let got = tanh(x) as f64;
            // Relative error, with the ulp of tiny results as the floor.
            worst = worst.max((got - want).abs() / want.abs().max(1e-30));
        }
        assert!(worst < 4e-7, "max relative error {worst:e}");
        assert_eq!(tanh(0.0), 0.0);
        assert_eq!(tanh(1e-30), 1e-30);
        assert_eq!(tanh(100.0), 1.0);
        assert_eq!(tanh(-100.0), -1.0);
        assert!(tanh(f32::NAN).is_nan());
    }

    #[test]
    fn sgemm_matches_a_triple_loop_with_transposes_and_accumulation() {
        let (m, n, k) = (5, 7, 3);
        let a: Vec<f32> = (0..m * k).map(|v| (v as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..k * n).map(|v| (v as f32 * 0.11).cos()).collect();
        let mut c = vec![1.0f32; m * n];
        sgemm(
            m,
            n,
            k,
            Mat::rows(&a, k),
            Mat::rows(&b, n),
            &mut c,
            true,
            false,
        );
        for i in 0..m {
            for j in 0..n {
                let want: f32 = 1.0 + (0..k).map(|l| a[i * k + l] * b[l * n + j]).sum::<f32>();
                assert!((c[i * n + j] - want).abs() < 1e-5);
            }
        }
        // Aᵀ stored as (k, m): (Aᵀ)ᵀ·B = A·B.
        let at: Vec<f32> = (0..k * m).map(|v| a[(v % m) * k + v / m]).collect();
        let mut c2 = vec![0.0f32; m * n];
        sgemm(
            m,
            n,
            k,
            Mat::rows_t(&at, m),
            Mat::rows(&b, n),
            &mut c2,
            false,
            false,
        );
        for (x, y) in c2.iter().zip(&c) {
            assert!((x + 1.0 - y).abs() < 1e-5);
        }
    }

    #[test]
    fn exp_is_within_two_ulp_of_f64() {
        let mut worst = 0f64;
        for k in -873_000..=883_000 {
            let x = k as f32 * 1e-4;
            let want = (x as f64).exp();
            worst = worst.max(((exp(x) as f64) - want).abs() / want);
        }
        assert!(
            worst < 2.0 * f32::EPSILON as f64,
            "worst relative error {worst:e}"
        );
        assert_eq!(exp(-200.0), (-87.3f32 as f64).exp() as f32);
        assert!(exp(f32::NAN).is_nan());
    }

    #[test]
    fn sigmoid_is_within_a_few_ulp_of_f64() {
        let mut worst = 0f64;
        for k in -300_000..=300_000 {
            let x = k as f32 * 1e-4;
            let want = 1.0 / (1.0 + (-(x as f64)).exp());
            worst = worst.max(((sigmoid(x) as f64) - want).abs() / want);
        }
        assert!(
            worst < 4.0 * f32::EPSILON as f64,
            "worst relative error {worst:e}"
        );
    }

    #[test]
    fn lane_sums_equal_a_float64_sum() {
        for len in [0, 1, 7, 8, 9, 64, 320, 333] {
            let x: Vec<f32> = (0..len)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
                .collect();
            let y: Vec<f32> = (0..len)
                .map(|i| ((i * 53 % 89) as f32 - 44.0) / 5.0)
                .collect();
            let sum: f64 = x.iter().map(|v| *v as f64).sum();
            let dot: f64 = x.iter().zip(&y).map(|(a, b)| *a as f64 * *b as f64).sum();
            let scale = 1.0 + len as f64;
            assert!(
                (lane_sum(&x) as f64 - sum).abs() < 1e-5 * scale * 10.0,
                "sum, {len}"
            );
            assert!(
                (lane_dot(&x, &y) as f64 - dot).abs() < 1e-5 * scale * 100.0,
                "dot, {len}"
            );
        }
    }

    #[test]
    fn dedup_rows_finds_distinct_rows_in_first_appearance_order() {
        let data = [1.0, 0.0, 2.0, 3.0, 1.0, 0.0, -0.0, 0.0];
        let (unique, index) = dedup_rows(&data, 2);
        assert_eq!(unique, vec![1.0, 0.0, 2.0, 3.0, -0.0, 0.0]);
        assert_eq!(index, vec![0, 1, 0, 2]);
    }
}
