//! Posterior configuration: which family, and for the Laplace VRNN which Table-2 variant.
//!
//! In TOML (`[model.posterior]`):
//! ```toml
//! family = "laplace"        # "rnn" | "vrnn" | "laplace"
//! window = 1                # k_H: history inputs whose Jacobians enter Λ_t (0 = all: stationary)
//! accumulate = "sigma"      # k_Z / accumulation: "none" | "sigma" | "mu_sigma"
//! diagonal = false          # full or diagonal covariance (also for "vrnn")
//! damping = 1.0             # prior precision when not accumulating (or "auto")
//! jitter = 1e-6             # added to Λ before the Cholesky factorisation
//! prior_precision = 1.0     # Λ_0 (or "auto": chosen from the network, see `auto_scale`)
//! ```
//! On the command line the same as `laplace:window=1,accumulate=sigma,diagonal=false`,
//! `vrnn`, `vrnn:diagonal=true` or `rnn`; a config may also give that string,
//! `posterior = "laplace:window=1,accumulate=sigma"` under `[model]`.

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Which previous-posterior terms are summed into q_t (Table 2: k_Z and "Accumulation").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Accumulate {
    /// k_Z = 0: the prior is damping·I (stationary / windowed posterior).
    None,
    /// k_Z = 1, Σ only: Λ_t = Λ_{t−1} + Σ JJᵀ ("sum Σ", Markov chain posterior).
    Sigma,
    /// k_Z = 1, (μ, Σ): also μ_t = φ_t + μ_{t−1} ("sum μ, Σ").
    MuSigma,
}

impl FromStr for Accumulate {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "none" => Self::None,
            "sigma" => Self::Sigma,
            "mu_sigma" => Self::MuSigma,
            _ => bail!("accumulate = `{s}` is not valid; allowed values: none, sigma, mu_sigma"),
        })
    }
}

impl fmt::Display for Accumulate {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(match self {
            Self::None => "none",
            Self::Sigma => "sigma",
            Self::MuSigma => "mu_sigma",
        })
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "LaplaceTable", into = "LaplaceTable")]
pub struct LaplaceConfig {
    pub window: usize,
    pub accumulate: Accumulate,
    pub diagonal: bool,
    pub damping: f64,
    pub jitter: f64,
    pub prior_precision: f64,
    /// Which of `prior_precision` and `damping` were given as `"auto"` and are still to be
    /// chosen from the network ([`LaplaceConfig::resolve_auto`]); their numbers are
    /// placeholders until then.
    pub auto: AutoScales,
    /// Which scales were `"auto"` and have been chosen ([`LaplaceConfig::resolve_auto`]): kept
    /// in the run's config (`chosen_by_auto`) so that `lvrnn report` groups the seeds of one
    /// rule together although each chose its own number.
    pub chosen: AutoScales,
}

/// The scales of a Laplace prior given as `"auto"` (see [`auto_scale`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AutoScales {
    pub prior_precision: bool,
    pub damping: bool,
}

/// Λ_0's scale chosen from the network (issue 17, item 4): with `mean_square` = the mean of μ_{t,i}²
/// over the steps, tasks and coordinates of the posterior means the network gives at the start
/// of training on a few training tasks, λ = 1 / mean_square, i.e. the prior's standard deviation
/// per coordinate equals the root-mean-square coordinate of μ. With the default Λ_0 = I and the
/// small φ of a fresh network (RMS ~0.1), a sample z = μ + Σ^½ε is ten times more noise than
/// signal; with the chosen λ it starts at about one. Clamped to [1e-3, 1e6] and rounded to 4
/// significant digits (a short number reads well in config.toml and survives the JSON of the
/// checkpoint metadata exactly, so a resumed run compares equal).
pub fn auto_scale(mean_square: f64) -> f64 {
    if mean_square.is_finite() && mean_square > 0.0 {
        let v = (1.0 / mean_square).clamp(1e-3, 1e6);
        format!("{v:.3e}").parse().unwrap_or(v)
    } else {
        1.0
    }
}

/// A scale in TOML: a number or `"auto"`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(untagged)]
enum Scale {
    Number(f64),
    Word(String),
}

impl Scale {
    fn read(self, key: &str) -> Result<(f64, bool), String> {
        match self {
            Scale::Number(v) => Ok((v, false)),
            Scale::Word(w) if w == "auto" => Ok((1.0, true)),
            Scale::Word(w) => Err(format!(
                "posterior.{key} = \"{w}\" is not valid; give a number > 0 or \"auto\""
            )),
        }
    }
    fn write(v: f64, auto: bool) -> Scale {
        match auto {
            true => Scale::Word("auto".into()),
            false => Scale::Number(v),
        }
    }
}

/// [`LaplaceConfig`]'s TOML table: the scales may be `"auto"`.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct LaplaceTable {
    #[serde(default = "one")]
    window: usize,
    #[serde(default = "sigma")]
    accumulate: Accumulate,
    #[serde(default)]
    diagonal: bool,
    #[serde(default = "one_scale")]
    damping: Scale,
    #[serde(default = "jitter")]
    jitter: f64,
    #[serde(default = "one_scale")]
    prior_precision: Scale,
    /// The scales chosen from `"auto"` at the start of training (written by lvrnn).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    chosen_by_auto: Vec<String>,
}

fn one_scale() -> Scale {
    Scale::Number(1.0)
}

impl TryFrom<LaplaceTable> for LaplaceConfig {
    type Error = String;
    fn try_from(t: LaplaceTable) -> Result<Self, String> {
        let (damping, auto_damping) = t.damping.read("damping")?;
        let (prior_precision, auto_prior) = t.prior_precision.read("prior_precision")?;
        let mut chosen = AutoScales::default();
        for name in &t.chosen_by_auto {
            match name.as_str() {
                "prior_precision" => chosen.prior_precision = true,
                "damping" => chosen.damping = true,
                other => {
                    return Err(format!(
                        "posterior.chosen_by_auto: `{other}` is not a scale; allowed: prior_precision, damping"
                    ));
                }
            }
        }
        Ok(Self {
            window: t.window,
            accumulate: t.accumulate,
            diagonal: t.diagonal,
            damping,
            jitter: t.jitter,
            prior_precision,
            auto: AutoScales {
                prior_precision: auto_prior,
                damping: auto_damping,
            },
            chosen,
        })
    }
}

impl From<LaplaceConfig> for LaplaceTable {
    fn from(c: LaplaceConfig) -> Self {
        Self {
            window: c.window,
            accumulate: c.accumulate,
            diagonal: c.diagonal,
            damping: Scale::write(c.damping, c.auto.damping),
            jitter: c.jitter,
            prior_precision: Scale::write(c.prior_precision, c.auto.prior_precision),
            chosen_by_auto: [
                ("prior_precision", c.chosen.prior_precision),
                ("damping", c.chosen.damping),
            ]
            .iter()
            .filter(|(_, chosen)| *chosen)
            .map(|(k, _)| k.to_string())
            .collect(),
        }
    }
}

fn one() -> usize {
    1
}
fn jitter() -> f64 {
    1e-6
}
fn sigma() -> Accumulate {
    Accumulate::Sigma
}

impl Default for LaplaceConfig {
    fn default() -> Self {
        Self {
            window: 1,
            accumulate: Accumulate::Sigma,
            diagonal: false,
            damping: 1.0,
            jitter: 1e-6,
            prior_precision: 1.0,
            auto: AutoScales::default(),
            chosen: AutoScales::default(),
        }
    }
}

impl LaplaceConfig {
    /// A short label for plots and file names, e.g. `laplace-sigma-k1-full`.
    pub fn label(&self) -> String {
        let k = if self.window == 0 {
            "all".to_string()
        } else {
            self.window.to_string()
        };
        format!(
            "laplace-{}-k{}-{}",
            self.accumulate,
            k,
            if self.diagonal { "diag" } else { "full" }
        )
    }

    /// Whether the mean is accumulated, the one rule every Laplace path follows (the per-step
    /// `Laplace::step` on tensors, the filter's `update_task` and `agent::replay` on plain
    /// numbers): μ_t = φ_t + stop_grad μ_{t−1} for Table 2's "Accumulation (μ, Σ)"
    /// (`accumulate = "mu_sigma"`), otherwise μ_t = φ_t (k_Z = 0, and "Accumulation Σ").
    pub fn accumulates_mean(&self) -> bool {
        self.accumulate == Accumulate::MuSigma
    }

    /// Whether a scale is still `"auto"`.
    pub fn has_auto(&self) -> bool {
        self.auto.prior_precision || self.auto.damping
    }

    /// Sets every `"auto"` scale to `scale` (from [`auto_scale`]) and marks it `chosen`; the
    /// config then holds numbers only, as the run's config.toml and checkpoints store it.
    pub fn resolve_auto(&mut self, scale: f64) {
        if self.auto.prior_precision {
            self.prior_precision = scale;
            self.chosen.prior_precision = true;
        }
        if self.auto.damping {
            self.damping = scale;
            self.chosen.damping = true;
        }
        self.auto = AutoScales::default();
    }

    pub fn validate(&self) -> Result<()> {
        if !(self.jitter >= 0.0 && self.jitter.is_finite()) {
            bail!(
                "posterior.jitter must be a finite number >= 0 (got {})",
                self.jitter
            );
        }
        let positive = |v: f64| v > 0.0 && v.is_finite();
        if !(self.auto.damping || positive(self.damping)) {
            bail!(
                "posterior.damping must be a finite number > 0 (got {})",
                self.damping
            );
        }
        if !(self.auto.prior_precision || positive(self.prior_precision)) {
            bail!(
                "posterior.prior_precision must be a finite number > 0 (got {})",
                self.prior_precision
            );
        }
        Ok(())
    }
}

/// The three posterior families. Read from a table with `family` (written so) or from a SPEC
/// string ([`PosteriorConfig::from_str`]).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(tag = "family", rename_all = "snake_case", deny_unknown_fields)]
pub enum PosteriorConfig {
    /// Point estimate (the RNN baseline).
    #[serde(alias = "point")]
    #[default]
    Rnn,
    /// Learned Gaussian, Cayley-map spectral covariance (or diagonal).
    Vrnn {
        #[serde(default)]
        diagonal: bool,
    },
    /// Laplace VRNN.
    Laplace(LaplaceConfig),
}

/// [`PosteriorConfig`]'s table form, as serde derives it.
#[derive(Deserialize)]
#[serde(tag = "family", rename_all = "snake_case", deny_unknown_fields)]
enum PosteriorTable {
    #[serde(alias = "point")]
    Rnn,
    Vrnn {
        #[serde(default)]
        diagonal: bool,
    },
    Laplace(LaplaceConfig),
}

impl<'de> Deserialize<'de> for PosteriorConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Either;
        impl<'de> serde::de::Visitor<'de> for Either {
            type Value = PosteriorConfig;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                write!(
                    f,
                    "a posterior SPEC such as \"laplace:window=1,accumulate=sigma\", or a table with `family`"
                )
            }

            fn visit_str<E: serde::de::Error>(self, spec: &str) -> Result<PosteriorConfig, E> {
                spec.parse().map_err(|e| E::custom(format!("{e:#}")))
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<PosteriorConfig, A::Error> {
                let table =
                    PosteriorTable::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(match table {
                    PosteriorTable::Rnn => PosteriorConfig::Rnn,
                    PosteriorTable::Vrnn { diagonal } => PosteriorConfig::Vrnn { diagonal },
                    PosteriorTable::Laplace(c) => PosteriorConfig::Laplace(c),
                })
            }
        }
        d.deserialize_any(Either)
    }
}

impl PosteriorConfig {
    pub fn label(&self) -> String {
        match self {
            Self::Rnn => "rnn".into(),
            Self::Vrnn { diagonal } => if *diagonal { "vrnn-diag" } else { "vrnn-full" }.into(),
            Self::Laplace(c) => c.label(),
        }
    }

    pub fn validate(&self) -> Result<()> {
        match self {
            Self::Laplace(c) => c.validate(),
            _ => Ok(()),
        }
    }

    pub fn is_bayesian(&self) -> bool {
        !matches!(self, Self::Rnn)
    }

    /// Whether a network trained under `self` can be evaluated under `target` post hoc (same
    /// weights, no retraining). Refused, before any evaluation, wherever the heads would read a
    /// z the network never produced in training:
    ///
    /// - a VRNN head (and the full variant's `vrnn.tri`) exists only in a network trained as
    ///   such: `vrnn` on any other network would act with random weights;
    /// - a network trained as a VRNN feeds its heads z around the mean head's output
    ///   `vrnn.mean(φ_t)`; the point estimate and the Laplace posterior take z around φ_t = P h_t
    ///   itself, an intermediate the heads never saw (a gridworld VRNN that returns 29.2 acts at
    ///   random, 4.2, under Laplace Σ k_H = 1). So `rnn` and `laplace:…` are refused on a VRNN
    ///   network;
    /// - a network trained with an accumulated mean (`laplace:…,accumulate=mu_sigma`) feeds its
    ///   heads μ_t = φ_t + μ_{t−1}; a posterior without it (`rnn`, `accumulate=sigma|none`) would
    ///   hand them the increment φ_t alone.
    ///
    /// Allowed: any Laplace variant or the point estimate on a point or Laplace network whose
    /// mean is φ_t (the paper's post-hoc posteriors, including the `mu_sigma` ablation on RNN
    /// weights), and a diagonal VRNN on a full one (a full head has every parameter of a
    /// diagonal one, and the same mean). The error says what to do instead.
    pub fn check_posthoc(&self, target: &PosteriorConfig) -> Result<()> {
        let finetune = format!(
            "finetune instead: `lvrnn train --config <config> --posterior {target} --init-from <checkpoint>`"
        );
        if let Self::Laplace(c) = target
            && c.has_auto()
        {
            bail!(
                "`auto` in `{target}` is chosen from the network at the start of training; post hoc give a number, or let `lvrnn eval --tune-prior` choose it on held-out tasks"
            );
        }
        match (self, target) {
            // A full head has every parameter of a diagonal one.
            (Self::Vrnn { diagonal: true }, Self::Vrnn { diagonal: false }) => bail!(
                "posterior `{}` cannot be applied post hoc to a network trained as `{}`: its full-covariance head (`vrnn.tri`) was never trained and would act with random weights; {finetune}, or evaluate `vrnn:diagonal=true`",
                target.label(),
                self.label()
            ),
            (Self::Vrnn { .. }, Self::Vrnn { .. }) => {}
            (_, Self::Vrnn { .. }) => bail!(
                "posterior `{}` cannot be applied post hoc to a network trained as `{}`: its VRNN head was never trained and would act with random weights. {finetune}; post hoc, use `rnn` or a `laplace:…` variant (they add no parameters)",
                target.label(),
                self.label()
            ),
            (Self::Vrnn { .. }, _) => bail!(
                "posterior `{}` cannot be applied post hoc to a network trained as `{}`: the VRNN's heads were trained on z around its mean head's output, while `{}` takes z around the projection φ = P h that feeds that head, so the agent would act on a quantity it never saw (at random). Evaluate this checkpoint under its own posterior (or `vrnn:diagonal=true`), or {finetune}",
                target.label(),
                self.label(),
                target.label()
            ),
            (Self::Laplace(t), _) if t.accumulates_mean() && !accumulates_mean(target) => {
                bail!(
                    "posterior `{}` cannot be applied post hoc to a network trained as `{}`: its heads were trained on the accumulated mean μ_t = φ_t + μ_(t−1), while `{}` hands them the increment φ_t alone. Post hoc, use a `laplace:…,accumulate=mu_sigma` variant, or {finetune}",
                    target.label(),
                    self.label(),
                    target.label()
                )
            }
            _ => {}
        }
        Ok(())
    }
}

/// Whether `p`'s mean is accumulated over steps (μ_t = φ_t + μ_{t−1}).
fn accumulates_mean(p: &PosteriorConfig) -> bool {
    matches!(p, PosteriorConfig::Laplace(c) if c.accumulates_mean())
}

impl fmt::Display for PosteriorConfig {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Self::Rnn => write!(f, "rnn"),
            Self::Vrnn { diagonal } => write!(f, "vrnn:diagonal={diagonal}"),
            Self::Laplace(c) => {
                let scale = |v: f64, auto: bool| match auto {
                    true => "auto".to_string(),
                    false => v.to_string(),
                };
                write!(
                    f,
                    "laplace:window={},accumulate={},diagonal={},damping={},jitter={},prior_precision={}",
                    c.window,
                    c.accumulate,
                    c.diagonal,
                    scale(c.damping, c.auto.damping),
                    c.jitter,
                    scale(c.prior_precision, c.auto.prior_precision)
                )
            }
        }
    }
}

fn parse_bool(key: &str, v: &str) -> Result<bool> {
    match v {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => bail!("posterior key `{key}` = `{v}` is not valid; allowed values: true, false"),
    }
}

fn parse_num<T: FromStr>(key: &str, v: &str, what: &str) -> Result<T> {
    v.parse()
        .map_err(|_| anyhow::anyhow!("posterior key `{key}` = `{v}` is not valid; expected {what}"))
}

impl FromStr for PosteriorConfig {
    type Err = anyhow::Error;

    /// Parses `family[:key=value,...]`.
    fn from_str(s: &str) -> Result<Self> {
        let (family, rest) = s.split_once(':').unwrap_or((s, ""));
        let pairs: Vec<(&str, &str)> = rest
            .split(',')
            .filter(|p| !p.trim().is_empty())
            .map(|p| {
                p.split_once('=')
                    .map(|(k, v)| (k.trim(), v.trim()))
                    .ok_or_else(|| anyhow::anyhow!("posterior option `{p}` must be key=value"))
            })
            .collect::<Result<_>>()?;
        for (i, (k, _)) in pairs.iter().enumerate() {
            if pairs[..i].iter().any(|(seen, _)| seen == k) {
                bail!("posterior key `{k}` is given twice; give each key once");
            }
        }
        let cfg = match family.trim() {
            "rnn" | "point" => {
                if let Some((k, _)) = pairs.first() {
                    bail!("posterior family `rnn` takes no options (got `{k}`)");
                }
                Self::Rnn
            }
            "vrnn" => {
                let mut diagonal = false;
                for (k, v) in pairs {
                    match k {
                        "diagonal" => diagonal = parse_bool(k, v)?,
                        _ => bail!(
                            "unknown posterior key `{k}` for family vrnn; allowed keys: diagonal"
                        ),
                    }
                }
                Self::Vrnn { diagonal }
            }
            "laplace" => {
                let mut c = LaplaceConfig::default();
                for (k, v) in pairs {
                    match k {
                        "window" | "k_h" => {
                            c.window = parse_num(k, v, "an integer >= 0 (0 = whole history)")?
                        }
                        "accumulate" | "acc" => c.accumulate = v.parse()?,
                        "diagonal" => c.diagonal = parse_bool(k, v)?,
                        "damping" if v == "auto" => c.auto.damping = true,
                        "damping" => c.damping = parse_num(k, v, "a number > 0 or auto")?,
                        "jitter" => c.jitter = parse_num(k, v, "a number >= 0")?,
                        "prior_precision" if v == "auto" => c.auto.prior_precision = true,
                        "prior_precision" => {
                            c.prior_precision = parse_num(k, v, "a number > 0 or auto")?
                        }
                        _ => bail!(
                            "unknown posterior key `{k}` for family laplace; allowed keys: window, accumulate, diagonal, damping, jitter, prior_precision"
                        ),
                    }
                }
                Self::Laplace(c)
            }
            other => {
                bail!("posterior family `{other}` is not valid; allowed values: rnn, vrnn, laplace")
            }
        };
        cfg.validate()?;
        Ok(cfg)
    }
}
