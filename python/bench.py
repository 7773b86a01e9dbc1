"""Times `LaplaceLSTM.filter` from Python on the sizes of `cargo bench --bench laplace_filter`'s
"standalone" row (B = 256, T = 50, d_in = 32, H = 128, n = 64, window 1, Σ accumulated, float32,
one thread), with the same weights and inputs, so the two figures compare the same work:

    cargo bench --bench laplace_filter        # the Rust call
    python python/bench.py                    # the Python call (lvrnn installed)
"""

import time

import numpy as np

import lvrnn

lvrnn.set_threads(1)
H, n, B, T, d_in = 128, 64, 256, 50, 32


def val(i, s):
    return np.sin(np.arange(i, dtype=np.float32) * np.float32(0.7123) + np.float32(s)) * np.float32(0.5)


weights = {
    "weight_ih_l0": (val(4 * H * d_in, 0.1).astype(np.float64) * 0.4).reshape(4 * H, d_in),
    "weight_hh_l0": (val(4 * H * H, 0.2).astype(np.float64) * 0.2).reshape(4 * H, H),
}
model = lvrnn.LaplaceLSTM(weights, projection=(val(H * n, 0.3).astype(np.float64) * 0.2).reshape(H, n))
inputs = val(B * T * d_in, 0.5).reshape(B, T, d_in)
spec = "laplace:window=1,accumulate=sigma"
model.filter(inputs, spec)  # warm-up
reps = 3
start, cpu = time.perf_counter(), time.process_time()
for _ in range(reps):
    post = model.filter(inputs, spec)
ms = (time.perf_counter() - start) / reps * 1e3
cpu_ms = (time.process_time() - cpu) / reps * 1e3
print(f"Python LaplaceLSTM.filter, B = {B}, T = {T}, d_in = {d_in}, H = {H}, n = {n}, 1 thread")
print(f"{'ms/call, wall (all statistics returned)':<48} {ms:>14.1f}")
print(f"{'ms/call, process CPU time':<48} {cpu_ms:>14.1f}")
print(f"precision {post.precision.shape} {post.precision.dtype}, {post.precision.nbytes / 1e6:.0f} MB")
