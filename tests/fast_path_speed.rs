//! The fused ops of issue 27 against the unfused candle graphs they replace, values and
//! gradients (nothing timed).

mod common;

use candle_core::{D, Device, Tensor, Var};
use common::fast_path::assert_close;
use common::tensors::values;
use lvrnn::nn::Params;
use lvrnn::nn::head::{Gathered, Head, HeadTrace, TableFactors};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::sync::Arc;

fn randn(rng: &mut ChaCha8Rng, shape: &[usize]) -> Tensor {
    lvrnn::agent::randn(rng, shape, &Device::Cpu).unwrap()
}

/// Moves the heads' biases off zero (no unit on the leaky-ReLU kink).
fn jitter(params: &Params) {
    common::fast_path::jitter_biases(params);
}

/// `Head::forward_shared` (both heads as one node, the state part of the input gathered from a
/// table of distinct rows) equals the unfused graph — `index_select`, broadcast over the
/// samples, `cat` with z, then each head as its chain of one-layer nodes — in the outputs
/// and in the gradients of the table, z and every head parameter; with and without the
/// gathered part, with and without an index, and from the heads' traces.
#[test]
fn shared_heads_equal_the_unfused_graph_with_gradients() {
    lvrnn::init_threads(1);
    let (steps, samples, batch, e, n, distinct) = (5, 2, 7, 6, 4, 9);
    // (gather, index, traced, the value head without hidden layers). With the index the table
    // has few rows for the 70 rows gathered from it, and the backward runs through the table
    // (`nn::first_layer`); without it, one row per (t, b), the backward is the generic one.
    for (gather, indexed, traced, shallow) in [
        (true, true, false, false),
        (true, true, true, false),
        (true, true, false, true),
        (true, false, false, false),
        (false, false, false, false),
        (false, false, true, false),
    ] {
        let what =
            format!("gather {gather}, index {indexed}, traced {traced}, shallow value {shallow}");
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let mut params = Params::new();
        let d = if gather { e + n } else { n };
        let policy = Head::new(&mut params, "policy", d, &[8, 8], 3, &mut rng).unwrap();
        let value_hidden: &[usize] = if shallow { &[] } else { &[8] };
        let value = Head::new(&mut params, "value", d, value_hidden, 1, &mut rng).unwrap();
        jitter(&params);
        let table_rows = if indexed { distinct } else { steps * batch };
        let table = Var::from_tensor(&randn(&mut rng, &[table_rows, e])).unwrap();
        let z = Var::from_tensor(&randn(&mut rng, &[steps, samples, batch, n])).unwrap();
        let index: Vec<u32> = (0..steps * batch)
            .map(|_| rng.gen_range(0..distinct as u32))
            .collect();
        let rows = steps * samples * batch;
        let weights = [randn(&mut rng, &[rows, 3]), randn(&mut rng, &[rows, 1])];

        // The unfused reference.
        let input = if gather {
            let emb = match indexed {
                true => {
                    let idx = Tensor::from_vec(index.clone(), steps * batch, &Device::Cpu).unwrap();
                    table.as_tensor().index_select(&idx, 0).unwrap()
                }
                false => table.as_tensor().clone(),
            };
            let emb = emb
                .reshape((steps, 1, batch, e))
                .unwrap()
                .broadcast_as((steps, samples, batch, e))
                .unwrap()
                .contiguous()
                .unwrap();
            Tensor::cat(&[&emb, z.as_tensor()], D::Minus1).unwrap()
        } else {
            z.as_tensor().clone()
        };
        let flat = input.reshape((rows, d)).unwrap();
        let slow = [
            policy.forward_layers(&flat).unwrap(),
            value.forward_layers(&flat).unwrap(),
        ];

        // The fused node.
        let traces = traced.then(|| {
            let x: Vec<f32> = flat.flatten_all().unwrap().to_vec1().unwrap();
            let packed = [
                policy.packed_values().unwrap(),
                value.packed_values().unwrap(),
            ];
            let heads = [(&policy, &packed[0][..]), (&value, &packed[1][..])];
            Head::trace_all(&heads, &x, rows)
                .unwrap()
                .into_iter()
                .map(Arc::new)
                .collect::<Vec<Arc<HeadTrace>>>()
        });
        let gathered = Gathered {
            table: table.as_tensor(),
            index: indexed.then_some(&index[..]),
            samples,
            batch,
        };
        let fast = Head::forward_shared(
            &[&policy, &value],
            gather.then_some(&gathered),
            z.as_tensor(),
            traces,
        )
        .unwrap();

        let loss = |outs: &[Tensor]| {
            let a = outs[0].mul(&weights[0]).unwrap().sum_all().unwrap();
            let b = outs[1].mul(&weights[1]).unwrap().sum_all().unwrap();
            (a + b).unwrap()
        };
        for h in 0..2 {
            assert_close(
                &format!("{what}: head {h} output"),
                &values(&fast[h]),
                &values(&slow[h]),
                1.0,
            );
        }
        let (gf, gs) = (
            loss(&fast).backward().unwrap(),
            loss(&slow).backward().unwrap(),
        );
        let mut checked = vec![("z", z.as_tensor().clone())];
        if gather {
            checked.push(("table", table.as_tensor().clone()));
        }
        for (name, var) in params.vars() {
            checked.push((name.as_str(), var.as_tensor().clone()));
        }
        for (name, t) in checked {
            let (a, b) = (gf.get(&t), gs.get(&t));
            let (a, b) = (a.expect(name), b.expect(name));
            assert_close(&format!("{what}: ∂L/∂{name}"), &values(a), &values(b), 1.0);
        }
    }
}

/// `lstm_sequence_gathered` (the sequence's input rows gathered from distinct rows inside the
/// fused LSTM op) equals `index_select` followed by `lstm_sequence_rows`, in the outputs and in
/// the gradients of the distinct rows and of W_h.
/// `Head::trace_all_gathered` (the rollout's heads on [table row, z], the first layer through
/// the table) equals `Head::trace_all` on the assembled rows — every layer input and the
/// output — step after step while the table grows and its factors are kept between the
/// calls, for a hidden-layer head and a one-layer head, with several samples per row.
#[test]
fn gathered_head_traces_equal_the_traces_of_the_assembled_rows() {
    lvrnn::init_threads(1);
    let (samples, batch, e, n) = (3, 5, 6, 4);
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let mut params = Params::new();
    let policy = Head::new(&mut params, "policy", e + n, &[8, 8], 3, &mut rng).unwrap();
    let value = Head::new(&mut params, "value", e + n, &[], 1, &mut rng).unwrap();
    jitter(&params);
    let packed = [
        policy.packed_values().unwrap(),
        value.packed_values().unwrap(),
    ];
    let heads = [(&policy, &packed[0][..]), (&value, &packed[1][..])];
    let mut factors = TableFactors::default();
    let mut table: Vec<f32> = vec![];
    for step in 0..4 {
        // Two new table rows per step (shifted away from zero mean), rows drawn from all so far.
        let fresh = values(&randn(&mut rng, &[2, e]).affine(1.5, 0.7).unwrap());
        table.extend(fresh.iter().map(|v| *v as f32));
        let u = table.len() / e;
        let index: Vec<u32> = (0..batch).map(|_| rng.gen_range(0..u as u32)).collect();
        let z: Vec<f32> = values(&randn(&mut rng, &[samples * batch, n]))
            .iter()
            .map(|v| *v as f32)
            .collect();
        let rows = samples * batch;
        let mut x = Vec::with_capacity(rows * (e + n));
        for r in 0..rows {
            let t = index[r % batch] as usize;
            x.extend_from_slice(&table[t * e..(t + 1) * e]);
            x.extend_from_slice(&z[r * n..(r + 1) * n]);
        }
        let fast =
            Head::trace_all_gathered(&heads, &mut factors, &table, &index, &z, samples).unwrap();
        let slow = Head::trace_all(&heads, &x, rows).unwrap();
        let f64s = |v: &[f32]| v.iter().map(|x| *x as f64).collect::<Vec<_>>();
        for (h, (a, b)) in fast.iter().zip(&slow).enumerate() {
            assert_eq!(a.rows, b.rows);
            assert_eq!(a.layer_inputs.len(), b.layer_inputs.len());
            for (l, (ya, yb)) in a.layer_inputs.iter().zip(&b.layer_inputs).enumerate() {
                let what = format!("step {step}, head {h}, layer input {l}");
                assert_close(&what, &f64s(ya), &f64s(yb), 1.0);
            }
            let what = format!("step {step}, head {h}, output");
            assert_close(&what, &f64s(&a.output), &f64s(&b.output), 1.0);
        }
    }
}

/// `lstm_sequence_known` on the states and gates a rollout's `lstm_step`s left equals the
/// sequence op computing them (the states, ∂L/∂xw and ∂L/∂W_h), with and without an index;
/// a second pass over the same trace (its parts taken) computes its own and agrees too.
#[test]
fn lstm_sequence_from_the_rollouts_steps_equals_the_sequence_op() {
    use lvrnn::nn::lstm_seq::{
        SequenceTrace, lstm_sequence_gathered, lstm_sequence_known, lstm_sequence_rows, lstm_step,
    };
    lvrnn::init_threads(1);
    let (steps, batch, hidden, distinct) = (6, 5, 4, 7);
    for indexed in [true, false] {
        let mut rng = ChaCha8Rng::seed_from_u64(13);
        let u = if indexed { distinct } else { steps * batch };
        let xw = Var::from_tensor(&(randn(&mut rng, &[u, 4 * hidden]) * 0.5).unwrap()).unwrap();
        let wh =
            Var::from_tensor(&(randn(&mut rng, &[hidden, 4 * hidden]) * 0.5).unwrap()).unwrap();
        let index: Vec<u32> = match indexed {
            true => (0..steps * batch)
                .map(|_| rng.gen_range(0..distinct as u32))
                .collect(),
            false => (0..u as u32).collect(),
        };
        let weights = randn(&mut rng, &[steps, batch, 2 * hidden]);
        // The rollout: one lstm_step per step from the zero carry, states and gates kept.
        let xv: Vec<f32> = xw.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        let whv: Vec<f32> = wh.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        let (mut c, mut h) = (vec![0f32; batch * hidden], vec![0f32; batch * hidden]);
        let (mut states, mut gates) = (vec![], vec![]);
        for t in 0..steps {
            let rows: Vec<f32> = index[t * batch..(t + 1) * batch]
                .iter()
                .flat_map(|&r| xv[r as usize * 4 * hidden..(r as usize + 1) * 4 * hidden].to_vec())
                .collect();
            gates.extend(lstm_step(&rows, &whv, &mut c, &mut h, batch, hidden));
            for (hb, cb) in h.chunks(hidden).zip(c.chunks(hidden)) {
                states.extend_from_slice(hb);
                states.extend_from_slice(cb);
            }
        }
        let trace = Arc::new(SequenceTrace::new(states, gates));
        let known_index = indexed.then(|| Arc::new(index.clone()));
        let slow = match indexed {
            true => lstm_sequence_gathered(
                xw.as_tensor(),
                Arc::new(index.clone()),
                wh.as_tensor(),
                steps,
            ),
            false => lstm_sequence_rows(xw.as_tensor(), wh.as_tensor(), steps),
        }
        .unwrap();
        let loss = |out: &Tensor| out.mul(&weights).unwrap().sum_all().unwrap();
        let gs = loss(&slow).backward().unwrap();
        for pass in ["from the trace", "trace taken"] {
            let what = format!("index {indexed}, {pass}");
            let fast = lstm_sequence_known(
                xw.as_tensor(),
                known_index.clone(),
                wh.as_tensor(),
                steps,
                trace.clone(),
            )
            .unwrap();
            assert_close(
                &format!("{what}: states"),
                &values(&fast),
                &values(&slow),
                1.0,
            );
            let gf = loss(&fast).backward().unwrap();
            for (name, t) in [("xw", xw.as_tensor()), ("W_h", wh.as_tensor())] {
                let (a, b) = (gf.get(t).expect(name), gs.get(t).expect(name));
                assert_close(&format!("{what}: ∂L/∂{name}"), &values(a), &values(b), 1.0);
            }
        }
    }
}

#[test]
fn gathered_lstm_sequence_equals_index_select_then_the_sequence() {
    use lvrnn::nn::lstm_seq::{lstm_sequence_gathered, lstm_sequence_rows};
    lvrnn::init_threads(1);
    let (steps, batch, hidden, distinct) = (6, 5, 4, 7);
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let xw = Var::from_tensor(&(randn(&mut rng, &[distinct, 4 * hidden]) * 0.5).unwrap()).unwrap();
    let wh = Var::from_tensor(&(randn(&mut rng, &[hidden, 4 * hidden]) * 0.5).unwrap()).unwrap();
    // Some distinct rows unused, others repeated.
    let index: Vec<u32> = (0..steps * batch)
        .map(|_| rng.gen_range(0..distinct as u32 - 1))
        .collect();
    let weights = randn(&mut rng, &[steps, batch, 2 * hidden]);
    let idx = Tensor::from_vec(index.clone(), steps * batch, &Device::Cpu).unwrap();
    let rows = xw.as_tensor().index_select(&idx, 0).unwrap();
    let slow = lstm_sequence_rows(&rows, wh.as_tensor(), steps).unwrap();
    let fast =
        lstm_sequence_gathered(xw.as_tensor(), Arc::new(index), wh.as_tensor(), steps).unwrap();
    assert_close("states", &values(&fast), &values(&slow), 1.0);
    let loss = |out: &Tensor| out.mul(&weights).unwrap().sum_all().unwrap();
    let (gf, gs) = (
        loss(&fast).backward().unwrap(),
        loss(&slow).backward().unwrap(),
    );
    for (name, t) in [("xw", xw.as_tensor()), ("W_h", wh.as_tensor())] {
        let (a, b) = (gf.get(t).expect(name), gs.get(t).expect(name));
        assert_close(&format!("∂L/∂{name}"), &values(a), &values(b), 1.0);
    }
}

/// `project_hidden` (φ = h W + b on the h half of the LSTM sequence's output, in place) equals
/// `Linear::forward` on `hidden_states`, in φ and in the gradients of the states, W and b.
#[test]
fn projection_of_the_hidden_half_equals_narrow_then_linear() {
    use lvrnn::nn::lstm_seq::{hidden_states, project_hidden};
    use lvrnn::nn::mlp::Linear;
    lvrnn::init_threads(1);
    let (steps, batch, hidden, n) = (4, 6, 5, 3);
    let mut rng = ChaCha8Rng::seed_from_u64(13);
    let mut params = Params::new();
    let proj = Linear::new(&mut params, "proj", hidden, n, &mut rng).unwrap();
    jitter(&params);
    let states = Var::from_tensor(&randn(&mut rng, &[steps, batch, 2 * hidden])).unwrap();
    let weights = randn(&mut rng, &[steps, batch, n]);
    let slow = proj
        .forward(&hidden_states(states.as_tensor()).unwrap())
        .unwrap();
    let fast = project_hidden(states.as_tensor(), &proj.weight, &proj.bias).unwrap();
    assert_close("φ", &values(&fast), &values(&slow), 1.0);
    let loss = |out: &Tensor| out.mul(&weights).unwrap().sum_all().unwrap();
    let (gf, gs) = (
        loss(&fast).backward().unwrap(),
        loss(&slow).backward().unwrap(),
    );
    for (name, t) in [
        ("states", states.as_tensor()),
        ("W", &proj.weight),
        ("b", &proj.bias),
    ] {
        let (a, b) = (gf.get(t).expect(name), gs.get(t).expect(name));
        assert_close(&format!("∂L/∂{name}"), &values(a), &values(b), 1.0);
    }
}
