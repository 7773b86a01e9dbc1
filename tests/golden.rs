//! Golden vectors made with the authors' stack (flax OptimizedLSTMCell + jax.jacfwd, float64):
//! every variant of every `*.json` in `$LVRNN_GOLDEN_DIR` (default `tests/data/golden`, kept in
//! the repository) must be
//! reproduced by this crate's LSTM, analytic Jacobian and Laplace posterior — mean, precision,
//! entropy and KL(q_t ‖ q_{t−1}) per step, and the Jacobian for the current input.
//! Tolerance (f32 arithmetic against float64 references): |a − b| ≤ 1e-4·max(1, |b|).

use candle_core::{Device, Tensor};
use lvrnn::nn::lstm::{Carry, Lstm};
use lvrnn::nn::mlp::Linear;
use lvrnn::posterior::laplace::Laplace;
use lvrnn::posterior::{Accumulate, Covariance, LaplaceConfig, PosteriorFamily, StepInput};
use serde_json::Value;
use std::path::PathBuf;

const TOL: f64 = 1e-4;

fn golden_dir() -> PathBuf {
    match std::env::var("LVRNN_GOLDEN_DIR") {
        Ok(d) => PathBuf::from(d),
        Err(_) => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/golden"),
    }
}

fn vec1(v: &Value) -> Vec<f64> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number"))
        .collect()
}

fn mat(v: &Value) -> Vec<Vec<f64>> {
    v.as_array().expect("array").iter().map(vec1).collect()
}

fn tensor2(m: &[Vec<f64>]) -> Tensor {
    let (r, c) = (m.len(), m[0].len());
    let flat: Vec<f32> = m.iter().flatten().map(|x| *x as f32).collect();
    Tensor::from_vec(flat, (r, c), &Device::Cpu).unwrap()
}

fn close(what: &str, got: f64, want: f64) {
    assert!(
        (got - want).abs() <= TOL * want.abs().max(1.0),
        "{what}: got {got}, golden {want}"
    );
}

fn check_file(path: &std::path::Path) -> usize {
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let w = &doc["weights"];
    let gates = ["i", "f", "g", "o"];
    // (in, out) matrices per gate → stacked (in, 4H) in gate order i, f, g, o.
    let stack = |key: &str| {
        let mats: Vec<Tensor> = gates.iter().map(|g| tensor2(&mat(&w[key][g]))).collect();
        Tensor::cat(&mats, 1).unwrap()
    };
    let hidden = doc["hidden"].as_u64().unwrap() as usize;
    let n = doc["n"].as_u64().unwrap() as usize;
    let b: Vec<f32> = gates
        .iter()
        .flat_map(|g| vec1(&w["b"][g]))
        .map(|x| x as f32)
        .collect();
    let lstm = Lstm {
        wx: stack("W_x"),
        wh: stack("W_h"),
        b: Tensor::new(b, &Device::Cpu).unwrap(),
        hidden,
    };
    let pb: Vec<f32> = vec1(&w["p_b"]).iter().map(|x| *x as f32).collect();
    let proj = Linear {
        weight: tensor2(&mat(&w["P"])),
        bias: Tensor::new(pb, &Device::Cpu).unwrap(),
    };
    let inputs = mat(&doc["inputs"]);
    let jitter = doc["jitter"].as_f64().unwrap();
    let prior = doc["prior_precision_t0"].as_f64().unwrap();
    let variants = doc["variants"].as_object().expect("variants");
    assert!(!variants.is_empty(), "{} has no variants", path.display());
    let mut checked = 0;
    for (name, v) in variants {
        let c = &v["config"];
        let accumulate = match (
            c["acc_prec"].as_bool().unwrap(),
            c["acc_mean"].as_bool().unwrap(),
        ) {
            (false, false) => Accumulate::None,
            (true, false) => Accumulate::Sigma,
            (true, true) => Accumulate::MuSigma,
            (false, true) => panic!(
                "{name}: mean accumulation without precision accumulation is not a Table-2 variant"
            ),
        };
        let cfg = LaplaceConfig {
            window: c["window"].as_u64().unwrap() as usize,
            accumulate,
            diagonal: c["diagonal"].as_bool().unwrap(),
            damping: c["damping"].as_f64().unwrap_or(1.0),
            jitter,
            prior_precision: prior,
            auto: Default::default(),
            chosen: Default::default(),
        };
        let family = Laplace::new(cfg.clone());
        let mut carry = Carry::zeros(1, hidden, &candle_core::Device::Cpu).unwrap();
        let mut q = family.init(&proj.forward(&carry.h).unwrap()).unwrap();
        let mut window: Vec<Tensor> = vec![];
        for (t, step) in v["steps"].as_array().unwrap().iter().enumerate() {
            let x = Tensor::from_vec(
                inputs[t].iter().map(|v| *v as f32).collect::<Vec<_>>(),
                (1, inputs[t].len()),
                &Device::Cpu,
            )
            .unwrap();
            carry = lstm.step(&x, &carry).unwrap();
            window.push(x.clone());
            let phi = proj.forward(&carry.h).unwrap();
            let input = StepInput {
                phi: &phi,
                carry: &carry,
                lstm: &lstm,
                proj: &proj,
                window: &window,
            };
            let next = family.step(&input, &q).unwrap();
            let kl = next.kl_to(&q).unwrap().unwrap().to_vec1::<f32>().unwrap()[0] as f64;
            let entropy = next.entropy().unwrap().unwrap()[0];
            let tag = format!("{}:{name}:t={}", path.display(), t + 1);
            // Jacobian of the current input at the current carry.
            let j: Vec<Vec<f32>> = lstm
                .output_jacobian(&x, &carry, &proj)
                .unwrap()
                .squeeze(0)
                .unwrap()
                .to_vec2()
                .unwrap();
            for (r, row) in mat(&step["jacobian_current_input"]).iter().enumerate() {
                for (k, want) in row.iter().enumerate() {
                    close(&format!("{tag} jacobian[{r}][{k}]"), j[r][k] as f64, *want);
                }
            }
            let mean: Vec<f32> = next.mean.squeeze(0).unwrap().to_vec1().unwrap();
            for (k, want) in vec1(&step["mean"]).iter().enumerate() {
                close(&format!("{tag} mean[{k}]"), mean[k] as f64, *want);
            }
            let Covariance::Precision(p) = &next.cov else {
                panic!("Laplace gives a precision")
            };
            let dense = p.dense(0);
            for (r, row) in mat(&step["precision"]).iter().enumerate() {
                for (k, want) in row.iter().enumerate() {
                    close(
                        &format!("{tag} precision[{r}][{k}]"),
                        dense[r * n + k],
                        *want,
                    );
                }
            }
            close(
                &format!("{tag} entropy"),
                entropy,
                step["entropy"].as_f64().unwrap(),
            );
            close(
                &format!("{tag} kl"),
                kl,
                step["kl_to_previous"].as_f64().unwrap(),
            );
            q = next;
            checked += 1;
        }
    }
    checked
}

#[test]
fn golden_vectors_match_every_variant_of_every_file() {
    lvrnn::init_threads(1);
    let dir = golden_dir();
    let files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| {
            panic!(
                "golden folder {} cannot be read ({e}); set LVRNN_GOLDEN_DIR",
                dir.display()
            )
        })
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    assert!(
        !files.is_empty(),
        "no *.json golden files in {}",
        dir.display()
    );
    for f in &files {
        let steps = check_file(f);
        assert!(steps > 0, "{} holds no steps", f.display());
        eprintln!("golden {}: {steps} steps checked", f.display());
    }
}
