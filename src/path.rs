//! The linear flow path, written once. Time convention: t = 0 is data, t = 1 is noise.
//!
//! z_t = (1 - t) x + t e,   v_t = dz_t/dt = e - x.
use tch::Tensor;

/// Reshapes a per-sample time `[B]` to `[B, 1, ..., 1]` so it broadcasts against `like`.
pub fn expand_time(t: &Tensor, like: &Tensor) -> Tensor {
    let mut shape = vec![t.size()[0]];
    shape.resize(like.dim(), 1);
    t.view(shape.as_slice())
}

/// z_t = (1 - t) x + t e.
pub fn interpolate(x: &Tensor, e: &Tensor, t: &Tensor) -> Tensor {
    let t = expand_time(t, x);
    (1.0 - &t) * x + &t * e
}

/// The conditional velocity v_t = e - x (a'_t = -1, b'_t = 1).
pub fn velocity(x: &Tensor, e: &Tensor) -> Tensor {
    e - x
}
