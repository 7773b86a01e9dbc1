//! `cargo bench --bench laplace_filter`: the Laplace filter's cost per task and step at the
//! paper's sizes (H = 128, n = 64, batch 256) on one thread, for the Table-2 variants the RL
//! configs use, and its f64 kernels beside the simple ones they are tested against.

use lvrnn::linalg::{self, upper};
use lvrnn::posterior::PosteriorConfig;
use lvrnn::posterior::filter::{JacobianWeights, LaplaceFilter};
use std::time::Instant;

/// CPU time of this process in seconds (less disturbed than wall time when other processes
/// share the cores; on one thread it is the call's own work).
fn process_cpu_seconds() -> f64 {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes into the timespec we own.
        unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
        ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        f64::NAN
    }
}

/// Mean microseconds per call of `f` over `reps` calls.
fn micros(reps: usize, mut f: impl FnMut()) -> f64 {
    let start = Instant::now();
    (0..reps).for_each(|_| f());
    start.elapsed().as_secs_f64() / reps as f64 * 1e6
}

fn main() {
    lvrnn::init_threads(1);
    let (hidden, n, batch, steps) = (128, 64, 256, 10);
    let val = |i: usize, s: f32| (i as f32 * 0.7123 + s).sin() * 0.5;
    let rows = |len: usize, s: f32| -> Vec<f32> { (0..len).map(|i| val(i, s)).collect() };
    let weights = JacobianWeights::new(
        rows(hidden * 4 * hidden, 0.1)
            .iter()
            .map(|v| v * 0.2)
            .collect(),
        rows(hidden * n, 0.2).iter().map(|v| v * 0.2).collect(),
        hidden,
        n,
    );
    let inputs: Vec<_> = (0..steps)
        .map(|t| {
            let s = t as f32;
            let (c, h) = (rows(batch * hidden, 1.0 + s), rows(batch * hidden, 2.0 + s));
            (
                c,
                h,
                rows(batch * 4 * hidden, 3.0 + s),
                rows(batch * n, 4.0 + s),
            )
        })
        .collect();
    let eps = rows(batch * n, 9.0);
    println!("Laplace filter, H = {hidden}, n = {n}, batch {batch}, 1 thread");
    println!("{:<48} {:>14}", "variant", "µs/task-step");
    for spec in [
        "laplace:window=1,accumulate=sigma",
        "laplace:window=1,accumulate=sigma,diagonal=true",
        "laplace:window=1,accumulate=mu_sigma",
        "laplace:window=10,accumulate=none",
    ] {
        let PosteriorConfig::Laplace(cfg) = spec.parse().expect("a Laplace spec") else {
            unreachable!()
        };
        let mut filter =
            LaplaceFilter::new(&cfg, &rows(batch * n, 0.3), batch, &weights).expect("prior");
        let start = Instant::now();
        for (c, h, xw, phi) in &inputs {
            filter.step(&weights, c, h, xw, phi).expect("step");
            std::hint::black_box(filter.sample_offsets(&eps));
        }
        let per = start.elapsed().as_secs_f64() / (steps * batch) as f64 * 1e6;
        println!("{spec:<48} {per:>14.1}");
    }

    // A foreign LSTM's whole posterior (`posterior::standalone`, what the Python package's
    // `LaplaceLSTM.filter` runs on float32 inputs): the LSTM over B = 256 sequences of T = 50
    // inputs (d_in = 32), the filter, and every statistic written out, (B, T+1, n, n)
    // precisions included. python/bench.py times the Python call on the same sizes.
    {
        use lvrnn::posterior::standalone::{
            LaplaceLstm, LstmWeights, Named, Projection, Sequences,
        };
        let (d_in, steps) = (32, 50);
        let f64s = |len: usize, s: f32, scale: f64| -> Vec<f64> {
            (0..len).map(|i| val(i, s) as f64 * scale).collect()
        };
        let mut named = Named::new();
        named.insert(
            "weight_ih_l0".into(),
            (f64s(4 * hidden * d_in, 0.1, 0.4), vec![4 * hidden, d_in]),
        );
        named.insert(
            "weight_hh_l0".into(),
            (
                f64s(4 * hidden * hidden, 0.2, 0.2),
                vec![4 * hidden, hidden],
            ),
        );
        let lstm = LstmWeights::from_torch(&named).expect("weights");
        let proj =
            Projection::new(f64s(hidden * n, 0.3, 0.2), &[hidden, n], None, hidden).expect("P");
        let model = LaplaceLstm::new(lstm, Some(proj)).expect("model");
        let inputs = rows(batch * steps * d_in, 0.5);
        let PosteriorConfig::Laplace(cfg) =
            "laplace:window=1,accumulate=sigma".parse().expect("spec")
        else {
            unreachable!()
        };
        let seq = Sequences {
            inputs: &inputs,
            batch,
            steps,
            h0: None,
            c0: None,
        };
        model.filter_f32(&cfg, &seq).expect("warm-up");
        let reps = 3;
        let cpu0 = process_cpu_seconds();
        let ms = micros(reps, || {
            std::hint::black_box(model.filter_f32(&cfg, &seq).expect("filter"));
        }) / 1e3;
        let cpu_ms = (process_cpu_seconds() - cpu0) / reps as f64 * 1e3;
        println!(
            "\nstandalone LaplaceLstm::filter_f32, B = {batch}, T = {steps}, d_in = {d_in}, window 1, Σ accumulated"
        );
        println!(
            "{:<48} {ms:>14.1}",
            "ms/call, wall (all statistics returned)"
        );
        println!("{:<48} {cpu_ms:>14.1}", "ms/call, process CPU time");
    }

    // The f64 kernels at n = 64 on A = M Mᵀ + I.
    let m: Vec<f64> = (0..n * n).map(|i| (i as f64 * 0.37).sin()).collect();
    let spd: Vec<f64> = (0..n * n)
        .map(|k| {
            let (i, j) = (k / n, k % n);
            let s: f64 = (0..n).map(|q| m[i * n + q] * m[j * n + q]).sum();
            s + if i == j { 1.0 } else { 0.0 }
        })
        .collect();
    let reps = 5000;
    let (mut l, mut u) = (spd.clone(), vec![0.0; n * n]);
    println!("\nf64 kernels, n = {n}                             µs/call");
    let t = micros(reps, || {
        l.copy_from_slice(&spd);
        linalg::cholesky_in_place(&mut l, n).expect("SPD");
    });
    println!("{:<48} {t:>14.2}", "cholesky_in_place (simple)");
    let t = micros(reps, || {
        upper::cholesky_upper(&spd, 0.0, n, &mut u).expect("SPD")
    });
    println!("{:<48} {t:>14.2}", "upper::cholesky_upper (blocked)");
    let (mut l2, mut u2) = (spd.clone(), vec![0.0; n * n]);
    (0..n).for_each(|i| l2[i * n + i] += 1.0);
    let shifted = l2.clone();
    linalg::cholesky_in_place(&mut l2, n).expect("SPD");
    upper::cholesky_upper(&shifted, 0.0, n, &mut u2).expect("SPD");
    let t = micros(reps, || {
        std::hint::black_box(linalg::frobenius_sq_lower_solve(&l, &l2, n));
    });
    println!("{:<48} {t:>14.2}", "frobenius_sq_lower_solve (simple)");
    let t = micros(reps, || {
        std::hint::black_box(upper::frobenius_sq_upper_solve(&u, &u2, n));
    });
    println!(
        "{:<48} {t:>14.2}",
        "upper::frobenius_sq_upper_solve (blocked)"
    );
}
