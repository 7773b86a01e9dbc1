//! AdamW (Loshchilov & Hutter, optax defaults) with the paper's gradient clipping (App. B.1):
//! each gradient element is clipped to [−c, c], then the whole gradient is rescaled to a global
//! L2 norm of at most `max_norm`. (With the opposite order the element clip could never act,
//! since a global norm ≤ 1 bounds every element by 1 < c.)

use crate::nn::Params;
use anyhow::{Result, bail};
use candle_core::{Tensor, backprop::GradStore};
use std::collections::BTreeMap;

#[derive(Clone, Debug)]
pub struct AdamWConfig {
    pub lr: f64,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub clip_element: f64,
    pub clip_global_norm: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            weight_decay: 1e-6,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            clip_element: 5.0,
            clip_global_norm: 1.0,
        }
    }
}

/// First and second moment estimates per parameter, and the step count. (Cloning is cheap and
/// safe: a step replaces the moment tensors, it never writes into them.)
#[derive(Clone)]
pub struct AdamW {
    pub cfg: AdamWConfig,
    pub step: usize,
    m: BTreeMap<String, Tensor>,
    v: BTreeMap<String, Tensor>,
}

/// What a step reports.
pub struct StepStats {
    /// Global norm of the gradient after the element clip, before the norm clip.
    pub grad_norm: f64,
    /// Global norm of the raw gradient, before either clip.
    pub raw_grad_norm: f64,
    /// Fraction of gradient elements the element clip [−c, c] changed.
    pub clip_element_fraction: f64,
    /// Whether the global-norm clip rescaled the gradient.
    pub norm_clipped: bool,
}

impl AdamW {
    pub fn new(cfg: AdamWConfig, params: &Params) -> Result<Self> {
        let mut m = BTreeMap::new();
        let mut v = BTreeMap::new();
        for (name, var) in params.vars() {
            m.insert(name.clone(), var.as_tensor().zeros_like()?);
            v.insert(name.clone(), var.as_tensor().zeros_like()?);
        }
        Ok(Self { cfg, step: 0, m, v })
    }

    /// Clips the gradients of `loss`'s graph and applies one AdamW update. Fails (without
    /// touching any parameter) when the gradient is not finite.
    pub fn step(&mut self, params: &Params, grads: &GradStore) -> Result<StepStats> {
        let c = self.cfg.clip_element;
        let mut clipped = Vec::with_capacity(params.len());
        let (mut sq, mut raw_sq, mut changed, mut elements) = (0.0f64, 0.0f64, 0usize, 0usize);
        for (name, var) in params.vars() {
            // Detached: the gradient's own op graph must not be kept alive by the moments.
            let g = match grads.get(var.as_tensor()) {
                Some(g) => {
                    let raw = g.detach();
                    raw_sq += raw.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
                    changed += raw
                        .abs()?
                        .gt(c)?
                        .to_dtype(candle_core::DType::F32)?
                        .sum_all()?
                        .to_scalar::<f32>()? as usize;
                    raw.clamp(-c, c)?
                }
                None => var.as_tensor().zeros_like()?,
            };
            elements += g.elem_count();
            sq += g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
            clipped.push((name.clone(), var, g));
        }
        let norm = sq.sqrt();
        if !norm.is_finite() {
            bail!("gradient is not finite (global norm {norm})");
        }
        let scale = if norm > self.cfg.clip_global_norm {
            self.cfg.clip_global_norm / norm
        } else {
            1.0
        };
        self.step += 1;
        let (b1, b2) = (self.cfg.beta1, self.cfg.beta2);
        let bc1 = 1.0 - b1.powi(self.step as i32);
        let bc2 = 1.0 - b2.powi(self.step as i32);
        for (name, var, g) in clipped {
            let g = (g * scale)?;
            let m = ((&self.m[&name] * b1)? + (&g * (1.0 - b1))?)?.detach();
            let v = ((&self.v[&name] * b2)? + (g.sqr()? * (1.0 - b2))?)?.detach();
            let update =
                (m.affine(1.0 / bc1, 0.0)? / (v.affine(1.0 / bc2, 0.0)?.sqrt()? + self.cfg.eps)?)?;
            let p = var.as_tensor().detach();
            let p = &p;
            let new = (p - ((update + (p * self.cfg.weight_decay)?)? * self.cfg.lr)?)?;
            var.set(&new)?;
            self.m.insert(name.clone(), m);
            self.v.insert(name, v);
        }
        Ok(StepStats {
            grad_norm: norm,
            raw_grad_norm: raw_sq.sqrt(),
            clip_element_fraction: changed as f64 / elements.max(1) as f64,
            norm_clipped: scale < 1.0,
        })
    }

    /// Moment tensors by name (`adam.m.<param>`, `adam.v.<param>`) for checkpoints.
    pub fn state_tensors(&self) -> BTreeMap<String, Tensor> {
        let mut out = BTreeMap::new();
        for (k, t) in &self.m {
            out.insert(format!("adam.m.{k}"), t.clone());
        }
        for (k, t) in &self.v {
            out.insert(format!("adam.v.{k}"), t.clone());
        }
        // The step count (bias correction); with several gradient steps per update it is not
        // the update count.
        if let Ok(step) = Tensor::new(&[self.step as f32], &candle_core::Device::Cpu) {
            out.insert("adam.step".into(), step);
        }
        out
    }

    /// Restores the moments; the step count is the checkpoint's `adam.step` where it has one,
    /// else `step` (checkpoints of one gradient step per update).
    pub fn load_state(&mut self, tensors: &BTreeMap<String, Tensor>, step: usize) -> Result<()> {
        for (k, t) in self.m.iter_mut() {
            *t = tensors
                .get(&format!("adam.m.{k}"))
                .ok_or_else(|| anyhow::anyhow!("optimizer state lacks adam.m.{k}"))?
                .clone();
        }
        for (k, t) in self.v.iter_mut() {
            *t = tensors
                .get(&format!("adam.v.{k}"))
                .ok_or_else(|| anyhow::anyhow!("optimizer state lacks adam.v.{k}"))?
                .clone();
        }
        self.step = match tensors.get("adam.step") {
            Some(t) => t.flatten_all()?.to_vec1::<f32>()?[0] as usize,
            None => step,
        };
        Ok(())
    }
}
