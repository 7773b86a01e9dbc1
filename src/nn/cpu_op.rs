//! One adapter between candle's `CustomOp1/2/3` and this crate's CPU kernels.
//!
//! A custom op (the fused layers of `nn`: affine, layer norm, the LSTM sequence, the heads; the
//! posterior's Cayley head and spectral KL; the factorisations and solves of `linalg`)
//! implements [`CpuOp`]: its forward reads its inputs ([`Input::values`]: f32 values in logical
//! (row-major) order; [`Input::storage`]: the raw storage, for the f32/f64 `linalg` kernels),
//! its backward maps the inputs, the output and the output's gradient to one optional
//! gradient per input. [`Fused`] turns it into the candle op that `Tensor::apply_op{1,2,3}`
//! takes, so the plumbing is written once, here.

use super::kernels::logical;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Shape, Tensor};
use std::borrow::Cow;

/// One input of an op's forward: its CPU storage and layout.
pub(crate) struct Input<'a> {
    storage: &'a CpuStorage,
    layout: &'a Layout,
}

impl<'a> Input<'a> {
    /// The input's f32 values in logical (row-major) order, borrowed when the storage is
    /// contiguous (read only where the op needs them).
    pub fn values(&self) -> candle_core::Result<Cow<'a, [f32]>> {
        Ok(logical(self.storage.as_slice::<f32>()?, self.layout))
    }

    /// The raw storage (any dtype; strided as [`Input::layout`] says).
    pub fn storage(&self) -> &'a CpuStorage {
        self.storage
    }

    /// The input's layout.
    pub fn layout(&self) -> &'a Layout {
        self.layout
    }

    /// The input's dimensions.
    pub fn dims(&self) -> &[usize] {
        self.layout.dims()
    }

    /// The input's shape.
    pub fn shape(&self) -> &Shape {
        self.layout.shape()
    }
}

/// What a forward pass returns: the output's storage (contiguous, row-major) and shape.
pub(crate) type Output = candle_core::Result<(CpuStorage, Shape)>;

/// What a backward pass returns: ∂L/∂xᵢ for each of the `N` inputs (`None` where none flows).
pub(crate) type Gradients<const N: usize> = candle_core::Result<[Option<Tensor>; N]>;

/// A fused f32 CPU op on `N` tensors.
pub(crate) trait CpuOp<const N: usize>: Send + Sync + 'static {
    /// The op's name in candle's errors.
    fn name(&self) -> &'static str;

    /// y = f(x₁, …, x_N).
    fn forward(&self, inputs: [Input<'_>; N]) -> Output;

    /// (∂L/∂x₁, …, ∂L/∂x_N) given the inputs, the output y and ∂L/∂y; the default says the op
    /// has no backward pass (candle's own default).
    fn backward(&self, _inputs: [&Tensor; N], _y: &Tensor, _grad: &Tensor) -> Gradients<N> {
        Err(candle_core::Error::BackwardNotSupported {
            op: <Self as CpuOp<N>>::name(self),
        })
    }
}

/// A [`CpuOp`] as the candle custom op of the same arity.
pub(crate) struct Fused<T>(pub T);

/// The inputs of a forward call.
fn inputs<'a, const N: usize>(storages: [(&'a CpuStorage, &'a Layout); N]) -> [Input<'a>; N] {
    storages.map(|(storage, layout)| Input { storage, layout })
}

/// The answer of every custom op on a GPU tensor.
#[cfg(feature = "cuda")]
fn no_gpu_kernel<T>(name: &str) -> candle_core::Result<T> {
    candle_core::bail!("{name} has no GPU kernel yet: run it on the CPU")
}

impl<T: CpuOp<1>> CustomOp1 for Fused<T> {
    fn name(&self) -> &'static str {
        self.0.name()
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        self.0.forward(inputs([(s, l)]))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        no_gpu_kernel(self.0.name())
    }

    fn bwd(&self, x: &Tensor, y: &Tensor, g: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let [dx] = self.0.backward([x], y, g)?;
        Ok(dx)
    }
}

impl<T: CpuOp<2>> CustomOp2 for Fused<T> {
    fn name(&self) -> &'static str {
        self.0.name()
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.0.forward(inputs([(s1, l1), (s2, l2)]))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &Layout,
        _: &candle_core::CudaStorage,
        _: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        no_gpu_kernel(self.0.name())
    }

    fn bwd(
        &self,
        x1: &Tensor,
        x2: &Tensor,
        y: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let [d1, d2] = self.0.backward([x1, x2], y, g)?;
        Ok((d1, d2))
    }
}

impl<T: CpuOp<3>> CustomOp3 for Fused<T> {
    fn name(&self) -> &'static str {
        self.0.name()
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.0.forward(inputs([(s1, l1), (s2, l2), (s3, l3)]))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &Layout,
        _: &candle_core::CudaStorage,
        _: &Layout,
        _: &candle_core::CudaStorage,
        _: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        no_gpu_kernel(self.0.name())
    }

    fn bwd(
        &self,
        x1: &Tensor,
        x2: &Tensor,
        x3: &Tensor,
        y: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let [d1, d2, d3] = self.0.backward([x1, x2, x3], y, g)?;
        Ok((d1, d2, d3))
    }
}

/// The f32 values of a CPU tensor's storage in logical order, borrowed when contiguous (the
/// fused ops' backward passes read their inputs and gradients without copying them).
pub(crate) fn f32_values<'a>(
    storage: &'a candle_core::Storage,
    layout: &Layout,
) -> candle_core::Result<Cow<'a, [f32]>> {
    match storage {
        candle_core::Storage::Cpu(cpu) => Ok(logical(cpu.as_slice::<f32>()?, layout)),
        _ => candle_core::bail!("the fused layers run on the CPU only"),
    }
}

/// `f` applied to the f32 values (logical order) of CPU tensors, read in place while it runs.
pub(crate) fn with_values<const N: usize, R>(
    tensors: [&Tensor; N],
    f: impl FnOnce([&[f32]; N]) -> candle_core::Result<R>,
) -> candle_core::Result<R> {
    let guards = tensors.map(|t| t.storage_and_layout());
    let mut values = Vec::with_capacity(N);
    for (storage, layout) in &guards {
        values.push(f32_values(storage, layout)?);
    }
    f(std::array::from_fn(|i| &*values[i]))
}
