//! Python bindings of lvrnn (`lvrnn._lvrnn`, wrapped by the pure-Python `lvrnn` package):
//! thin conversions between numpy arrays and the Rust API, no mathematics of their own.
//! - [`PyLaplaceLstm`]: `posterior::standalone::LaplaceLstm`, a foreign LSTM's posterior;
//! - [`PyModel`]: an lvrnn checkpoint read by `inspect::load`, its posterior along histories;
//! - `read_safetensors`: the arrays of a safetensors file as float64;
//! - [`envs`]: the bandit and the gridworld stepped in batches, their reference policies and
//!   exact beliefs (`lvrnn.envs`, `lvrnn.references`).
//!
//! Every error is a `ValueError` with lvrnn's message; a panic (a bug) is caught and raised as
//! `RuntimeError`, never unwinding into Python. Long calls release the GIL.

mod envs;

use lvrnn::inspect::{HistoryModel, StepPosterior};
use lvrnn::posterior::PosteriorConfig;
use lvrnn::posterior::config::LaplaceConfig;
use lvrnn::posterior::standalone::{
    LaplaceLstm, LstmWeights, Named, Projection, Sequences, Trajectory,
};
use numpy::{IntoPyArray, PyArrayDyn, PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Mutex;

/// Runs `f`, turning an error into `ValueError` and a panic into `RuntimeError`.
pub(crate) fn guarded<T>(f: impl FnOnce() -> anyhow::Result<T>) -> PyResult<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(PyValueError::new_err(format!("{e:#}"))),
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            Err(PyRuntimeError::new_err(format!(
                "lvrnn internal error (please report it): {msg}"
            )))
        }
    }
}

/// The Laplace variant a SPEC names (`laplace:window=1,accumulate=sigma,…`); other families and
/// `"auto"` scales are refused with the reason.
fn laplace_spec(spec: &str) -> anyhow::Result<LaplaceConfig> {
    match spec.parse::<PosteriorConfig>()? {
        PosteriorConfig::Laplace(c) => {
            if c.has_auto() {
                anyhow::bail!(
                    "spec `{spec}`: \"auto\" scales are chosen from an lvrnn network at the start of training; for a trained LSTM give a number, or compare several with filter_priors / tune_prior"
                );
            }
            Ok(c)
        }
        other => anyhow::bail!(
            "spec `{spec}` names the `{}` family; a foreign LSTM's posterior is a Laplace one: `laplace:window=…,accumulate=…`",
            other.label()
        ),
    }
}

/// A numpy array of `shape` owning `v` (no copy: the vector becomes the array's buffer).
pub(crate) fn array<'py, T: numpy::Element>(
    py: Python<'py>,
    v: Vec<T>,
    shape: &[usize],
) -> PyResult<Bound<'py, PyArrayDyn<T>>> {
    v.into_pyarray(py).reshape(shape.to_vec())
}

fn trajectory_dict<'py, F: numpy::Element>(
    py: Python<'py>,
    tr: Trajectory<F>,
) -> PyResult<Bound<'py, PyDict>> {
    let (b, t1, n, hd) = (tr.batch, tr.steps + 1, tr.features, tr.hidden);
    let d = PyDict::new(py);
    let precision_shape: Vec<usize> = if tr.diagonal {
        vec![b, t1, n]
    } else {
        vec![b, t1, n, n]
    };
    d.set_item("mean", array(py, tr.mean, &[b, t1, n])?)?;
    d.set_item("precision", array(py, tr.precision, &precision_shape)?)?;
    d.set_item("diagonal", tr.diagonal)?;
    d.set_item("entropy", array(py, tr.entropy, &[b, t1])?)?;
    d.set_item("kl", array(py, tr.kl, &[b, t1])?)?;
    d.set_item("h", array(py, tr.h, &[b, t1, hd])?)?;
    d.set_item("c", array(py, tr.c, &[b, t1, hd])?)?;
    Ok(d)
}

/// An initial carry's shape must be (B, H).
fn check_carry(name: &str, shape: Option<&[usize]>, b: usize, hd: usize) -> anyhow::Result<()> {
    match shape {
        Some(s) if s != [b, hd] => {
            anyhow::bail!("{name} has shape {s:?}; expected (B, H) = ({b}, {hd})")
        }
        _ => Ok(()),
    }
}

/// (B, T) of a (B, T, d_in) array with d_in checked.
fn sequence_shape(shape: &[usize], d_in: usize) -> anyhow::Result<(usize, usize)> {
    match shape {
        [b, t, d] if *d == d_in => Ok((*b, *t)),
        [_, _, d] => {
            anyhow::bail!("inputs have {d} features per step; this LSTM takes d_in = {d_in}")
        }
        _ => anyhow::bail!(
            "inputs have shape {shape:?}; expected (B, T, d_in) (add a leading axis for one sequence)"
        ),
    }
}

/// The Laplace posterior of a foreign single-layer LSTM (see `lvrnn.LaplaceLSTM`).
#[pyclass(name = "LaplaceLstm", module = "lvrnn._lvrnn", frozen)]
struct PyLaplaceLstm {
    inner: LaplaceLstm,
}

#[pymethods]
impl PyLaplaceLstm {
    /// `weights`: {name: float64 array} in PyTorch (`weight_ih_l0` …) or flattened Flax
    /// (`ii/kernel` …) layout; `projection`: (H, n) float64 or None (z = h); `bias`: (n) or None.
    #[new]
    #[pyo3(signature = (weights, projection=None, bias=None))]
    fn new(
        weights: HashMap<String, PyReadonlyArrayDyn<'_, f64>>,
        projection: Option<PyReadonlyArrayDyn<'_, f64>>,
        bias: Option<PyReadonlyArrayDyn<'_, f64>>,
    ) -> PyResult<Self> {
        let named: Named = weights
            .into_iter()
            .map(|(k, a)| {
                let shape = a.shape().to_vec();
                (k, (a.as_array().iter().copied().collect(), shape))
            })
            .collect();
        let proj = projection.map(|p| {
            (
                p.as_array().iter().copied().collect::<Vec<f64>>(),
                p.shape().to_vec(),
            )
        });
        let bias = bias.map(|b| b.as_array().iter().copied().collect::<Vec<f64>>());
        guarded(|| {
            let lstm = LstmWeights::from_named(&named)?;
            let proj = match proj {
                Some((w, shape)) => Some(Projection::new(w, &shape, bias, lstm.hidden)?),
                None if bias.is_some() => {
                    anyhow::bail!("a projection bias without a projection weight")
                }
                None => None,
            };
            Ok(Self {
                inner: LaplaceLstm::new(lstm, proj)?,
            })
        })
    }

    #[getter]
    fn input_size(&self) -> usize {
        self.inner.lstm.d_in
    }
    #[getter]
    fn hidden_size(&self) -> usize {
        self.inner.lstm.hidden
    }
    #[getter]
    fn features(&self) -> usize {
        self.inner.proj.features
    }

    /// The posterior along float32 sequences (the fast filter); inputs (B, T, d_in)
    /// C-contiguous, h0/c0 (B, H) or None.
    #[pyo3(signature = (inputs, spec, h0=None, c0=None))]
    fn filter_f32<'py>(
        &self,
        py: Python<'py>,
        inputs: PyReadonlyArrayDyn<'py, f32>,
        spec: &str,
        h0: Option<PyReadonlyArrayDyn<'py, f32>>,
        c0: Option<PyReadonlyArrayDyn<'py, f32>>,
    ) -> PyResult<Bound<'py, PyDict>> {
        self.filter_with(py, inputs, spec, h0, c0, LaplaceLstm::filter_f32)
    }

    /// The same along float64 sequences (the per-step reference, f64 throughout).
    #[pyo3(signature = (inputs, spec, h0=None, c0=None))]
    fn filter_f64<'py>(
        &self,
        py: Python<'py>,
        inputs: PyReadonlyArrayDyn<'py, f64>,
        spec: &str,
        h0: Option<PyReadonlyArrayDyn<'py, f64>>,
        c0: Option<PyReadonlyArrayDyn<'py, f64>>,
    ) -> PyResult<Bound<'py, PyDict>> {
        self.filter_with(py, inputs, spec, h0, c0, LaplaceLstm::filter_f64)
    }
}

impl PyLaplaceLstm {
    /// Checks the spec and the shapes, then runs `filter` without the GIL: the body of both
    /// `filter_f32` and `filter_f64`.
    fn filter_with<'py, F: numpy::Element + Sync>(
        &self,
        py: Python<'py>,
        inputs: PyReadonlyArrayDyn<'py, F>,
        spec: &str,
        h0: Option<PyReadonlyArrayDyn<'py, F>>,
        c0: Option<PyReadonlyArrayDyn<'py, F>>,
        filter: fn(&LaplaceLstm, &LaplaceConfig, &Sequences<F>) -> anyhow::Result<Trajectory<F>>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let cfg = guarded(|| laplace_spec(spec))?;
        let (b, t) = guarded(|| sequence_shape(inputs.shape(), self.inner.lstm.d_in))?;
        let hd = self.inner.lstm.hidden;
        guarded(|| check_carry("h0", h0.as_ref().map(|a| a.shape()), b, hd))?;
        guarded(|| check_carry("c0", c0.as_ref().map(|a| a.shape()), b, hd))?;
        let seq = Sequences {
            inputs: inputs.as_slice()?,
            batch: b,
            steps: t,
            h0: h0.as_ref().map(|a| a.as_slice()).transpose()?,
            c0: c0.as_ref().map(|a| a.as_slice()).transpose()?,
        };
        let tr = py.allow_threads(|| guarded(|| filter(&self.inner, &cfg, &seq)))?;
        trajectory_dict(py, tr)
    }
}

/// An lvrnn checkpoint (see `lvrnn.load`).
#[pyclass(name = "Model", module = "lvrnn._lvrnn", frozen)]
struct PyModel {
    path: std::path::PathBuf,
    /// The model under each SPEC asked for so far ("" = the checkpoint's own posterior).
    loaded: Mutex<HashMap<String, std::sync::Arc<dyn HistoryModel>>>,
}

impl PyModel {
    fn under(&self, spec: Option<&str>) -> anyhow::Result<std::sync::Arc<dyn HistoryModel>> {
        let key = spec.unwrap_or("").to_string();
        let mut loaded = self
            .loaded
            .lock()
            .map_err(|_| anyhow::anyhow!("model lock poisoned"))?;
        if let Some(m) = loaded.get(&key) {
            return Ok(m.clone());
        }
        let m: std::sync::Arc<dyn HistoryModel> = lvrnn::inspect::load(&self.path, spec)?.into();
        loaded.insert(key, m.clone());
        Ok(m)
    }
}

#[pymethods]
impl PyModel {
    #[new]
    fn new(py: Python<'_>, path: std::path::PathBuf) -> PyResult<Self> {
        let model = Self {
            path,
            loaded: Mutex::new(HashMap::new()),
        };
        py.allow_threads(|| guarded(|| model.under(None).map(|_| ())))?;
        Ok(model)
    }

    /// Columns of one history row.
    #[getter]
    fn columns(&self) -> PyResult<usize> {
        guarded(|| Ok(self.under(None)?.columns()))
    }

    /// The posterior along histories (B, T, columns) float64, under `spec` (None: the
    /// checkpoint's own): the numbers `lvrnn inspect` prints, stacked.
    #[pyo3(signature = (histories, spec=None))]
    fn posterior<'py>(
        &self,
        py: Python<'py>,
        histories: PyReadonlyArrayDyn<'py, f64>,
        spec: Option<&str>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let shape = histories.shape().to_vec();
        let x = histories.as_slice()?;
        let traces = py.allow_threads(|| {
            guarded(|| {
                let model = self.under(spec)?;
                let (b, t, d) = match shape[..] {
                    [b, t, d] if d == model.columns() => (b, t, d),
                    _ => anyhow::bail!(
                        "histories have shape {shape:?}; expected (B, T, {}) (rows as `lvrnn inspect` reads them)",
                        model.columns()
                    ),
                };
                if b == 0 {
                    anyhow::bail!("histories hold no history (B = 0)");
                }
                if t == 0 {
                    anyhow::bail!("histories hold no step (T = 0): a history needs at least one row");
                }
                let diagonal = model.core().posterior.laplace().is_some_and(|c| c.diagonal);
                let traces = (0..b)
                    .map(|k| {
                        let rows: Vec<Vec<f32>> = (0..t)
                            .map(|s| x[(k * t + s) * d..(k * t + s + 1) * d].iter().map(|v| *v as f32).collect())
                            .collect();
                        lvrnn::inspect::trace(model.as_ref(), &rows)
                            .map_err(|e| e.context(format!("history {k}")))
                    })
                    .collect::<anyhow::Result<Vec<Vec<StepPosterior>>>>()?;
                Ok((traces, diagonal))
            })
        })?;
        stack(py, traces.0, traces.1)
    }
}

/// The traces of B histories as arrays with a leading B axis.
/// `traces` holds at least one history of at least one step; `diagonal`: the posterior is a
/// diagonal Laplace one (its precisions are returned as diagonals).
fn stack<'py>(
    py: Python<'py>,
    traces: Vec<Vec<StepPosterior>>,
    diagonal: bool,
) -> PyResult<Bound<'py, PyDict>> {
    let (b, t1) = (traces.len(), traces[0].len());
    let n = traces[0][0].mean.len();
    let steps = || traces.iter().flatten();
    let d = PyDict::new(py);
    d.set_item(
        "mean",
        array(
            py,
            steps()
                .flat_map(|s| s.mean.iter().copied())
                .collect::<Vec<f32>>(),
            &[b, t1, n],
        )?,
    )?;
    if traces[0][0].precision.is_some() {
        let v: Vec<f64> = if diagonal {
            steps()
                .flat_map(|s| {
                    let p = s.precision.as_ref().expect("every step has one");
                    (0..n).map(move |i| p[i * n + i])
                })
                .collect()
        } else {
            steps()
                .flat_map(|s| s.precision.iter().flatten().copied())
                .collect()
        };
        let shape = if diagonal {
            vec![b, t1, n]
        } else {
            vec![b, t1, n, n]
        };
        d.set_item("precision", array(py, v, &shape)?)?;
    }
    if traces[0][0].covariance.is_some() {
        let v: Vec<f64> = steps()
            .flat_map(|s| s.covariance.iter().flatten().copied())
            .collect();
        d.set_item("covariance", array(py, v, &[b, t1, n, n])?)?;
    }
    d.set_item("diagonal", diagonal)?;
    let entropy: Vec<f64> = steps().map(|s| s.entropy.unwrap_or(f64::NAN)).collect();
    let kl: Vec<f64> = steps()
        .map(|s| s.kl.map_or(f64::NAN, |k| k as f64))
        .collect();
    d.set_item("entropy", array(py, entropy, &[b, t1])?)?;
    d.set_item("kl", array(py, kl, &[b, t1])?)?;
    Ok(d)
}

/// The arrays of a safetensors file as {name: float64 array} (F32, F64, F16 and BF16 tensors).
#[pyfunction]
fn read_safetensors<'py>(
    py: Python<'py>,
    path: std::path::PathBuf,
) -> PyResult<Bound<'py, PyDict>> {
    let arrays = guarded(|| {
        let bytes =
            std::fs::read(&path).map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
        let st = safetensors::SafeTensors::deserialize(&bytes)
            .map_err(|e| anyhow::anyhow!("{} is not a safetensors file: {e}", path.display()))?;
        let mut out = vec![];
        for (name, view) in st.tensors() {
            let data = view.data();
            use safetensors::Dtype;
            let values: Vec<f64> = match view.dtype() {
                Dtype::F32 => data
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
                    .collect(),
                Dtype::F64 => data
                    .chunks_exact(8)
                    .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
                    .collect(),
                Dtype::F16 => data
                    .chunks_exact(2)
                    .map(|c| half_to_f64(u16::from_le_bytes([c[0], c[1]])))
                    .collect(),
                Dtype::BF16 => data
                    .chunks_exact(2)
                    .map(|c| f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16) as f64)
                    .collect(),
                other => anyhow::bail!(
                    "tensor `{name}` of {} has dtype {other:?}; expected a float tensor",
                    path.display()
                ),
            };
            out.push((name, values, view.shape().to_vec()));
        }
        Ok(out)
    })?;
    let d = PyDict::new(py);
    for (name, v, shape) in arrays {
        d.set_item(name, array(py, v, &shape)?)?;
    }
    Ok(d)
}

/// IEEE half → f64.
fn half_to_f64(h: u16) -> f64 {
    let (sign, exp, frac) = ((h >> 15) & 1, (h >> 10) & 0x1f, h & 0x3ff);
    let s = if sign == 1 { -1.0 } else { 1.0 };
    match exp {
        0 => s * (frac as f64) * 2f64.powi(-24),
        31 if frac == 0 => s * f64::INFINITY,
        31 => f64::NAN,
        e => s * (1.0 + frac as f64 / 1024.0) * 2f64.powi(e as i32 - 15),
    }
}

/// Sets the number of CPU threads of the kernels (once per process, before any work).
#[pyfunction]
fn set_threads(n: usize) -> PyResult<()> {
    if n == 0 {
        return Err(PyValueError::new_err(
            "threads must be a positive integer (got 0)",
        ));
    }
    lvrnn::init_threads(n);
    Ok(())
}

#[pymodule]
fn _lvrnn(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyLaplaceLstm>()?;
    m.add_class::<PyModel>()?;
    m.add_function(wrap_pyfunction!(read_safetensors, m)?)?;
    m.add_function(wrap_pyfunction!(set_threads, m)?)?;
    m.add_class::<envs::PyTaskBatch>()?;
    m.add_function(wrap_pyfunction!(envs::reference_runs, m)?)?;
    m.add_function(wrap_pyfunction!(envs::bandit_belief, m)?)?;
    m.add_function(wrap_pyfunction!(envs::grid_belief, m)?)?;
    Ok(())
}
