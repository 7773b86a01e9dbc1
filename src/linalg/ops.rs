//! The tensor ops as candle custom ops on CPU tensors, their backward passes (ordinary tensor
//! ops; the Cayley map's per item, `super::cayley`), and the public functions ([`cholesky`],
//! [`solve_triangular`], [`inverse`], [`cayley_lower`], [`logdet_spd`]) that accept `(B, n, n)`
//! or `(n, n)` input.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, Error, Layout, Shape, Tensor, WithDType};

use super::batched::{
    batch_square, cayley_batched, cayley_batched_f32, cholesky_batched, inverse_batched,
    logdet_batched, map_items, tri_solve_batched,
};
use super::cayley::{cayley_backward_f32, cayley_backward_f64};
use crate::nn::cpu_op::{CpuOp, Fused, Gradients, Input, Output};
use crate::nn::kernels::logical;

macro_rules! dispatch_float {
    ($storage:expr, $op:expr, |$v:ident| $body:expr) => {
        match $storage {
            CpuStorage::F32($v) => CpuStorage::F32($body),
            CpuStorage::F64($v) => CpuStorage::F64($body),
            s => {
                return Err(Error::Msg(format!(
                    "{}: unsupported dtype {:?} (f32 or f64 expected)",
                    $op,
                    s.dtype()
                )));
            }
        }
    };
}

struct CholeskyOp;

impl CpuOp<1> for CholeskyOp {
    fn name(&self) -> &'static str {
        "lvrnn-cholesky"
    }

    fn forward(&self, [a]: [Input; 1]) -> Output {
        let (s, l) = (a.storage(), a.layout());
        let (b, n) = batch_square(l, "cholesky")?;
        let out = dispatch_float!(s, "cholesky", |v| cholesky_batched(v, l, b, n)?);
        Ok((out, Shape::from((b, n, n))))
    }

    fn backward(&self, _a: [&Tensor; 1], l: &Tensor, g: &Tensor) -> Gradients<1> {
        Ok([Some(cholesky_backward(l, g)?)])
    }
}

struct LogdetOp;

impl CpuOp<1> for LogdetOp {
    fn name(&self) -> &'static str {
        "lvrnn-logdet-spd"
    }

    fn forward(&self, [a]: [Input; 1]) -> Output {
        let (s, l) = (a.storage(), a.layout());
        let (b, n) = batch_square(l, "logdet_spd")?;
        let out = dispatch_float!(s, "logdet_spd", |v| logdet_batched(v, l, b, n)?);
        Ok((out, Shape::from(b)))
    }
}

struct InverseOp;

impl CpuOp<1> for InverseOp {
    fn name(&self) -> &'static str {
        "lvrnn-inverse"
    }

    fn forward(&self, [a]: [Input; 1]) -> Output {
        let (s, l) = (a.storage(), a.layout());
        let (b, n) = batch_square(l, "inverse")?;
        let out = dispatch_float!(s, "inverse", |v| inverse_batched(v, l, b, n)?);
        Ok((out, Shape::from((b, n, n))))
    }

    /// `dA = −A⁻ᵀ G A⁻ᵀ`, with ordinary tensor ops.
    fn backward(&self, _a: [&Tensor; 1], inv: &Tensor, g: &Tensor) -> Gradients<1> {
        // candle's matmul reads the transposed strides directly (no copy).
        let inv_t = inv.t()?;
        let ga = inv_t.matmul(&g.contiguous()?)?.matmul(&inv_t)?.neg()?;
        Ok([Some(ga)])
    }
}

struct CayleyOp;

impl CpuOp<1> for CayleyOp {
    fn name(&self) -> &'static str {
        "lvrnn-cayley"
    }

    fn forward(&self, [raw]: [Input; 1]) -> Output {
        let (s, l) = (raw.storage(), raw.layout());
        let (b, n) = batch_square(l, "cayley")?;
        let out = match s {
            // f32 (training) inverts in f32 without pivoting; f64 keeps the pivoted f64 kernel.
            CpuStorage::F32(v) => CpuStorage::F32(cayley_batched_f32(v, l, b, n)?),
            s => dispatch_float!(s, "cayley", |v| cayley_batched(v, l, b, n)?),
        };
        Ok((out, Shape::from((b, n, n))))
    }

    /// With M = (I + A)⁻¹ = (I + U)/2: dU = 2 dM = −2 M dA M, so Ā = −½ (I + U)ᵀ G (I + U)ᵀ;
    /// the raw input's gradient is the strictly lower part of Ā − Āᵀ (A = L − Lᵀ).
    ///
    /// Computed per batch item into one output (a composition of tensor ops holds about six
    /// (B, n, n) temporaries at once, the largest allocation of a full-covariance VRNN update).
    fn backward(&self, _raw: [&Tensor; 1], u: &Tensor, g: &Tensor) -> Gradients<1> {
        let (b, n, _) = u.dims3()?;
        let ((us, ul), (gs, gl)) = (u.storage_and_layout(), g.storage_and_layout());
        let grad = match (&*us, &*gs) {
            (
                candle_core::Storage::Cpu(CpuStorage::F32(uv)),
                candle_core::Storage::Cpu(CpuStorage::F32(gv)),
            ) => per_item_grad((uv, ul), (gv, gl), b, n, cayley_backward_f32, u.device())?,
            (
                candle_core::Storage::Cpu(CpuStorage::F64(uv)),
                candle_core::Storage::Cpu(CpuStorage::F64(gv)),
            ) => per_item_grad((uv, ul), (gv, gl), b, n, cayley_backward_f64, u.device())?,
            _ => candle_core::bail!("cayley backward: f32 or f64 CPU tensors of one dtype"),
        };
        Ok([Some(grad)])
    }
}

/// `kernel(u_i, g_i, n, out_i)` for every item i of a batch of n×n matrices u and g (given as
/// storage and layout), as one (b, n, n) tensor on `device`.
fn per_item_grad<T: WithDType>(
    (u, ul): (&[T], &Layout),
    (g, gl): (&[T], &Layout),
    b: usize,
    n: usize,
    kernel: fn(&[T], &[T], usize, &mut [T]),
    device: &candle_core::Device,
) -> candle_core::Result<Tensor> {
    let (u, g) = (logical(u, ul), logical(g, gl));
    let nn = n * n;
    let out = map_items(b, nn, |i, out| {
        kernel(&u[i * nn..(i + 1) * nn], &g[i * nn..(i + 1) * nn], n, out);
        Ok(())
    })?;
    Tensor::from_vec(out, (b, n, n), device)
}

struct TriSolveOp {
    lower: bool,
    transpose: bool,
}

impl CpuOp<2> for TriSolveOp {
    fn name(&self) -> &'static str {
        "lvrnn-solve-triangular"
    }

    fn forward(&self, [t, rhs]: [Input; 2]) -> Output {
        let (s1, l1, s2, l2) = (t.storage(), t.layout(), rhs.storage(), rhs.layout());
        let (b, n) = batch_square(l1, "solve_triangular")?;
        let k = match l2.dims() {
            &[b2, n2, k] if b2 == b && n2 == n => k,
            d => {
                return Err(Error::Msg(format!(
                    "solve_triangular: right-hand side of shape {d:?} does not match \
                     the triangular matrix of shape {:?} (expected ({b}, {n}, k))",
                    l1.dims()
                )));
            }
        };
        let (lower, transpose) = (self.lower, self.transpose);
        let out = match (s1, s2) {
            (CpuStorage::F32(t), CpuStorage::F32(r)) => {
                CpuStorage::F32(tri_solve_batched(t, l1, r, l2, b, n, k, lower, transpose)?)
            }
            (CpuStorage::F64(t), CpuStorage::F64(r)) => {
                CpuStorage::F64(tri_solve_batched(t, l1, r, l2, b, n, k, lower, transpose)?)
            }
            (a, c) => {
                return Err(Error::Msg(format!(
                    "solve_triangular: unsupported dtypes {:?} and {:?} (both f32 or both f64)",
                    a.dtype(),
                    c.dtype()
                )));
            }
        };
        Ok((out, Shape::from((b, n, k))))
    }

    /// With `M = op(T)` and `X = M⁻¹ B`: `B̄ = M⁻ᵀ X̄`, `M̄ = −B̄ Xᵀ`, and `T̄` is `M̄` (or `M̄ᵀ`
    /// when transposed) restricted to the triangle of `T` that the forward pass reads.
    fn backward(&self, [t, _rhs]: [&Tensor; 2], x: &Tensor, g: &Tensor) -> Gradients<2> {
        let g_rhs = solve_triangular(t, g, self.lower, !self.transpose)?;
        let m_bar = if self.transpose {
            x.matmul(&g_rhs.t()?)?
        } else {
            g_rhs.matmul(&x.t()?)?
        };
        let n = t.dim(1)?;
        let mask = if self.lower {
            Tensor::tril2(n, t.dtype(), t.device())?
        } else {
            Tensor::triu2(n, t.dtype(), t.device())?
        };
        let g_t = m_bar.broadcast_mul(&mask)?.neg()?;
        Ok([Some(g_t), Some(g_rhs)])
    }
}

/// Cholesky backward (Murray 2016, symmetrised as in PyTorch): with `P = Φ(Lᵀ L̄)`, where `Φ`
/// keeps the lower triangle and halves the diagonal, `S = L⁻ᵀ P L⁻¹` and `Ā = ½ (S + Sᵀ)`.
fn cholesky_backward(l: &Tensor, g: &Tensor) -> candle_core::Result<Tensor> {
    let n = l.dim(1)?;
    let (dt, dev) = (l.dtype(), l.device());
    let phi = (Tensor::tril2(n, dt, dev)? - (Tensor::eye(n, dt, dev)? * 0.5)?)?;
    let p = l.t()?.matmul(&g.contiguous()?)?.broadcast_mul(&phi)?;
    // Y = L⁻ᵀ P, then S = Y L⁻¹ = (L⁻ᵀ Yᵀ)ᵀ.
    let y = solve_triangular(l, &p, true, true)?;
    let s = solve_triangular(l, &y.t()?, true, true)?.t()?;
    (&s + &s.t()?)? * 0.5
}

/// Applies `f` to a `(B, n, n)` tensor, also accepting `(n, n)` (treated as `B = 1`).
fn with_batch(
    a: &Tensor,
    op: &str,
    f: impl FnOnce(&Tensor) -> candle_core::Result<Tensor>,
) -> candle_core::Result<Tensor> {
    match a.rank() {
        3 => f(&a.contiguous()?),
        2 => f(&a.unsqueeze(0)?.contiguous()?)?.squeeze(0),
        _ => Err(Error::Msg(format!(
            "{op}: expected a (B, n, n) or (n, n) tensor, got shape {:?}",
            a.dims()
        ))),
    }
}

/// Batched Cholesky factor: for symmetric positive definite `A` of shape `(B, n, n)` (or
/// `(n, n)`) returns the lower-triangular `L` with `A = L Lᵀ` and positive diagonal.
///
/// Only the lower triangle of `A` is read. Fails with a message naming the first batch element
/// that is not positive definite. Backward (Murray 2016): with `P = Φ(Lᵀ L̄)` (`Φ` = lower
/// triangle with halved diagonal), `Ā = ½ (S + Sᵀ)` for `S = L⁻ᵀ P L⁻¹` — the symmetric
/// gradient, valid for symmetric perturbations of `A` (as with any parametrisation that produces
/// a symmetric `A`, e.g. `M Mᵀ + c I`).
pub fn cholesky(a: &Tensor) -> candle_core::Result<Tensor> {
    with_batch(a, "cholesky", |a| a.apply_op1(Fused(CholeskyOp)))
}

/// Batched triangular solve: returns `X` with `op(T) X = B`, where `T` is the lower
/// (`lower = true`) or upper (`lower = false`) triangle of `t` (the other triangle is ignored)
/// and `op(T) = Tᵀ` when `transpose` is set, else `T`.
///
/// Shapes: `t` is `(B, n, n)` and `b` is `(B, n, k)` → `X` is `(B, n, k)`; a `(B, n)` `b` is a
/// batch of vectors and gives `(B, n)`. Without the batch dimension, `t` is `(n, n)` and `b` is
/// `(n, k)` or `(n,)`. A zero on the diagonal gives non-finite values (not checked).
///
/// Backward w.r.t. both arguments, with `M = op(T)`: `B̄ = M⁻ᵀ X̄`, `M̄ = −B̄ Xᵀ`; `T̄` is `M̄` (or
/// `M̄ᵀ` when transposed) restricted to the triangle of `T` that is read.
pub fn solve_triangular(
    t: &Tensor,
    b: &Tensor,
    lower: bool,
    transpose: bool,
) -> candle_core::Result<Tensor> {
    let op = Fused(TriSolveOp { lower, transpose });
    match (t.rank(), b.rank()) {
        (3, 3) => t.contiguous()?.apply_op2(&b.contiguous()?, op),
        (3, 2) => t
            .contiguous()?
            .apply_op2(&b.unsqueeze(2)?.contiguous()?, op)?
            .squeeze(2),
        (2, 2) => t
            .unsqueeze(0)?
            .contiguous()?
            .apply_op2(&b.unsqueeze(0)?.contiguous()?, op)?
            .squeeze(0),
        (2, 1) => t
            .unsqueeze(0)?
            .contiguous()?
            .apply_op2(&b.reshape((1, b.dim(0)?, 1))?, op)?
            .reshape(b.dim(0)?),
        _ => Err(Error::Msg(format!(
            "solve_triangular: unsupported shapes {:?} and {:?} (expected (B, n, n) with \
             (B, n, k) or (B, n), or (n, n) with (n, k) or (n,))",
            t.dims(),
            b.dims()
        ))),
    }
}

/// Batched inverse `A⁻¹` of `(B, n, n)` (or `(n, n)`) matrices by Gauss–Jordan elimination with
/// partial pivoting in `f64`. Fails with a message naming the first exactly singular batch
/// element.
///
/// Backward: `Ā = −A⁻ᵀ G A⁻ᵀ` for the incoming gradient `G`, written with candle tensor ops so
/// the gradient flows on to whatever produced `A`.
pub fn inverse(a: &Tensor) -> candle_core::Result<Tensor> {
    with_batch(a, "inverse", |a| a.apply_op1(Fused(InverseOp)))
}

/// The VRNN's Cayley map (paper App. B.2) of a batch `(B, n, n)`: with L the strictly lower
/// part of `raw` (the rest is ignored) and A = L − Lᵀ skew-symmetric,
/// `U = (I − A)(I + A)⁻¹ = 2(I + A)⁻¹ − I`, an orthogonal matrix. One fused op whose backward
/// needs only U (I + U = 2(I + A)⁻¹). The inverse runs in `f64` for f64 input and in f32
/// without pivoting for f32 input.
pub fn cayley_lower(raw: &Tensor) -> candle_core::Result<Tensor> {
    with_batch(raw, "cayley", |a| a.apply_op1(Fused(CayleyOp)))
}

/// Batched log-determinant of symmetric positive definite matrices via Cholesky:
/// `log det A = 2 Σ_i log L_ii`. `(B, n, n)` gives `(B,)`; `(n, n)` gives a scalar (rank 0).
///
/// Only the lower triangle of `A` is read. **No backward**: the result is detached from the
/// graph (use `2 · sum(log(diag(cholesky(A))))` if a gradient is needed). Fails with a message
/// naming the first batch element that is not positive definite.
pub fn logdet_spd(a: &Tensor) -> candle_core::Result<Tensor> {
    with_batch(a, "logdet_spd", |a| a.apply_op1_no_bwd(&Fused(LogdetOp)))
}
