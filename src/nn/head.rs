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
use super::cpu_op::{CpuOp, Fused, Gradients, Input, Output, with_values};
use super::first_layer;
use super::kernels::{Mat, parts, run_parts, sgemm, split_even, split_rows_mut, sum_in_order};
use super::mlp::{
    LayerNorm, Mlp, affine_gradient_values, affine_into, layer_norm_gradients,
    layer_norm_gradients_into, layer_norm_into, leaky, leaky_derivative,
};
use anyhow::Result;
use candle_core::{CpuStorage::F32, Shape, Tensor};
use rand_chacha::ChaCha8Rng;
use std::borrow::Cow;
use std::ops::Range;
use std::sync::{Arc, Mutex};

/// The input rows r of a head op as (r.len() × d_in) values, borrowed or assembled.
type RowSource<'a> = dyn Fn(Range<usize>) -> Cow<'a, [f32]> + Sync + 'a;

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
        let y = x.reshape((lead, sizes[0]))?.apply_op2(&packed, Fused(op))?;
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

/// The factors [`Head::trace_all_gathered`] keeps between calls for a table that only grows.
#[derive(Default)]
pub struct TableFactors {
    centred: Option<first_layer::CentredTable>,
    heads: Vec<first_layer::HeadFactors>,
}

impl Head {
    /// [`Head::trace_all`] on the rows x_r = [table_{index[b]}, z_r] of one step (r = s·B + b
    /// for the n_Z = `samples` samples; z: (n_Z·B) × n values; table: (U, E) values), with the
    /// layer norm and first layer through the table (`nn::first_layer::forward`): the same
    /// values up to rounding, n·H_1 instead of (E + n)·H_1 multiply-adds per row and head.
    /// `factors` keeps the table rows' factors between calls, so that a table that only grows
    /// (the acting input cache's) is factored once per row; the caller gives the same heads at
    /// the same parameters with every call (a fresh `TableFactors` otherwise).
    pub fn trace_all_gathered(
        heads: &[(&Head, &[f32])],
        factors: &mut TableFactors,
        table: &[f32],
        index: &[u32],
        z: &[f32],
        samples: usize,
    ) -> Result<Vec<HeadTrace>> {
        let sizes = heads
            .iter()
            .map(|(h, _)| h.sizes())
            .collect::<Result<Vec<_>>>()?;
        let batch = index.len();
        let rows = samples * batch;
        let n = z.len() / rows.max(1);
        let d = sizes[0][0];
        if n * rows != z.len() || d <= n || sizes.iter().any(|s| s[0] != d) {
            anyhow::bail!(
                "gathered head traces: z of {} values for {rows} rows",
                z.len()
            );
        }
        let e = d - n;
        let table_rows = table.len() / e;
        if table_rows * e != table.len() || index.iter().any(|&u| u as usize >= table_rows) {
            anyhow::bail!("gathered head traces: an index into a table of {table_rows} rows");
        }
        let centred = factors
            .centred
            .get_or_insert_with(|| first_layer::CentredTable::new(&[], e));
        centred.extend(table);
        if factors.heads.is_empty() {
            factors.heads = sizes
                .iter()
                .zip(heads)
                .map(|(s, (_, p))| first_layer::HeadFactors::new(s, p, centred))
                .collect();
        }
        for ((f, s), (_, p)) in factors.heads.iter_mut().zip(&sizes).zip(heads) {
            f.extend(s, p, centred);
        }
        let gather = GatherSpec {
            index: index.to_vec(),
            samples,
            batch,
            width: e,
            table_rows,
        };
        let specs: Vec<(&[usize], &[f32])> = sizes
            .iter()
            .zip(heads)
            .map(|(s, (_, p))| (&s[..], *p))
            .collect();
        Ok(
            forward_many_factored(&specs, (&gather, table, centred), &factors.heads, z, rows)
                .into_iter()
                .map(|(layer_inputs, output)| HeadTrace {
                    rows,
                    layer_inputs,
                    output,
                })
                .collect(),
        )
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
    let d = heads[0].0[0];
    forward_many_with(
        heads,
        &|r: Range<usize>| Cow::Borrowed(&x[r.start * d..r.end * d]),
        rows,
    )
}

/// [`forward_many`] with the input rows of each part given by `x_rows` (rows r → their
/// (r.len() × d_in) values), for inputs assembled per part ([`SharedHeadsOp`]).
fn forward_many_with(
    heads: &[(&[usize], &[f32])],
    x_rows: &RowSource,
    rows: usize,
) -> Vec<(Vec<Vec<f32>>, Vec<f32>)> {
    forward_parts(
        heads,
        rows,
        x_rows,
        |x, _, (sizes, p), r, ys, out, serial| forward_rows(sizes, p, x, r.len(), ys, out, serial),
    )
}

/// [`forward_many_with`] on the rows x_r = [table_{g(r)}, z_r] of `gather`, the layer norm and
/// first layer through the table (`nn::first_layer::forward`; `factors`: one per head, for
/// every table row), the same values up to rounding.
fn forward_many_factored(
    heads: &[(&[usize], &[f32])],
    (gather, table, centred): (&GatherSpec, &[f32], &first_layer::CentredTable),
    factors: &[first_layer::HeadFactors],
    z: &[f32],
    rows: usize,
) -> Vec<(Vec<Vec<f32>>, Vec<f32>)> {
    let n = z.len() / rows.max(1);
    let norms = |r: Range<usize>| {
        let sources = r.clone().map(|row| gather.source(row)).collect();
        first_layer::RowNorms::new(table, centred, sources, &z[r.start * n..r.end * n])
    };
    forward_parts(
        heads,
        rows,
        &norms,
        |norms, h, (sizes, p), r, ys, out, serial| {
            let f = &factors[h];
            let (y0, rest) = ys.split_at_mut(1);
            let y1: &mut [f32] = match rest.first_mut() {
                Some(y1) => y1,
                None => out,
            };
            first_layer::forward(sizes, p, (centred, f), norms, y0[0], y1, serial);
            forward_layers_from(1, sizes, p, r.len(), ys, out, serial);
        },
    )
}

/// The forward of several heads on the same `rows` rows, split into contiguous parts between
/// the threads ([`parts`]; one part: the serial code, its products free to use the threads):
/// per part, `prepare` gives what the heads share (the input rows, or their layer norm
/// statistics), then `run` fills each head's (by its index) layer inputs and output for those
/// rows.
fn forward_parts<P>(
    heads: &[(&[usize], &[f32])],
    rows: usize,
    prepare: &(dyn Fn(Range<usize>) -> P + Sync),
    run: impl Fn(&P, usize, (&[usize], &[f32]), Range<usize>, &mut [&mut [f32]], &mut [f32], bool)
    + Sync
    + Send,
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
    let work: Vec<_> = ranges.iter().cloned().zip(views).collect();
    run_parts(work, |(r, views)| {
        let shared = prepare(r.clone());
        for (h, (&head, (mut ys, out))) in heads.iter().zip(views).enumerate() {
            run(&shared, h, head, r.clone(), &mut ys, out, serial);
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
    forward_layers_from(0, sizes, p, rows, ys, out, parallel);
}

/// The layers `first` + 1 … L of [`forward_rows`] (1-based), given their input y_first in
/// `ys[first]`.
fn forward_layers_from(
    first: usize,
    sizes: &[usize],
    p: &[f32],
    rows: usize,
    ys: &mut [&mut [f32]],
    out: &mut [f32],
    parallel: bool,
) {
    let (offsets, _) = param_offsets(sizes);
    let layers = offsets.len();
    for (l, &(w, b)) in offsets.iter().enumerate().skip(first) {
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

/// The backward of [`HeadOp`] for the rows `r` of its input x (d_in wide; `x` holds the rows
/// from `x_first` on) and output gradient `grad` (d_L wide), on the calling thread: writes the
/// rows' ∂L/∂x into `dx` and returns the rows' part of the packed parameters' gradient
/// (`parallel` as in [`forward_rows`]).
#[allow(clippy::too_many_arguments)]
fn backward_rows(
    sizes: &[usize],
    p: &[f32],
    saved: &[Vec<f32>],
    (x, x_first): (&[f32], usize),
    grad: &[f32],
    r: std::ops::Range<usize>,
    dx: &mut [f32],
    parallel: bool,
) -> Vec<f32> {
    let d = sizes[0];
    let mut dp = vec![0f32; param_offsets(sizes).1];
    let g = backward_layers(sizes, p, saved, grad, r.clone(), 0, &mut dp, parallel);
    let x = &x[(r.start - x_first) * d..(r.end - x_first) * d];
    let (dgamma, dbeta) = layer_norm_gradients_into(x, &p[..d], &g, d, dx);
    dp[..d].copy_from_slice(&dgamma);
    dp[d..2 * d].copy_from_slice(&dbeta);
    dp
}

/// The chain rule of [`HeadOp`]'s backward through the layers L … `first` + 1 (1-based, as in
/// the module docs) for the rows `r`: writes δW_l, δb_l of those layers into `dp` (the packed
/// parameters' gradient) and returns ∂L/∂y_first (rows × d_first), the gradient at the input
/// of layer `first` + 1 (`first` = 0: at the layer norm's output).
#[allow(clippy::too_many_arguments)]
fn backward_layers(
    sizes: &[usize],
    p: &[f32],
    saved: &[Vec<f32>],
    grad: &[f32],
    r: std::ops::Range<usize>,
    first: usize,
    dp: &mut [f32],
    parallel: bool,
) -> Vec<f32> {
    let (layers, _) = param_offsets(sizes);
    let rows = r.len();
    let out_width = *sizes.last().unwrap();
    let mut g = grad[r.start * out_width..r.end * out_width].to_vec();
    for (l, &(w, b)) in layers.iter().enumerate().rev().take(layers.len() - first) {
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
    g
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

impl CpuOp<2> for HeadOp {
    fn name(&self) -> &'static str {
        "head"
    }

    fn forward(&self, [x, packed]: [Input; 2]) -> Output {
        let (rows, d) = x.shape().dims2()?;
        let (layers, total) = param_offsets(&self.sizes);
        if d != self.sizes[0] || packed.shape().elem_count() != total {
            candle_core::bail!(
                "head: input {:?} and {} packed parameters do not fit the sizes {:?}",
                x.dims(),
                packed.shape().elem_count(),
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
                let (p, x) = (packed.values()?, x.values()?);
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
            F32(output),
            Shape::from((rows, *self.sizes.last().unwrap())),
        ))
    }

    fn backward(&self, [x, packed]: [&Tensor; 2], _y: &Tensor, grad: &Tensor) -> Gradients<2> {
        let (rows, d) = x.dims2()?;
        let (_, total) = param_offsets(&self.sizes);
        let guard = self.saved.lock().expect("head: saved activations");
        let Some(trace) = guard.as_ref() else {
            candle_core::bail!("head: the backward ran before the forward");
        };
        let saved = &trace.layer_inputs;
        // Rows are independent except for the parameters' gradient, a sum over rows: with
        // several threads each part of the rows gives its share, added in the parts' order
        // (deterministic for a given thread count; one part: the serial code).
        let mut dx = vec![0f32; rows * d];
        let dp = with_values([packed, grad, x], |[p, g, xv]| {
            let ranges = split_even(rows, parts(rows));
            let serial = ranges.len() == 1;
            let dxs = split_rows_mut(&mut dx, d, &ranges);
            let work: Vec<_> = ranges.into_iter().zip(dxs).collect();
            let shares = run_parts(work, |(r, dx)| {
                backward_rows(&self.sizes, p, saved, (xv, 0), g, r, dx, serial)
            });
            Ok(sum_in_order(shares))
        })?;
        debug_assert_eq!(dp.len(), total);
        let dev = x.device();
        Ok([
            Some(Tensor::from_vec(dx, (rows, d), dev)?),
            Some(Tensor::from_vec(dp, total, dev)?),
        ])
    }
}

// ---------------------------------------------------------------------------------------------
// Several heads on one input, its state part gathered
// ---------------------------------------------------------------------------------------------

/// The leading part of the heads' input rows, gathered from a table of distinct rows: row r of
/// the input (rows in (T, n_Z, B) order, r = (t·n_Z + s)·B + b) starts with row
/// g(r) = `index[t·B + b]` of `table` (U, E) — the embedding of s_t of task b, which its n_Z
/// samples share — and ends with z_r. Without an index the table has one row per (t, b):
/// g(r) = t·B + b.
pub struct Gathered<'a> {
    /// (U, E).
    pub table: &'a Tensor,
    /// T·B entries, t-major; None: g(r) = t·B + b.
    pub index: Option<&'a [u32]>,
    /// n_Z.
    pub samples: usize,
    /// B.
    pub batch: usize,
}

impl Head {
    /// Several heads on the same input rows x_r = [table_{g(r)}, z_r] (with `gathered`, see
    /// [`Gathered`]) or x_r = z_r, as one graph node: head h's output (rows, d_L) equals
    /// `heads[h].forward(x)` on the concatenated, broadcast input, which is never formed. Its
    /// backward is [`HeadOp`]'s per head, the input gradients summed over the heads,
    /// ∂L/∂x_r = Σ_h ∂L_h/∂x_r, then split: ∂L/∂z_r = (∂L/∂x_r)[E..] and
    /// ∂L/∂table_u = Σ_{r: g(r) = u} (∂L/∂x_r)[..E] (rows added in order). This replaces the
    /// graph `cat([broadcast(index_select(table)), z])` → reshape → one node per head, each of
    /// whose nodes candle's backward zero-fills and adds a (rows × d_in) gradient for.
    /// `z` is (…, n) with the rows in its leading dimensions. With `traces` (one per head, of
    /// these rows at these parameters, the caller's responsibility) the forward values are
    /// taken from them and only the backward runs. Tested against the unfused graph in
    /// `tests/fast_path_speed.rs`.
    pub fn forward_shared(
        heads: &[&Head],
        gathered: Option<&Gathered>,
        z: &Tensor,
        traces: Option<Vec<Arc<HeadTrace>>>,
    ) -> Result<Vec<Tensor>> {
        let n = z.dim(candle_core::D::Minus1)?;
        let rows = z.elem_count() / n.max(1);
        let sizes = heads
            .iter()
            .map(|h| h.sizes())
            .collect::<Result<Vec<_>>>()?;
        let gather = match gathered {
            Some(g) => {
                let (u, width) = g.table.dims2()?;
                let steps = rows / (g.samples * g.batch).max(1);
                if steps * g.samples * g.batch != rows {
                    anyhow::bail!(
                        "shared heads: {rows} rows are not (T, {}, {})",
                        g.samples,
                        g.batch
                    );
                }
                let index = match g.index {
                    Some(idx) => {
                        if idx.len() != steps * g.batch || idx.iter().any(|&i| i as usize >= u) {
                            anyhow::bail!(
                                "shared heads: an index of {} rows into {u} for {steps} × {} rows",
                                idx.len(),
                                g.batch
                            );
                        }
                        idx.to_vec()
                    }
                    None => {
                        if u != steps * g.batch {
                            anyhow::bail!(
                                "shared heads: a table of {u} rows for {steps} × {} rows",
                                g.batch
                            );
                        }
                        (0..u as u32).collect()
                    }
                };
                Some(GatherSpec {
                    index,
                    samples: g.samples,
                    batch: g.batch,
                    width,
                    table_rows: u,
                })
            }
            None => None,
        };
        let d = n + gather.as_ref().map_or(0, |g| g.width);
        if let Some(s) = sizes.iter().find(|s| s[0] != d) {
            anyhow::bail!(
                "shared heads: a head of input width {} for rows of {d}",
                s[0]
            );
        }
        let packed = heads
            .iter()
            .map(|h| h.packed())
            .collect::<Result<Vec<_>>>()?;
        let packed = Tensor::cat(&packed, 0)?;
        let outputs: Vec<usize> = sizes.iter().map(|s| *s.last().unwrap()).collect();
        let op = SharedHeadsOp {
            sizes,
            gather,
            z_width: n,
            saved: Mutex::new(traces),
        };
        let y = match gathered {
            Some(g) => g.table.apply_op3(z, &packed, Fused(op))?,
            None => z.apply_op2(&packed, Fused(op))?,
        };
        let mut at = 0;
        let mut out = vec![];
        for width in outputs {
            out.push(y.narrow(0, at, rows * width)?.reshape((rows, width))?);
            at += rows * width;
        }
        Ok(out)
    }
}

/// [`Gathered`] as the op keeps it (the index always present).
struct GatherSpec {
    index: Vec<u32>,
    samples: usize,
    batch: usize,
    /// E.
    width: usize,
    /// U.
    table_rows: usize,
}

impl GatherSpec {
    /// g(r) of [`Gathered`].
    fn source(&self, r: usize) -> usize {
        let (t, b) = (r / (self.samples * self.batch), r % self.batch);
        self.index[t * self.batch + b] as usize
    }
}

/// The heads of [`Head::forward_shared`]: inputs ([table,] z, packed parameters of all heads,
/// one after the other); output the heads' outputs one after the other, flat.
struct SharedHeadsOp {
    sizes: Vec<Vec<usize>>,
    gather: Option<GatherSpec>,
    /// n.
    z_width: usize,
    /// The forward's values per head (see [`HeadOp::saved`]).
    saved: Mutex<Option<Vec<Arc<HeadTrace>>>>,
}

impl SharedHeadsOp {
    /// Where each head's packed parameters start, and their total length.
    fn param_starts(&self) -> (Vec<usize>, usize) {
        let mut starts = vec![];
        let mut at = 0;
        for s in &self.sizes {
            starts.push(at);
            at += param_offsets(s).1;
        }
        (starts, at)
    }

    /// With few distinct table rows for these `rows` rows (`first_layer::pays`), the factors
    /// through which the heads' layer norm and first layer run (`nn::first_layer`): the
    /// gather, the centred table and one [`first_layer::HeadFactors`] per head; None: the
    /// generic passes on assembled rows.
    fn table_factors<'s>(
        &'s self,
        table: &[f32],
        packed: &[f32],
        rows: usize,
    ) -> Option<(
        &'s GatherSpec,
        first_layer::CentredTable,
        Vec<first_layer::HeadFactors>,
    )> {
        let g = self.gather.as_ref()?;
        if !first_layer::pays(g.table_rows, rows) {
            return None;
        }
        let centred = first_layer::CentredTable::new(table, g.width);
        let (starts, _) = self.param_starts();
        let heads = self
            .sizes
            .iter()
            .zip(&starts)
            .map(|(s, &at)| first_layer::HeadFactors::new(s, &packed[at..], &centred))
            .collect();
        Some((g, centred, heads))
    }

    /// Rows `r` of the input x_r = [table_{g(r)}, z_r] (or z_r) as values.
    fn assemble<'a>(&self, table: &[f32], z: &'a [f32], r: Range<usize>) -> Cow<'a, [f32]> {
        let n = self.z_width;
        let Some(g) = &self.gather else {
            return Cow::Borrowed(&z[r.start * n..r.end * n]);
        };
        let (e, d) = (g.width, g.width + n);
        let mut x = vec![0f32; r.len() * d];
        for (row, dst) in r.zip(x.chunks_mut(d)) {
            let u = g.source(row);
            dst[..e].copy_from_slice(&table[u * e..(u + 1) * e]);
            dst[e..].copy_from_slice(&z[row * n..(row + 1) * n]);
        }
        Cow::Owned(x)
    }

    fn forward_heads(&self, table: &[f32], z: &[f32], rows: usize, packed: &[f32]) -> Output {
        let (starts, total) = self.param_starts();
        if packed.len() != total || z.len() != rows * self.z_width {
            candle_core::bail!("shared heads: the inputs do not fit the heads");
        }
        let mut saved = self.saved.lock().expect("shared heads: saved activations");
        let output: Vec<f32> = match saved.as_ref() {
            Some(traces) => {
                let fits = traces.len() == self.sizes.len()
                    && traces
                        .iter()
                        .zip(&self.sizes)
                        .all(|(t, s)| t.rows == rows && t.layer_inputs.len() == s.len() - 1);
                if !fits {
                    candle_core::bail!("shared heads: the traces do not fit {rows} rows");
                }
                traces
                    .iter()
                    .flat_map(|t| t.output.iter().copied())
                    .collect()
            }
            None => {
                let specs: Vec<(&[usize], &[f32])> = self
                    .sizes
                    .iter()
                    .zip(&starts)
                    .map(|(s, &at)| (&s[..], &packed[at..at + param_offsets(s).1]))
                    .collect();
                let results = match self.table_factors(table, packed, rows) {
                    Some((g, centred, factors)) => {
                        forward_many_factored(&specs, (g, table, &centred), &factors, z, rows)
                    }
                    None => {
                        let source = |r: Range<usize>| self.assemble(table, z, r);
                        forward_many_with(&specs, &source, rows)
                    }
                };
                let mut output = vec![];
                let mut traces = vec![];
                for (layer_inputs, out) in results {
                    output.extend_from_slice(&out);
                    traces.push(Arc::new(HeadTrace {
                        rows,
                        layer_inputs,
                        output: vec![],
                    }));
                }
                *saved = Some(traces);
                output
            }
        };
        let len = output.len();
        Ok((F32(output), Shape::from(len)))
    }

    /// (∂L/∂table or empty, ∂L/∂z, ∂L/∂packed) for the output gradient `grad`.
    fn backward_heads(
        &self,
        table: &[f32],
        z: &[f32],
        packed: &[f32],
        grad: &[f32],
    ) -> candle_core::Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
        let n = self.z_width;
        let rows = z.len() / n.max(1);
        let (starts, total) = self.param_starts();
        let guard = self.saved.lock().expect("shared heads: saved activations");
        let Some(traces) = guard.as_ref() else {
            candle_core::bail!("shared heads: the backward ran before the forward");
        };
        let (e, table_rows) = self
            .gather
            .as_ref()
            .map_or((0, 0), |g| (g.width, g.table_rows));
        let d = e + n;
        let mut out_starts = vec![];
        let mut at = 0;
        for s in &self.sizes {
            out_starts.push(at);
            at += rows * s.last().unwrap();
        }
        if grad.len() != at {
            candle_core::bail!(
                "shared heads: an output gradient of {} for {at}",
                grad.len()
            );
        }
        // Rows are independent except for the parameters' and the table's gradients, sums
        // over rows: with several threads each part of the rows gives its share, added in the
        // parts' order (deterministic for a given thread count; one part: the serial code).
        let mut dz = vec![0f32; rows * n];
        let ranges = split_even(rows, parts(rows));
        let serial = ranges.len() == 1;
        let dzs = split_rows_mut(&mut dz, n, &ranges);
        let work: Vec<_> = ranges.into_iter().zip(dzs).collect();
        // Few distinct table rows: the layer norm and first layer through the table.
        let factored = self.table_factors(table, packed, rows);
        let shares = run_parts(work, |(r, dz)| {
            if let Some((g, centred, factors)) = &factored {
                let sources = r.clone().map(|row| g.source(row)).collect();
                let norms =
                    first_layer::RowNorms::new(table, centred, sources, &z[r.start * n..r.end * n]);
                let mut dtable = vec![0f32; table_rows * e];
                let mut dp = Vec::with_capacity(total);
                for (h, sizes) in self.sizes.iter().enumerate() {
                    let p = &packed[starts[h]..starts[h] + param_offsets(sizes).1];
                    let grad = &grad[out_starts[h]..out_starts[h] + rows * sizes.last().unwrap()];
                    let saved = &traces[h].layer_inputs;
                    let mut share = vec![0f32; param_offsets(sizes).1];
                    let g1 =
                        backward_layers(sizes, p, saved, grad, r.clone(), 1, &mut share, serial);
                    let h1 = sizes[1];
                    let y1 = (sizes.len() > 2).then(|| &saved[1][r.start * h1..r.end * h1]);
                    first_layer::backward(
                        sizes,
                        p,
                        (centred, &factors[h]),
                        &norms,
                        g1,
                        y1,
                        (&mut *dz, h > 0),
                        &mut share,
                        &mut dtable,
                        serial,
                    );
                    dp.extend_from_slice(&share);
                }
                return (dtable, dp);
            }
            let x = self.assemble(table, z, r.clone());
            let mut dx = vec![0f32; r.len() * d];
            let mut head_dx = vec![0f32; r.len() * d];
            let mut dp = Vec::with_capacity(total);
            for (h, sizes) in self.sizes.iter().enumerate() {
                let p = &packed[starts[h]..starts[h] + param_offsets(sizes).1];
                let g = &grad[out_starts[h]..out_starts[h] + rows * sizes.last().unwrap()];
                let target = if h == 0 { &mut dx } else { &mut head_dx };
                let share = backward_rows(
                    sizes,
                    p,
                    &traces[h].layer_inputs,
                    (&x, r.start),
                    g,
                    r.clone(),
                    target,
                    serial,
                );
                if h > 0 {
                    dx.iter_mut().zip(&head_dx).for_each(|(a, b)| *a += b);
                }
                dp.extend_from_slice(&share);
            }
            let mut dtable = vec![0f32; table_rows * e];
            for (k, (src, dst)) in dx.chunks(d).zip(dz.chunks_mut(n)).enumerate() {
                dst.copy_from_slice(&src[e..]);
                if let Some(g) = &self.gather {
                    let u = g.source(r.start + k);
                    dtable[u * e..(u + 1) * e]
                        .iter_mut()
                        .zip(&src[..e])
                        .for_each(|(t, v)| *t += v);
                }
            }
            (dtable, dp)
        });
        let (dtables, dps): (Vec<_>, Vec<_>) = shares.into_iter().unzip();
        Ok((sum_in_order(dtables), dz, sum_in_order(dps)))
    }
}

impl CpuOp<2> for SharedHeadsOp {
    fn name(&self) -> &'static str {
        "shared-heads"
    }

    fn forward(&self, [z, packed]: [Input; 2]) -> Output {
        let z = z.values()?;
        self.forward_heads(&[], &z, z.len() / self.z_width.max(1), &packed.values()?)
    }

    fn backward(&self, [z, packed]: [&Tensor; 2], _y: &Tensor, grad: &Tensor) -> Gradients<2> {
        let (_, dz, dp) = with_values([z, packed, grad], |[z, p, g]| {
            self.backward_heads(&[], z, p, g)
        })?;
        let dev = z.device();
        Ok([
            Some(Tensor::from_vec(dz, z.shape(), dev)?),
            Some(Tensor::from_vec(dp, packed.shape(), dev)?),
        ])
    }
}

impl CpuOp<3> for SharedHeadsOp {
    fn name(&self) -> &'static str {
        "shared-heads-gathered"
    }

    fn forward(&self, [table, z, packed]: [Input; 3]) -> Output {
        let (table, z) = (table.values()?, z.values()?);
        if let Some(g) = &self.gather
            && table.len() != g.table_rows * g.width
        {
            candle_core::bail!("shared heads: the table does not fit");
        }
        self.forward_heads(&table, &z, z.len() / self.z_width.max(1), &packed.values()?)
    }

    fn backward(
        &self,
        [table, z, packed]: [&Tensor; 3],
        _y: &Tensor,
        grad: &Tensor,
    ) -> Gradients<3> {
        let (dt, dz, dp) = with_values([table, z, packed, grad], |[t, z, p, g]| {
            self.backward_heads(t, z, p, g)
        })?;
        let dev = z.device();
        Ok([
            Some(Tensor::from_vec(dt, table.shape(), dev)?),
            Some(Tensor::from_vec(dz, z.shape(), dev)?),
            Some(Tensor::from_vec(dp, packed.shape(), dev)?),
        ])
    }
}
