//! Posterior configuration: which family, and for the Laplace VRNN which Table-2 variant.
//!
//! In TOML (`[model.posterior]`):
//! ```toml
//! family = "laplace"        # "rnn" | "vrnn" | "laplace"
//! window = 1                # k_H: history inputs whose Jacobians enter Λ_t (0 = all: stationary)
//! accumulate = "sigma"      # k_Z / accumulation: "none" | "sigma" | "mu_sigma"
//! diagonal = false          # full or diagonal covariance (also for "vrnn")
//! damping = 1.0             # prior precision when not accumulating
//! jitter = 1e-6             # added to Λ before the Cholesky factorisation
//! prior_precision = 1.0     # Λ_0
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
#[serde(deny_unknown_fields)]
pub struct LaplaceConfig {
    #[serde(default = "one")]
    pub window: usize,
    #[serde(default = "sigma")]
    pub accumulate: Accumulate,
    #[serde(default)]
    pub diagonal: bool,
    #[serde(default = "one_f")]
    pub damping: f64,
    #[serde(default = "jitter")]
    pub jitter: f64,
    #[serde(default = "one_f")]
    pub prior_precision: f64,
}

fn one() -> usize {
    1
}
fn one_f() -> f64 {
    1.0
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

    pub fn validate(&self) -> Result<()> {
        if !(self.jitter >= 0.0 && self.jitter.is_finite()) {
            bail!(
                "posterior.jitter must be a finite number >= 0 (got {})",
                self.jitter
            );
        }
        if !(self.damping > 0.0 && self.damping.is_finite()) {
            bail!(
                "posterior.damping must be a finite number > 0 (got {})",
                self.damping
            );
        }
        if !(self.prior_precision > 0.0 && self.prior_precision.is_finite()) {
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
            (Self::Laplace(t), _)
                if t.accumulate == Accumulate::MuSigma && !accumulates_mean(target) =>
            {
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
    matches!(p, PosteriorConfig::Laplace(c) if c.accumulate == Accumulate::MuSigma)
}

impl fmt::Display for PosteriorConfig {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Self::Rnn => write!(f, "rnn"),
            Self::Vrnn { diagonal } => write!(f, "vrnn:diagonal={diagonal}"),
            Self::Laplace(c) => write!(
                f,
                "laplace:window={},accumulate={},diagonal={},damping={},jitter={},prior_precision={}",
                c.window, c.accumulate, c.diagonal, c.damping, c.jitter, c.prior_precision
            ),
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
                        "damping" => c.damping = parse_num(k, v, "a number > 0")?,
                        "jitter" => c.jitter = parse_num(k, v, "a number >= 0")?,
                        "prior_precision" => c.prior_precision = parse_num(k, v, "a number > 0")?,
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
