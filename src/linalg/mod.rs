//! Batched dense linear algebra that candle lacks: Cholesky factorisation, triangular solves,
//! inverses and SPD log-determinants of `(B, n, n)` tensors.
//!
//! Two layers:
//! * **Slice kernels** ([`cholesky_in_place`], [`solve_lower`], [`solve_upper_t`],
//!   [`inverse_in_place`]) on row-major `f64` data. Other modules use them outside the autograd
//!   graph. The Laplace precision, which carries no gradient, keeps its factor in upper form
//!   (U = Lᵀ) and uses the blocked kernels of [`upper`], checked against these simple ones.
//! * **Tensor ops** ([`cholesky`], [`solve_triangular`], [`inverse`], [`logdet_spd`], and the
//!   VRNN's Cayley map [`cayley_lower`]) as candle
//!   custom ops. They accept `f32` (and `f64`) CPU tensors of shape `(B, n, n)` or `(n, n)`, compute
//!   internally in `f64` (the Cayley map of f32 input in f32) and return the input dtype.
//!   Non-contiguous inputs are accepted. Batches of at least [`PAR_MIN_BATCH`] items are processed
//!   in parallel with rayon; every batch item is computed independently by the same sequential
//!   kernel, so results do not depend on the number of threads. Backward passes are written with
//!   ordinary tensor ops (the Cayley map's: per item, into one buffer) and are checked against
//!   finite differences in `tests/linalg.rs`.
//!
//! Where each job lives:
//! * `factor.rs`: `A = L Lᵀ` ([`cholesky_in_place`]) and `A⁻¹` by Gauss–Jordan elimination with
//!   partial pivoting ([`inverse_in_place`]) on slices, with the errors [`NotPositiveDefinite`]
//!   and [`Singular`].
//! * `solve.rs`: `L X = B` ([`solve_lower`]), `Lᵀ X = B` ([`solve_upper_t`]) and `‖L⁻¹ M‖²_F`
//!   ([`frobenius_sq_lower_solve`]) on slices.
//! * `cayley.rs`: the Cayley map of one item, `U = 2(I + A)⁻¹ − I` for `A = L − Lᵀ` (f32 by
//!   Gauss–Jordan without pivoting), its backward `Ā = −½ (I + U)ᵀ G (I + U)ᵀ` (the raw
//!   gradient is the strictly lower part of `Ā − Āᵀ`), and the packing of strictly lower entries.
//! * `batched.rs`: the per-item drivers over `(B, n, n)` CPU storage ([`PAR_MIN_BATCH`]).
//! * `ops.rs`: the candle custom ops, their backward passes and the public tensor functions
//!   (Cholesky backward `Ā = ½ (S + Sᵀ)`, `S = L⁻ᵀ Φ(Lᵀ L̄) L⁻¹`; inverse `Ā = −A⁻ᵀ G A⁻ᵀ`;
//!   triangular solve `B̄ = M⁻ᵀ X̄`, `M̄ = −B̄ Xᵀ`).
//! * [`upper`]: the Laplace factor in upper form.

mod batched;
mod cayley;
mod factor;
mod ops;
mod solve;
#[cfg(test)]
mod test_util;
pub mod upper;

pub use batched::PAR_MIN_BATCH;
pub(crate) use batched::map_items;
pub(crate) use cayley::{
    cayley_backward_packed_lower_f32, cayley_packed_lower_f32, pack_strict_lower, strict_lower_len,
    unpack_strict_lower,
};
pub use factor::{NotPositiveDefinite, Singular, cholesky_in_place, inverse_in_place};
pub use ops::{cayley_lower, cholesky, inverse, logdet_spd, solve_triangular};
pub use solve::{frobenius_sq_lower_solve, solve_lower, solve_upper_t};
