//! The fused LSTM sequence: one candle op whose forward runs the whole recurrence from the zero
//! carry and whose backward is hand-written backpropagation through time (what cuDNN does for
//! PyTorch), instead of a graph of ~20 small nodes per step.
//!
//! Only the recurrence is sequential: the caller computes the input projections
//! xw_t = x_t·W_x + b of every step as one large matrix product (in the graph), and this op adds
//! h_{t−1}·W_h and the gate nonlinearities step by step (gates i, f, g, o as in `nn::lstm`):
//!
//!   z_t = xw_t + h_{t−1} W_h,  i, f, o = σ(z_{i,f,o}),  g = tanh(z_g),
//!   c_t = f∘c_{t−1} + i∘g,     h_t = o∘tanh(c_t),        (c_0, h_0) = 0.
//!
//! Backward (BPTT), with δh_t = ∂L/∂h_t + δz_{t+1} W_hᵀ and δc_t = ∂L/∂c_t + δc_{t+1}∘f_{t+1}
//! + δh_t∘o_t∘(1 − tanh² c_t):
//!   δz_t = [δc_t∘g∘i(1−i), δc_t∘c_{t−1}∘f(1−f), δc_t∘i∘(1−g²), δh_t∘tanh(c_t)∘o(1−o)],
//!   ∂L/∂xw_t = δz_t,  ∂L/∂W_h = Σ_t h_{t−1}ᵀ δz_t  (one matrix product over all steps).
//!
//! The gates are recomputed in the backward pass from the saved outputs with one large matrix
//! product, so the op keeps no state — unless a rollout computed them at the same parameters
//! ([`lstm_sequence_known`]: the RL loss pass then runs neither the forward recurrence nor that
//! product). Checked against the per-step graph in `tests/fast_path.rs`.

use super::cpu_op::{CpuOp, Fused, Gradients, Input, Output, f32_values, with_values};
use super::kernels::{
    Mat, activate_gate_rows, lstm_cells, parts, run_parts, sgemm, split_even, split_rows_mut,
    split_steps_mut, sum_in_order, tanh,
};
use anyhow::Result;
use candle_core::{CpuStorage::F32, Shape, Tensor};
use std::borrow::Cow;
use std::sync::{Arc, Mutex};

/// The op; `steps` = T where xw comes as step-major rows (T·B, 4H), None for (T, B, 4H).
/// With `index` (T·B entries, `steps` set) xw holds distinct rows (U, 4H) and row t·B + b of
/// the sequence is xw row `index[t·B + b]`.
struct LstmSequence {
    steps: Option<usize>,
    index: Option<Arc<Vec<u32>>>,
    /// The forward's values computed beforehand ([`lstm_sequence_known`]).
    known: Option<Arc<SequenceTrace>>,
}

/// An LSTM sequence's values as a rollout computed them step by step ([`lstm_step`]): the
/// states [h_t, c_t] (T·B·2H, step-major) and the activated gates (T·B·4H). Each is handed
/// over once ([`lstm_sequence_known`]): the op's output takes the states and its backward the
/// gates, which it overwrites.
pub struct SequenceTrace {
    states: Mutex<Option<Vec<f32>>>,
    gates: Mutex<Option<Vec<f32>>>,
}

impl SequenceTrace {
    pub fn new(states: Vec<f32>, gates: Vec<f32>) -> Self {
        Self {
            states: Mutex::new(Some(states)),
            gates: Mutex::new(Some(gates)),
        }
    }

    /// The values of `part` (states or gates) if not yet taken and `len` long.
    fn take(part: &Mutex<Option<Vec<f32>>>, len: usize) -> Option<Vec<f32>> {
        let mut kept = part.lock().ok()?;
        match kept.as_ref() {
            Some(v) if v.len() == len => kept.take(),
            _ => None,
        }
    }
}

impl LstmSequence {
    /// (T, B, 4H) of an xw of shape (T, B, 4H), or (T·B, 4H) with `steps` = T (or (U, 4H)
    /// with an index of T·B rows).
    fn dims(&self, dims: &[usize]) -> candle_core::Result<(usize, usize, usize)> {
        if let (Some(index), Some(t), &[u, g]) = (&self.index, self.steps, dims) {
            let rows = index.len();
            if t == 0 || rows % t != 0 || index.iter().any(|&i| i as usize >= u) {
                candle_core::bail!(
                    "lstm-sequence: an index of {rows} rows into {u} for T = {t} does not fit"
                );
            }
            return Ok((t, rows / t, g));
        }
        match (dims, self.steps) {
            (&[t, b, g], None) => Ok((t, b, g)),
            (&[rows, g], Some(t)) if t > 0 && rows % t == 0 => Ok((t, rows / t, g)),
            _ => candle_core::bail!(
                "lstm-sequence: xw {dims:?} is neither (T, B, 4H) nor (T·B, 4H) for T = {:?}",
                self.steps
            ),
        }
    }
}

/// The outputs [h_t, c_t] for t = 1..T of the recurrence above: (T, B, 2H) from xw (T, B, 4H)
/// and W_h (H, 4H). Differentiable in both inputs (and in both halves of the output).
pub fn lstm_sequence(xw: &Tensor, wh: &Tensor) -> Result<Tensor> {
    let op = LstmSequence {
        steps: None,
        index: None,
        known: None,
    };
    Ok(xw.apply_op2(wh, Fused(op))?)
}

/// [`lstm_sequence`] for xw given as step-major rows (T·B, 4H) (row t·B + b: step t of task b),
/// without a reshape node in the graph (candle's backward zero-fills and adds a gradient buffer
/// for every node, and xw is the largest activation of a replay).
pub fn lstm_sequence_rows(xw: &Tensor, wh: &Tensor, steps: usize) -> Result<Tensor> {
    let op = LstmSequence {
        steps: Some(steps),
        index: None,
        known: None,
    };
    Ok(xw.apply_op2(wh, Fused(op))?)
}

/// [`lstm_sequence_rows`] for the rows xw_{t·B+b} = `distinct[index[t·B + b]]` gathered from
/// distinct rows (U, 4H) inside the op: ∂L/∂distinct_u = Σ_{r: index[r] = u} δz_r (rows added
/// in order), without the gathered (T·B, 4H) rows in the graph (candle's backward would
/// zero-fill and add a gradient buffer of that size for them).
pub fn lstm_sequence_gathered(
    distinct: &Tensor,
    index: Arc<Vec<u32>>,
    wh: &Tensor,
    steps: usize,
) -> Result<Tensor> {
    let op = LstmSequence {
        steps: Some(steps),
        index: Some(index),
        known: None,
    };
    Ok(distinct.apply_op2(wh, Fused(op))?)
}

/// [`lstm_sequence_gathered`] (or, without an index, [`lstm_sequence_rows`]) whose values are
/// `known`'s, computed beforehand from the same inputs and W_h (a rollout's, at the same
/// parameters: the caller's responsibility): the forward returns its states and the backward
/// starts from its gates instead of recomputing them with a (T·B × H)·(H × 4H) product. A
/// part already taken (a second pass over the same trace) is computed as without it.
pub fn lstm_sequence_known(
    xw: &Tensor,
    index: Option<Arc<Vec<u32>>>,
    wh: &Tensor,
    steps: usize,
    known: Arc<SequenceTrace>,
) -> Result<Tensor> {
    let op = LstmSequence {
        steps: Some(steps),
        index,
        known: Some(known),
    };
    Ok(xw.apply_op2(wh, Fused(op))?)
}

/// The rows `rows` of the sequence's xw (each 4H wide): `xw` itself, or its rows gathered
/// through `index`.
fn sequence_rows<'a>(
    xw: &'a [f32],
    index: Option<&[u32]>,
    rows: std::ops::Range<usize>,
    g4: usize,
) -> Cow<'a, [f32]> {
    match index {
        None => Cow::Borrowed(&xw[rows.start * g4..rows.end * g4]),
        Some(index) => {
            let mut out = Vec::with_capacity(rows.len() * g4);
            for &u in &index[rows] {
                out.extend_from_slice(&xw[u as usize * g4..(u as usize + 1) * g4]);
            }
            Cow::Owned(out)
        }
    }
}

/// φ = h W + b for the h half of [`lstm_sequence`]'s output `states` (T, B, 2H), W (H, n),
/// b (n): returns (T, B, n), as one node that reads the h half in place. The same as
/// `Linear::forward(&hidden_states(states))`, whose narrow and reshape nodes cost candle's
/// backward a zero-padded copy, a zero fill and an addition of the (T, B, 2H) gradient.
/// Backward: δW = hᵀδφ, δb = Σ_rows δφ, δstates = [δφ Wᵀ, 0].
pub fn project_hidden(states: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    Ok(states.apply_op3(w, b, Fused(ProjectHidden))?)
}

/// The op of [`project_hidden`].
struct ProjectHidden;

impl CpuOp<3> for ProjectHidden {
    fn name(&self) -> &'static str {
        "project-hidden"
    }

    fn forward(&self, [states, w, b]: [Input; 3]) -> Output {
        let (t_len, batch, h2) = states.shape().dims3()?;
        let (hidden, n) = w.shape().dims2()?;
        if h2 != 2 * hidden || b.shape().elem_count() != n {
            candle_core::bail!(
                "project-hidden: states {:?}, W {:?} and b {:?} do not fit",
                states.dims(),
                w.dims(),
                b.dims()
            );
        }
        let (states, w, b) = (states.values()?, w.values()?, b.values()?);
        let rows = t_len * batch;
        let mut y: Vec<f32> = (0..rows).flat_map(|_| b.iter().copied()).collect();
        let h = Mat {
            data: &states,
            rs: h2 as isize,
            cs: 1,
        };
        sgemm(rows, n, hidden, h, Mat::rows(&w, n), &mut y, true, true);
        Ok((F32(y), Shape::from((t_len, batch, n))))
    }

    fn backward(&self, [states, w, _b]: [&Tensor; 3], _y: &Tensor, grad: &Tensor) -> Gradients<3> {
        let (_, _, h2) = states.dims3()?;
        let (hidden, n) = w.dims2()?;
        let (ds, dw, db) = with_values([states, w, grad], |[sv, wv, g]| {
            let rows = g.len() / n.max(1);
            let ht = Mat {
                data: sv,
                rs: 1,
                cs: h2 as isize,
            };
            let mut dw = vec![0f32; hidden * n];
            sgemm(hidden, n, rows, ht, Mat::rows(g, n), &mut dw, false, true);
            let mut db = vec![0f32; n];
            for row in g.chunks(n.max(1)) {
                db.iter_mut().zip(row).for_each(|(s, v)| *s += v);
            }
            let mut dh = vec![0f32; rows * hidden];
            let (g, wt) = (Mat::rows(g, n), Mat::rows_t(wv, n));
            sgemm(rows, hidden, n, g, wt, &mut dh, false, true);
            let mut ds = vec![0f32; rows * h2];
            for (dst, src) in ds.chunks_mut(h2).zip(dh.chunks(hidden)) {
                dst[..hidden].copy_from_slice(src);
            }
            Ok((ds, dw, db))
        })?;
        let dev = states.device();
        Ok([
            Some(Tensor::from_vec(ds, states.shape(), dev)?),
            Some(Tensor::from_vec(dw, (hidden, n), dev)?),
            Some(Tensor::from_vec(db, n, dev)?),
        ])
    }
}

/// The h half of [`lstm_sequence`]'s output, (T, B, H).
pub fn hidden_states(out: &Tensor) -> Result<Tensor> {
    let h2 = out.dim(2)?;
    Ok(out.narrow(2, 0, h2 / 2)?)
}

/// Forward recurrence on plain slices: returns [h_t, c_t] per step, (T·B·2H). The tasks are
/// independent, so with several threads each runs the whole recurrence of a contiguous part of
/// the batch ([`parts`]; one part: the serial loop).
pub fn forward_values(
    xw: &[f32],
    wh: &[f32],
    t_len: usize,
    batch: usize,
    hidden: usize,
) -> Vec<f32> {
    forward_gathered(xw, None, wh, t_len, batch, hidden)
}

/// [`forward_values`] with the rows of xw gathered through `index` (see
/// [`lstm_sequence_gathered`]; None: xw is the T·B rows).
fn forward_gathered(
    xw: &[f32],
    index: Option<&[u32]>,
    wh: &[f32],
    t_len: usize,
    batch: usize,
    hidden: usize,
) -> Vec<f32> {
    let (g4, h2) = (4 * hidden, 2 * hidden);
    let mut out = vec![0f32; t_len * batch * h2];
    let ranges = split_even(batch, parts(batch));
    let serial = ranges.len() == 1;
    let views = split_steps_mut(&mut out, batch, h2, &ranges);
    run_parts(ranges.into_iter().zip(views).collect(), |(tasks, steps)| {
        let rows = tasks.len();
        let (mut c, mut h) = (vec![0f32; rows * hidden], vec![0f32; rows * hidden]);
        for (t, dst) in steps.into_iter().enumerate() {
            let mut z = sequence_rows(
                xw,
                index,
                t * batch + tasks.start..t * batch + tasks.end,
                g4,
            )
            .into_owned();
            lstm_step_rows(&mut z, wh, &mut c, &mut h, rows, hidden, serial);
            for b in 0..rows {
                let row = &mut dst[b * h2..(b + 1) * h2];
                row[..hidden].copy_from_slice(&h[b * hidden..(b + 1) * hidden]);
                row[hidden..].copy_from_slice(&c[b * hidden..(b + 1) * hidden]);
            }
        }
    });
    out
}

/// One LSTM step on plain buffers (gates i, f, g, o; see `nn::lstm`):
/// z = xw + h W_h, c ← f∘c + i∘g, h ← o∘tanh(c), for B rows, the rows split between the
/// threads ([`parts`]). Returns the activated gates [i, f, g, o] (B×4H), what the backward of
/// [`lstm_sequence`] reads.
pub fn lstm_step(
    xw: &[f32],
    wh: &[f32],
    c: &mut [f32],
    h: &mut [f32],
    batch: usize,
    hidden: usize,
) -> Vec<f32> {
    let g4 = 4 * hidden;
    let mut z = xw[..batch * g4].to_vec();
    let ranges = split_even(batch, parts(batch));
    if ranges.len() == 1 {
        lstm_step_rows(&mut z, wh, c, h, batch, hidden, true);
        return z;
    }
    let (zs, cs, hs) = (
        split_rows_mut(&mut z, g4, &ranges),
        split_rows_mut(c, hidden, &ranges),
        split_rows_mut(h, hidden, &ranges),
    );
    let work: Vec<_> = ranges
        .into_iter()
        .zip(zs.into_iter().zip(cs.into_iter().zip(hs)))
        .collect();
    run_parts(work, |(rows, (z, (c, h)))| {
        lstm_step_rows(z, wh, c, h, rows.len(), hidden, false)
    });
    z
}

/// [`lstm_step`] on the calling thread, z holding xw on entry and the activated gates on exit
/// (`parallel`: whether its matrix product may use the other threads).
fn lstm_step_rows(
    z: &mut [f32],
    wh: &[f32],
    c: &mut [f32],
    h: &mut [f32],
    batch: usize,
    hidden: usize,
    parallel: bool,
) {
    let g4 = 4 * hidden;
    sgemm(
        batch,
        g4,
        hidden,
        Mat::rows(h, hidden),
        Mat::rows(wh, g4),
        z,
        true,
        parallel,
    );
    lstm_cells(&mut z[..batch * g4], c, h, hidden);
}

/// The elementwise part of one backward step for B rows (see the module docs): from the
/// gates (B×4H, overwritten by δz_t), ∂L/∂[h_t, c_t] and [h_t, c_t] (B×2H each), [h_{t−1}, c_{t−1}]
/// (None at t = 0: zero), δz_{t+1} W_hᵀ (`dh_next`) and δc_{t+1}∘f_{t+1} (`dc_next`,
/// overwritten by δc_t∘f_t).
fn bptt_cells(
    gates: &mut [f32],
    grad: &[f32],
    out: &[f32],
    prev: Option<&[f32]>,
    dh_next: &[f32],
    dc_next: &mut [f32],
    hidden: usize,
) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked just above).
            return unsafe { bptt_cells_avx2(gates, grad, out, prev, dh_next, dc_next, hidden) };
        }
    }
    bptt_cells_generic(gates, grad, out, prev, dh_next, dc_next, hidden)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn bptt_cells_avx2(
    gates: &mut [f32],
    grad: &[f32],
    out: &[f32],
    prev: Option<&[f32]>,
    dh_next: &[f32],
    dc_next: &mut [f32],
    hidden: usize,
) {
    bptt_cells_generic(gates, grad, out, prev, dh_next, dc_next, hidden)
}

#[inline(always)]
fn bptt_cells_generic(
    gates: &mut [f32],
    grad: &[f32],
    out: &[f32],
    prev: Option<&[f32]>,
    dh_next: &[f32],
    dc_next: &mut [f32],
    hidden: usize,
) {
    let zero = vec![0f32; hidden];
    for (b, zb) in gates.chunks_mut(4 * hidden).enumerate() {
        let row = b * 2 * hidden;
        let (gh, gc) = grad[row..row + 2 * hidden].split_at(hidden);
        let cs = &out[row + hidden..row + 2 * hidden];
        let c_prev = prev.map_or(&zero[..], |p| &p[row + hidden..row + 2 * hidden]);
        let dh_next = &dh_next[b * hidden..(b + 1) * hidden];
        let dc_next = &mut dc_next[b * hidden..(b + 1) * hidden];
        let (zi, rest) = zb.split_at_mut(hidden);
        let (zf, rest) = rest.split_at_mut(hidden);
        let (zg, zo) = rest.split_at_mut(hidden);
        for j in 0..hidden {
            let (i, f, g, o) = (zi[j], zf[j], zg[j], zo[j]);
            let tc = tanh(cs[j]);
            let dh = gh[j] + dh_next[j];
            let dc = gc[j] + dc_next[j] + dh * o * (1.0 - tc * tc);
            dc_next[j] = dc * f;
            zi[j] = dc * g * i * (1.0 - i);
            zf[j] = dc * c_prev[j] * f * (1.0 - f);
            zg[j] = dc * i * (1.0 - g * g);
            zo[j] = dh * tc * o * (1.0 - o);
        }
    }
}

/// out_u = Σ_{r: index[r] = u} rows_r for u < `distinct` (rows `width` wide), each sum in row
/// order. With several threads each part owns a contiguous range of u (the same sums in the
/// same order whatever the thread count).
fn scatter_rows(rows: &[f32], index: &[u32], distinct: usize, width: usize) -> Vec<f32> {
    let ranges = split_even(distinct, parts(index.len()).min(distinct.max(1)));
    let blocks = run_parts(ranges, |owned| {
        let mut out = vec![0f32; owned.len() * width];
        for (r, &u) in index.iter().enumerate() {
            let u = u as usize;
            if owned.contains(&u) {
                let dst = &mut out[(u - owned.start) * width..(u - owned.start + 1) * width];
                let src = &rows[r * width..(r + 1) * width];
                dst.iter_mut().zip(src).for_each(|(d, s)| *d += s);
            }
        }
        out
    });
    blocks.concat()
}

impl CpuOp<2> for LstmSequence {
    fn name(&self) -> &'static str {
        "lstm-sequence"
    }

    fn forward(&self, [xw, wh]: [Input; 2]) -> Output {
        let (t_len, batch, g4) = self.dims(xw.dims())?;
        let (hidden, g4w) = wh.shape().dims2()?;
        if g4 != 4 * hidden || g4w != g4 {
            candle_core::bail!(
                "lstm-sequence: xw {:?} and W_h {:?} do not fit (need (T, B, 4H) and (H, 4H))",
                xw.shape(),
                wh.shape()
            );
        }
        let index = self.index.as_ref().map(|i| &i[..]);
        let known = (self.known.as_ref())
            .and_then(|k| SequenceTrace::take(&k.states, t_len * batch * 2 * hidden));
        let out = match known {
            Some(states) => states,
            None => forward_gathered(&xw.values()?, index, &wh.values()?, t_len, batch, hidden),
        };
        Ok((F32(out), Shape::from((t_len, batch, 2 * hidden))))
    }

    fn backward(&self, [xw, wh]: [&Tensor; 2], res: &Tensor, grad_res: &Tensor) -> Gradients<2> {
        let (t_len, batch, g4) = self.dims(xw.dims())?;
        let hidden = g4 / 4;
        let h2 = 2 * hidden;
        let device = xw.device().clone();
        // The inputs are read in place where contiguous (only xw is copied: it becomes the gates).
        let index = self.index.as_ref().map(|i| &i[..]);
        let known =
            (self.known.as_ref()).and_then(|k| SequenceTrace::take(&k.gates, t_len * batch * g4));
        let wh_v: Vec<f32> = wh.flatten_all()?.to_vec1()?;
        let (rs, rl) = res.storage_and_layout();
        let out = f32_values(&rs, rl)?;
        let (gs, gl) = grad_res.storage_and_layout();
        let grad = f32_values(&gs, gl)?;
        // h_{t−1} for every step (zeros at t = 0), (T·B, H). (∂L/∂W_h sums over all T·B rows,
        // the zero ones included, so that its rounding is the same whatever the thread count.)
        let mut h_prev = vec![0f32; t_len * batch * hidden];
        for t in 1..t_len {
            for b in 0..batch {
                let src = ((t - 1) * batch + b) * h2;
                let dst = (t * batch + b) * hidden;
                h_prev[dst..dst + hidden].copy_from_slice(&out[src..src + hidden]);
            }
        }
        // Gates of every step at once (unless known): z = xw + h_{t−1} W_h.
        let mut gates = match known {
            Some(gates) => gates,
            None => {
                let (xs, xl) = xw.storage_and_layout();
                let mut gates =
                    sequence_rows(&f32_values(&xs, xl)?, index, 0..t_len * batch, g4).into_owned();
                drop(xs);
                sgemm(
                    t_len * batch,
                    g4,
                    hidden,
                    Mat::rows(&h_prev, hidden),
                    Mat::rows(&wh_v, g4),
                    &mut gates,
                    true,
                    true,
                );
                activate_gate_rows(&mut gates, hidden);
                gates
            }
        };
        // Backward through time; dz overwrites the gates step by step. The tasks' recurrences
        // are independent: with several threads each runs a contiguous part of the batch
        // ([`parts`]; one part: the serial loop).
        let ranges = split_even(batch, parts(batch));
        let serial = ranges.len() == 1;
        let views = split_steps_mut(&mut gates, batch, g4, &ranges);
        run_parts(
            ranges.into_iter().zip(views).collect(),
            |(tasks, mut steps)| {
                let rows = tasks.len();
                let mut dh_next = vec![0f32; rows * hidden];
                let mut dc_next = vec![0f32; rows * hidden];
                let at = |t: usize| (t * batch + tasks.start) * h2..(t * batch + tasks.end) * h2;
                for t in (0..t_len).rev() {
                    let prev = (t > 0).then(|| &out[at(t - 1)]);
                    bptt_cells(
                        steps[t],
                        &grad[at(t)],
                        &out[at(t)],
                        prev,
                        &dh_next,
                        &mut dc_next,
                        hidden,
                    );
                    if t > 0 {
                        // δh_{t−1} (recurrent part) = δz_t W_hᵀ.
                        sgemm(
                            rows,
                            hidden,
                            g4,
                            Mat::rows(steps[t], g4),
                            Mat::rows_t(&wh_v, g4),
                            &mut dh_next,
                            false,
                            serial,
                        );
                    }
                }
            },
        );
        // ∂L/∂W_h = Σ_t h_{t−1}ᵀ δz_t over all T·B rows: with several threads each sums a
        // contiguous part of the rows, the parts added in order (one part: one product).
        let all = t_len * batch;
        let ranges = split_even(all, parts(all));
        let serial = ranges.len() == 1;
        let shares = run_parts(ranges, |r| {
            let mut dwh = vec![0f32; hidden * g4];
            sgemm(
                hidden,
                g4,
                r.len(),
                Mat::rows_t(&h_prev[r.start * hidden..r.end * hidden], hidden),
                Mat::rows(&gates[r.start * g4..r.end * g4], g4),
                &mut dwh,
                false,
                serial,
            );
            dwh
        });
        let dwh = sum_in_order(shares);
        let dxw = match index {
            None => gates,
            Some(index) => scatter_rows(&gates, index, xw.dims()[0], g4),
        };
        let dxw = Tensor::from_vec(dxw, xw.shape(), &device)?;
        let dwh = Tensor::from_vec(dwh, (hidden, g4), &device)?;
        Ok([Some(dxw), Some(dwh)])
    }
}
