//! A prediction head (paper App. B.1): layer norm of the input, an MLP (256, 256, 64) with
//! leaky-ReLU, then a linear output, run as one graph node.
//!
//! The heads see every row of a loss pass (T·B·n_Z of them), and candle's backward adds each
//! node's gradient into a fresh zero tensor: as a chain of five nodes (layer norm, four affine
//! layers) a head cost five (rows × width) zero-fills and additions per backward pass, ~10% of
//! an update. `HeadOp` is the same computation as one node whose backward applies the chain
//! rule through the layers in reverse:
//!
//!   y_0 = LN(x),  y_l = act_l(y_{l−1} W_l + b_l)  (act = leaky-ReLU, identity for the last),
//!   δz_l = δy_l ∘ act_l′,  δW_l = y_{l−1}ᵀ δz_l,  δb_l = Σ_rows δz_l,  δy_{l−1} = δz_l W_lᵀ,
//!
//! then layer norm's backward on δy_0. [`Head::forward_layers`] composes the one-layer ops and
//! is the reference the fused node is tested against.
//!
//! A rollout runs the heads on every step's rows at the parameters the following gradient step
//! differentiates at, so [`Head::trace`] keeps that forward's layer inputs ([`HeadTrace`]) and
//! [`Head::forward_traced`] builds the loss pass's node from them: the loss pass then runs only
//! the heads' backward (`train::ppo`).

use super::Params;
use super::kernels::logical;
use super::kernels::{Mat, parts, run_parts, sgemm, split_even, split_rows_mut, sum_in_order};
use super::mlp::{
    LayerNorm, Mlp, affine_gradient_values, affine_into, f32_values, layer_norm_gradients,
    layer_norm_gradients_into, layer_norm_into, leaky, leaky_derivative,
};
use anyhow::Result;
use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};
use rand_chacha::ChaCha8Rng;
use std::sync::{Arc, Mutex};

/// Layer norm of the input, then an MLP with leaky-ReLU hidden layers and a linear output.
#[derive(Clone)]
pub struct Head {
    norm: LayerNorm,
    mlp: Mlp,
}

impl Head {
    pub fn new(
        p: &mut Params,
        name: &str,
        d_in: usize,
        hidden: &[usize],
        d_out: usize,
        rng: &mut ChaCha8Rng,
    ) -> Result<Self> {
        let norm = LayerNorm::new(p, &format!("{name}.norm"), d_in)?;
        let mut sizes = vec![d_in];
        sizes.extend_from_slice(hidden);
        sizes.push(d_out);
        Ok(Self {
            norm,
            mlp: Mlp::new(p, &format!("{name}.mlp"), &sizes, rng)?,
        })
    }

    /// The head on (…, d_in) inputs as one node (`HeadOp`).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.apply(x, None)
    }

    /// The same head as a chain of one-layer nodes (layer norm, then the affine layers): the
    /// reference for [`Head::forward`].
    pub fn forward_layers(&self, x: &Tensor) -> Result<Tensor> {
        self.mlp.forward(&self.norm.forward(x)?)
    }

    /// [`Head::forward`] whose forward values are taken from `trace`, a [`Head::trace`] of the
    /// same inputs at the same parameters (the caller's responsibility): only the backward runs.
    pub fn forward_traced(&self, x: &Tensor, trace: Arc<HeadTrace>) -> Result<Tensor> {
        self.apply(x, Some(trace))
    }

    fn apply(&self, x: &Tensor, trace: Option<Arc<HeadTrace>>) -> Result<Tensor> {
        let packed = self.packed()?;
        let sizes = self.sizes()?;
        let dims = x.dims().to_vec();
        let lead: usize = dims[..dims.len() - 1].iter().product();
        let op = HeadOp {
            sizes: sizes.clone(),
            saved: Mutex::new(trace),
        };
        let y = x.reshape((lead, sizes[0]))?.apply_op2(&packed, op)?;
        let mut out = dims;
        *out.last_mut().unwrap() = *sizes.last().unwrap();
        Ok(y.reshape(out)?)
    }

    /// [d_in, d_1, …, d_L].
    fn sizes(&self) -> Result<Vec<usize>> {
        let mut sizes = vec![self.norm.scale.dim(0)?];
        for layer in &self.mlp.layers {
            sizes.push(layer.weight.dim(1)?);
        }
        Ok(sizes)
    }

    /// The parameters packed as [`HeadOp`] reads them: [γ, β, W_1, b_1, …, W_L, b_L].
    fn packed(&self) -> Result<Tensor> {
        let mut parts = vec![self.norm.scale.clone(), self.norm.offset.clone()];
        for layer in &self.mlp.layers {
            parts.push(layer.weight.flatten_all()?);
            parts.push(layer.bias.clone());
        }
        Ok(Tensor::cat(&parts, 0)?)
    }

    /// The packed parameters as plain values (for [`Head::trace`]).
    pub fn packed_values(&self) -> Result<Vec<f32>> {
        Ok(self.packed()?.to_vec1()?)
    }

    /// The head's forward on `rows` rows of plain values x (rows × d_in), without a graph,
    /// given its [`Head::packed_values`]: the output and the layer inputs.
    pub fn trace(&self, packed: &[f32], x: &[f32], rows: usize) -> Result<HeadTrace> {
        Ok(Head::trace_all(&[(self, packed)], x, rows)?.remove(0))
    }

    /// [`Head::trace`] of several heads with the same input width on the same rows.
    pub fn trace_all(heads: &[(&Head, &[f32])], x: &[f32], rows: usize) -> Result<Vec<HeadTrace>> {
        let sizes = heads
            .iter()
            .map(|(h, _)| h.sizes())
            .collect::<Result<Vec<_>>>()?;
        if sizes.iter().any(|s| s[0] != sizes[0][0]) {
            anyhow::bail!("head traces on the same rows need the same input width");
        }
        let specs: Vec<(&[usize], &[f32])> = sizes
            .iter()
            .zip(heads)
            .map(|(s, (_, p))| (&s[..], *p))
            .collect();
        Ok(forward_many(&specs, x, rows)
            .into_iter()
            .map(|(layer_inputs, output)| HeadTrace {
                rows,
                layer_inputs,
                output,
            })
            .collect())
    }
}

impl Head {
    /// The head's output and its gradient with respect to the input, for a head with one
    /// output, on `rows` rows of plain values x (rows × d_in), given its
    /// [`Head::packed_values`]: returns (y (rows), ∂y/∂x (rows × d_in)). The chain rule of
    /// [`HeadOp`]'s backward with δy = 1 and only the input gradients:
    /// δy_{l−1} = (δy_l ∘ act_l′) W_lᵀ, then layer norm's backward on δy_0. The linearised
    /// predictive (`eval`) takes the Jacobian of the mean with respect to z from it.
    pub fn input_gradient(
        &self,
        packed: &[f32],
        x: &[f32],
        rows: usize,
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        let sizes = self.sizes()?;
        if *sizes.last().unwrap() != 1 {
            anyhow::bail!(
                "head: input_gradient needs a head with one output (this one has {})",
                sizes.last().unwrap()
            );
        }
        let d = sizes[0];
        let (layers, _) = param_offsets(&sizes);
        let (saved, output) = forward_values(&sizes, packed, x, rows);
        let mut g = vec![1f32; rows];
        for (l, &(w, _)) in layers.iter().enumerate().rev() {
            let (k, n) = (sizes[l], sizes[l + 1]);
            if l + 1 < layers.len() {
                g.iter_mut()
                    .zip(saved[l + 1].iter())
                    .for_each(|(g, y)| *g *= leaky_derivative(*y));
            }
            let mut gx = vec![0f32; rows * k];
            sgemm(
                rows,
                k,
                n,
                Mat::rows(&g, n),
                Mat::rows_t(&packed[w..w + k * n], n),
                &mut gx,
                false,
                true,
            );
            g = gx;
        }
        let (dx, _, _) = layer_norm_gradients(x, &packed[..d], &g, d);
        Ok((output, dx))
    }
}

/// A head's forward on some rows as plain values: the layer inputs y_0 … y_{L−1} (rows × d_l
/// each) and the output (rows × d_L).
#[derive(Default)]
pub struct HeadTrace {
    pub rows: usize,
    pub layer_inputs: Vec<Vec<f32>>,
    pub output: Vec<f32>,
}

impl HeadTrace {
    /// Makes room for `rows` rows in all (a no-op before the first rows are in).
    pub fn reserve_rows(&mut self, rows: usize) {
        let have = self.rows.max(1);
        for v in self.layer_inputs.iter_mut().chain([&mut self.output]) {
            v.reserve((v.len() / have) * rows.saturating_sub(self.rows));
        }
    }

    /// Appends the rows of `other` (a trace of the same head) after this trace's rows.
    pub fn append(&mut self, other: HeadTrace) {
        if self.layer_inputs.is_empty() {
            *self = other;
            return;
        }
        for (mine, theirs) in self.layer_inputs.iter_mut().zip(other.layer_inputs) {
            mine.extend(theirs);
        }
        self.output.extend(other.output);
        self.rows += other.rows;
    }
}

/// Where each layer's (W_l, b_l) starts in the packed parameters [γ, β, W_1, b_1, …] of a head
/// with layer sizes `sizes`, and the packed length.
fn param_offsets(sizes: &[usize]) -> (Vec<(usize, usize)>, usize) {
    let mut at = 2 * sizes[0];
    let mut layers = vec![];
    for w in sizes.windows(2) {
        layers.push((at, at + w[0] * w[1]));
        at += w[0] * w[1] + w[1];
    }
    (layers, at)
}

/// The forward of [`HeadOp`] on plain values: the layer inputs y_0 … y_{L−1} and the output.
/// Rows are independent: with several threads each computes a contiguous part of them
/// ([`parts`]; one part: the serial code, its products free to use the threads).
fn forward_values(sizes: &[usize], p: &[f32], x: &[f32], rows: usize) -> (Vec<Vec<f32>>, Vec<f32>) {
    forward_many(&[(sizes, p)], x, rows).remove(0)
}

/// [`forward_values`] of several heads on the same input rows, each part of the rows running
/// all of them (one parallel region instead of one per head).
fn forward_many(
    heads: &[(&[usize], &[f32])],
    x: &[f32],
    rows: usize,
) -> Vec<(Vec<Vec<f32>>, Vec<f32>)> {
    let mut results: Vec<(Vec<Vec<f32>>, Vec<f32>)> = heads
        .iter()
        .map(|(sizes, _)| {
            let layers = sizes.len() - 1;
            let saved = sizes[..layers]
                .iter()
                .map(|d| vec![0f32; rows * d])
                .collect();
            (saved, vec![0f32; rows * sizes[layers]])
        })
        .collect();
    let ranges = split_even(rows, parts(rows));
    let serial = ranges.len() == 1;
    // Per part and head: its rows of every layer input and of the output.
    type Views<'a> = Vec<(Vec<&'a mut [f32]>, &'a mut [f32])>;
    let mut views: Vec<Views> = ranges.iter().map(|_| vec![]).collect();
    for ((saved, output), (sizes, _)) in results.iter_mut().zip(heads) {
        let mut ys: Vec<Vec<&mut [f32]>> = ranges.iter().map(|_| vec![]).collect();
        for (buf, width) in saved.iter_mut().zip(sizes.iter()) {
            for (part, rows) in ys.iter_mut().zip(split_rows_mut(buf, *width, &ranges)) {
                part.push(rows);
            }
        }
        let outputs = split_rows_mut(output, *sizes.last().unwrap(), &ranges);
        for (part, view) in views.iter_mut().zip(ys.into_iter().zip(outputs)) {
            part.push(view);
        }
    }
    let d = heads[0].0[0];
    let work: Vec<_> = ranges.iter().cloned().zip(views).collect();
    run_parts(work, |(r, views)| {
        let x = &x[r.start * d..r.end * d];
        for ((sizes, p), (mut ys, out)) in heads.iter().zip(views) {
            forward_rows(sizes, p, x, r.len(), &mut ys, out, serial);
        }
    });
    results
}

/// [`forward_values`] of `rows` rows on the calling thread into the layer inputs `ys` and the
/// output `out` (`parallel`: whether the matrix products may use the other threads).
fn forward_rows(
    sizes: &[usize],
    p: &[f32],
    x: &[f32],
    rows: usize,
    ys: &mut [&mut [f32]],
    out: &mut [f32],
    parallel: bool,
) {
    let d = sizes[0];
    layer_norm_into(x, &p[..d], &p[d..2 * d], d, ys[0]);
    let (offsets, _) = param_offsets(sizes);
    let layers = offsets.len();
    for (l, &(w, b)) in offsets.iter().enumerate() {
        let (k, n) = (sizes[l], sizes[l + 1]);
        let (w, b) = (&p[w..w + k * n], &p[b..b + n]);
        let (inputs, rest) = ys.split_at_mut(l + 1);
        let y = &*inputs[l];
        if l + 1 < layers {
            affine_into(y, w, b, (rows, k, n), leaky, rest[0], parallel);
        } else {
            affine_into(y, w, b, (rows, k, n), |z| z, out, parallel);
        }
    }
}

/// The backward of [`HeadOp`] for the rows `r` of its input x (d_in wide) and output gradient
/// `grad` (d_L wide), on the calling thread: writes the rows' ∂L/∂x into `dx` and returns the
/// rows' part of the packed parameters' gradient (`parallel` as in [`forward_rows`]).
#[allow(clippy::too_many_arguments)]
fn backward_rows(
    sizes: &[usize],
    p: &[f32],
    saved: &[Vec<f32>],
    x: &[f32],
    grad: &[f32],
    r: std::ops::Range<usize>,
    dx: &mut [f32],
    parallel: bool,
) -> Vec<f32> {
    let (layers, total) = param_offsets(sizes);
    let (d, rows) = (sizes[0], r.len());
    let mut dp = vec![0f32; total];
    let out_width = *sizes.last().unwrap();
    let mut g = grad[r.start * out_width..r.end * out_width].to_vec();
    for (l, &(w, b)) in layers.iter().enumerate().rev() {
        let (k, n) = (sizes[l], sizes[l + 1]);
        if l + 1 < layers.len() {
            // y_l = leaky(z_l) has the sign of z_l, so act′ is read from the output.
            let out = &saved[l + 1][r.start * n..r.end * n];
            g.iter_mut()
                .zip(out.iter())
                .for_each(|(g, y)| *g *= leaky_derivative(*y));
        }
        let input = &saved[l][r.start * k..r.end * k];
        let (gx, gw, gb) =
            affine_gradient_values(input, &p[w..w + k * n], &g, (rows, k, n), parallel);
        dp[w..w + k * n].copy_from_slice(&gw);
        dp[b..b + n].copy_from_slice(&gb);
        g = gx;
    }
    let x = &x[r.start * d..r.end * d];
    let (dgamma, dbeta) = layer_norm_gradients_into(x, &p[..d], &g, d, dx);
    dp[..d].copy_from_slice(&dgamma);
    dp[d..2 * d].copy_from_slice(&dbeta);
    dp
}

/// The head of [`Head::forward`] as one op on (rows, d_in) inputs and the parameters packed as
/// [γ, β, W_1, b_1, …, W_L, b_L] (row-major W_l of shape (d_{l−1}, d_l)).
struct HeadOp {
    /// [d_in, d_1, …, d_L].
    sizes: Vec<usize>,
    /// The forward's values: set by the forward, or given beforehand by
    /// [`Head::forward_traced`], in which case the forward only returns its output.
    saved: Mutex<Option<Arc<HeadTrace>>>,
}

impl CustomOp2 for HeadOp {
    fn name(&self) -> &'static str {
        "head"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (rows, d) = l1.shape().dims2()?;
        let (layers, total) = param_offsets(&self.sizes);
        if d != self.sizes[0] || l2.shape().elem_count() != total {
            candle_core::bail!(
                "head: input {:?} and {} packed parameters do not fit the sizes {:?}",
                l1.dims(),
                l2.shape().elem_count(),
                self.sizes
            );
        }
        let mut saved = self.saved.lock().expect("head: saved activations");
        let output = match saved.as_ref() {
            Some(trace) => {
                if trace.rows != rows || trace.layer_inputs.len() != layers.len() {
                    candle_core::bail!(
                        "head: a trace of {} rows and {} layers given for {rows} rows and {} layers",
                        trace.rows,
                        trace.layer_inputs.len(),
                        layers.len()
                    );
                }
                trace.output.clone()
            }
            None => {
                let p = logical(s2.as_slice::<f32>()?, l2);
                let x = logical(s1.as_slice::<f32>()?, l1);
                let (layer_inputs, output) = forward_values(&self.sizes, &p, &x, rows);
                *saved = Some(Arc::new(HeadTrace {
                    rows,
                    layer_inputs,
                    output: vec![],
                }));
                output
            }
        };
        Ok((
            CpuStorage::F32(output),
            Shape::from((rows, *self.sizes.last().unwrap())),
        ))
    }

    fn bwd(
        &self,
        x: &Tensor,
        packed: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (rows, d) = x.dims2()?;
        let (_, total) = param_offsets(&self.sizes);
        let guard = self.saved.lock().expect("head: saved activations");
        let Some(trace) = guard.as_ref() else {
            candle_core::bail!("head: the backward ran before the forward");
        };
        let saved = &trace.layer_inputs;
        let (ps, pl) = packed.storage_and_layout();
        let p = f32_values(&ps, pl)?;
        let (gs, gl) = grad.storage_and_layout();
        let g = f32_values(&gs, gl)?;
        let (xs, xl) = x.storage_and_layout();
        let xv = f32_values(&xs, xl)?;
        // Rows are independent except for the parameters' gradient, a sum over rows: with
        // several threads each part of the rows gives its share, added in the parts' order
        // (deterministic for a given thread count; one part: the serial code).
        let mut dx = vec![0f32; rows * d];
        let ranges = split_even(rows, parts(rows));
        let serial = ranges.len() == 1;
        let dxs = split_rows_mut(&mut dx, d, &ranges);
        let work: Vec<_> = ranges.into_iter().zip(dxs).collect();
        let shares = run_parts(work, |(r, dx)| {
            backward_rows(&self.sizes, &p, saved, &xv, &g, r, dx, serial)
        });
        let dp = sum_in_order(shares);
        debug_assert_eq!(dp.len(), total);
        let dev = x.device();
        Ok((
            Some(Tensor::from_vec(dx, (rows, d), dev)?),
            Some(Tensor::from_vec(dp, total, dev)?),
        ))
    }
}
