//! Run folders: resolved config, checkpoints (safetensors, written atomically, with
//! `{"update", "config"}` as JSON under the metadata key `lvrnn`, so any checkpoint is
//! self-describing), metrics, figures.
//!
//! ```text
//! <runs>/<name>/config.toml                  resolved configuration
//!               metrics/train.jsonl          one JSON object per update
//!               metrics/eval*.csv|jsonl      evaluation tables
//!               checkpoints/latest.safetensors   model + optimizer state (for --resume)
//!               checkpoints/previous.safetensors the latest one before it (for --resume when
//!                                                latest cannot be read)
//!               checkpoints/model-final.safetensors, model-step<N>.safetensors (snapshots)
//!               init_from.json               finetuned runs: {"checkpoint": ABS_PATH, "update": U}
//!               figures/*.png, *.svg
//! ```

use crate::config::ExperimentConfig;
use crate::nn::{Params, read_safetensors};
use crate::util::{PidLock, rename_temp, write_atomic, write_temp};
use anyhow::{Context, Result, bail};
use candle_core::Tensor;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

pub struct RunDir {
    pub root: PathBuf,
    /// `<runs>/<name>.lock`, held while this process trains into the folder.
    _lock: PidLock,
}

impl RunDir {
    /// Opens `<runs_dir>/<name>`. A folder that already holds a checkpoint is only reused
    /// with `resume` (or after `overwrite` deletes it), so no finished run is lost by accident.
    /// Two processes never train into one folder: the run holds `<runs_dir>/<name>.lock` (beside
    /// the folder, so `overwrite` keeps it) with its pid until it is dropped; a second `lvrnn
    /// train` is refused while that process lives.
    pub fn open(runs_dir: &Path, name: &str, resume: bool, overwrite: bool) -> Result<Self> {
        let root = runs_dir.join(name);
        let lock = runs_dir.join(format!("{name}.lock"));
        // A pid reused by another program does not hold the lock: the holder runs this binary.
        let exe = std::env::current_exe()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().to_string()))
            .unwrap_or_else(|| "lvrnn".into());
        let _lock = PidLock::acquire(&lock, &exe, |pid, path| {
            format!(
                "another process (pid {pid}) is training into {} ({} is held); wait for it to finish or stop it, or choose another --name",
                root.display(),
                path.display()
            )
        })?;
        let run = Self { root, _lock };
        if (run.latest_checkpoint().exists() || run.previous_checkpoint().exists()) && !resume {
            if overwrite {
                std::fs::remove_dir_all(&run.root)
                    .with_context(|| format!("removing {}", run.root.display()))?;
            } else {
                bail!(
                    "run folder {} already holds a checkpoint: pass --resume to continue it, --overwrite to start again, or choose another --name",
                    run.root.display()
                );
            }
        }
        for d in [
            run.root.clone(),
            run.checkpoints(),
            run.metrics(),
            run.figures(),
        ] {
            std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        }
        Ok(run)
    }

    pub fn checkpoints(&self) -> PathBuf {
        self.root.join("checkpoints")
    }
    pub fn metrics(&self) -> PathBuf {
        self.root.join("metrics")
    }
    pub fn figures(&self) -> PathBuf {
        self.root.join("figures")
    }
    pub fn latest_checkpoint(&self) -> PathBuf {
        self.checkpoints().join("latest.safetensors")
    }
    /// The resumable checkpoint [`RunDir::latest_checkpoint`] replaced (one generation back),
    /// for `--resume` when `latest` cannot be read; see [`RunDir::save_resumable`].
    pub fn previous_checkpoint(&self) -> PathBuf {
        self.checkpoints().join("previous.safetensors")
    }
    /// Writes the resumable checkpoint (parameters, optimiser state, update, config) as
    /// `latest.safetensors`. With `keep_previous` the file it replaces becomes
    /// `previous.safetensors` (one generation is kept back); without it (the current latest is
    /// known to be unreadable, or there is none) `previous` is left as it is.
    ///
    /// Order: the new file is written and fsynced beside `latest` first, then `latest` is
    /// renamed to `previous`, then the new file to `latest`. A crash between the two renames
    /// leaves no `latest` but a good `previous`, which `--resume` then takes.
    pub fn save_resumable(
        &self,
        params: &Params,
        extra: &BTreeMap<String, Tensor>,
        update: usize,
        cfg: &ExperimentConfig,
        keep_previous: bool,
    ) -> Result<()> {
        let latest = self.latest_checkpoint();
        let tmp = write_temp(&latest, &checkpoint_bytes(params, extra, update, cfg)?)?;
        if keep_previous && latest.exists() {
            let previous = self.previous_checkpoint();
            if let Err(e) = std::fs::rename(&latest, &previous) {
                let _ = std::fs::remove_file(&tmp);
                return Err(e).with_context(|| {
                    format!("renaming {} to {}", latest.display(), previous.display())
                });
            }
        }
        rename_temp(&tmp, &latest)
    }
    pub fn final_model(&self) -> PathBuf {
        self.checkpoints().join(FINAL_MODEL)
    }
    pub fn snapshot(&self, update: usize) -> PathBuf {
        self.checkpoints().join(snapshot_file(update))
    }
    /// `init_from.json`: the checkpoint a finetuned run started from (`train --init-from`).
    pub fn init_from_record(&self) -> PathBuf {
        self.root.join("init_from.json")
    }
    pub fn train_metrics(&self) -> PathBuf {
        self.metrics().join("train.jsonl")
    }

    pub fn write_config(&self, cfg: &ExperimentConfig) -> Result<()> {
        write_atomic(&self.root.join("config.toml"), cfg.to_toml()?.as_bytes())
    }
}

/// File name of the final model in `checkpoints/`.
pub const FINAL_MODEL: &str = "model-final.safetensors";

/// File name in `checkpoints/` of the snapshot taken after update `update`.
pub fn snapshot_file(update: usize) -> String {
    format!("model-step{update:06}.safetensors")
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Meta {
    update: usize,
    config: ExperimentConfig,
}

/// Where `lvrnn eval` writes by default: `<run>/eval-<checkpoint stem>` for a checkpoint at
/// `<run>/checkpoints/<file>`.
pub fn default_eval_dir(checkpoint: &Path) -> PathBuf {
    let stem = checkpoint
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default();
    checkpoint
        .parent()
        .and_then(|p| p.parent())
        .unwrap_or(Path::new("."))
        .join(format!("eval-{stem}"))
}

/// A loaded checkpoint: tensors, the update it was written at, and the experiment config.
pub struct Checkpoint {
    pub tensors: BTreeMap<String, Tensor>,
    pub update: usize,
    pub config: ExperimentConfig,
}

impl Checkpoint {
    /// The model's tensors, without the optimiser state (`adam.*`).
    pub fn model_tensors(&self) -> BTreeMap<String, Tensor> {
        self.tensors
            .iter()
            .filter(|(k, _)| !k.starts_with("adam."))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

/// Writes parameters (and optional extra tensors such as optimizer moments) with the config and
/// update count in the safetensors metadata. Atomic: a crash leaves the previous file intact.
pub fn save_checkpoint(
    path: &Path,
    params: &Params,
    extra: &BTreeMap<String, Tensor>,
    update: usize,
    cfg: &ExperimentConfig,
) -> Result<()> {
    write_atomic(path, &checkpoint_bytes(params, extra, update, cfg)?)
}

/// The bytes of a checkpoint file (see [`save_checkpoint`]).
fn checkpoint_bytes(
    params: &Params,
    extra: &BTreeMap<String, Tensor>,
    update: usize,
    cfg: &ExperimentConfig,
) -> Result<Vec<u8>> {
    let mut tensors = params.tensors();
    tensors.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
    // One metadata entry only: safetensors keeps metadata in a HashMap, whose order would make
    // the bytes non-deterministic with several keys.
    let mut meta = HashMap::new();
    meta.insert(
        "lvrnn".to_string(),
        serde_json::to_string(&Meta {
            update,
            config: cfg.clone(),
        })?,
    );
    crate::nn::safetensors_bytes_with_metadata(&tensors, Some(meta))
}

pub fn load_checkpoint(path: &Path) -> Result<Checkpoint> {
    let bytes =
        std::fs::read(path).with_context(|| format!("reading checkpoint {}", path.display()))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
        .with_context(|| format!("{} is not a safetensors file", path.display()))?;
    let meta = meta.metadata().clone().unwrap_or_default();
    let Meta { update, config } = serde_json::from_str(meta.get("lvrnn").ok_or_else(|| {
        anyhow::anyhow!(
            "{} has no lvrnn metadata (not written by lvrnn?)",
            path.display()
        )
    })?)
    .with_context(|| format!("metadata stored in {}", path.display()))?;
    let damaged = || {
        format!(
            "{}: the file is damaged or its metadata was edited; use another checkpoint (or start the run again with --overwrite)",
            path.display()
        )
    };
    config
        .validate()
        .with_context(|| format!("the config stored in {}", damaged()))?;
    let tensors = read_safetensors(path)?;
    check_tensors(&tensors, &config).with_context(damaged)?;
    Ok(Checkpoint {
        tensors,
        update,
        config,
    })
}

/// Refuses what a model built from `config` would silently compute garbage with, before any
/// model is built: a tensor holding NaN or ±∞, or a config asking for more parameters than the
/// file holds (building it could take all the machine's memory before the shapes are compared;
/// a smaller one is caught by the shape check of `Params::load_from`).
fn check_tensors(tensors: &BTreeMap<String, Tensor>, config: &ExperimentConfig) -> Result<()> {
    let mut stored: u128 = 0;
    for (name, t) in tensors {
        if !name.starts_with("adam.") {
            stored += t.elem_count() as u128;
        }
        if t.dtype().is_float() {
            let values = t
                .flatten_all()?
                .to_dtype(candle_core::DType::F64)?
                .to_vec1::<f64>()?;
            if let Some(i) = values.iter().position(|v| !v.is_finite()) {
                bail!(
                    "tensor `{name}` holds a non-finite value ({} at element {i} of {})",
                    values[i],
                    values.len()
                );
            }
        }
    }
    let expected = crate::config::memory::MemoryEstimate::for_config(config)?.parameters;
    if expected > stored {
        bail!(
            "its config implies {expected} model parameters but the file holds {stored} (model.hidden = {}, model.features = {})",
            config.model.hidden,
            config.model.features
        );
    }
    Ok(())
}
