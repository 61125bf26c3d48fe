//! Forward-mode Jacobian-vector products on libtorch dual tensors.
//!
//! This is the only file that touches `_make_dual` / `_unpack_dual`. One forward pass
//! with dual inputs gives the output (with its reverse-mode graph, so the loss can
//! backpropagate through it) and the directional derivative J·tangent (detached).
//!
//! libtorch keeps forward-AD levels in one process-wide table and allows a single
//! level at a time, so the guard also holds a process-wide lock: JVPs from several
//! threads (cargo's test harness, data-parallel helpers) queue instead of failing.
use std::sync::{Mutex, MutexGuard};

use tch::Tensor;

use crate::error::{Error, Result};

extern "C" {
    fn mf_dual_level_enter(idx: *mut u64) -> i32;
    fn mf_dual_level_exit(idx: u64) -> i32;
    fn mf_last_error() -> *const std::os::raw::c_char;
}

static LEVEL_LOCK: Mutex<()> = Mutex::new(());

/// The message of the shim's last failed call on this thread.
pub(crate) fn shim_last_error() -> String {
    last_error()
}

fn last_error() -> String {
    // SAFETY: the shim returns a pointer to a thread-local, NUL-terminated string.
    unsafe { std::ffi::CStr::from_ptr(mf_last_error()) }.to_string_lossy().into_owned()
}

/// An entered forward-AD level, released on drop (also during a panic unwind).
pub struct DualLevel {
    idx: u64,
    _lock: MutexGuard<'static, ()>,
}

impl DualLevel {
    pub fn enter() -> Result<Self> {
        // A panic while a level was held poisons the lock, but the level itself was
        // released by Drop during the unwind, so the lock is still safe to take.
        let lock = LEVEL_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let mut idx = 0u64;
        // SAFETY: plain out-parameter; the shim catches every C++ exception.
        if unsafe { mf_dual_level_enter(&mut idx) } != 0 {
            return Err(Error::Jvp(format!("cannot enter a dual level: {}", last_error())));
        }
        Ok(DualLevel { idx, _lock: lock })
    }

    pub fn level(&self) -> i64 {
        self.idx as i64
    }

    /// Makes `primal` a dual tensor carrying `tangent` at this level.
    pub fn make_dual(&self, primal: &Tensor, tangent: &Tensor) -> Result<Tensor> {
        if primal.size() != tangent.size() {
            return Err(Error::Jvp(format!(
                "tangent shape {:?} does not match primal shape {:?}",
                tangent.size(),
                primal.size()
            )));
        }
        if primal.kind() != tangent.kind() || primal.device() != tangent.device() {
            return Err(Error::Jvp(format!(
                "tangent is {:?} on {:?} but primal is {:?} on {:?}",
                tangent.kind(),
                tangent.device(),
                primal.kind(),
                primal.device()
            )));
        }
        Ok(Tensor::f_internal_make_dual(primal, &tangent.detach(), self.level())?)
    }

    /// Splits a dual tensor into (primal, tangent); the tangent is `None` when the
    /// tensor does not depend on any dual input.
    pub fn unpack(&self, dual: &Tensor) -> Result<(Tensor, Option<Tensor>)> {
        let (primal, tangent) = Tensor::f_internal_unpack_dual(dual, self.level())?;
        let tangent = tangent.defined().then(|| tangent.detach());
        Ok((primal, tangent))
    }
}

impl Drop for DualLevel {
    fn drop(&mut self) {
        // SAFETY: idx came from mf_dual_level_enter and is released exactly once.
        if unsafe { mf_dual_level_exit(self.idx) } != 0 {
            // Nothing to return from Drop; a leaked level would make every later
            // enter fail, so say so loudly.
            eprintln!("meanflow: releasing dual level {} failed: {}", self.idx, last_error());
        }
    }
}

/// The result of [`jvp`]: the function's output, which keeps its reverse-mode graph,
/// and the directional derivative along the tangents, detached.
pub struct Jvp {
    pub output: Tensor,
    pub tangent: Tensor,
}

/// Evaluates `f(primals)` once with dual inputs and returns (f(primals), J_f · tangents).
///
/// `tangents[i]` must match `primals[i]` in shape, dtype and device. An output that does
/// not depend on the dual inputs at all is an error, not a silent zero: it means `f`
/// cut the inputs off (a `detach`, a non-differentiable op) and the MeanFlow target
/// would quietly turn into the flow-matching one.
pub fn jvp<F>(f: F, primals: &[&Tensor], tangents: &[&Tensor]) -> Result<Jvp>
where
    F: FnOnce(&[Tensor]) -> Result<Tensor>,
{
    if primals.len() != tangents.len() {
        return Err(Error::Jvp(format!(
            "{} primals but {} tangents",
            primals.len(),
            tangents.len()
        )));
    }
    // The JVP stays in float32 even inside a bf16 autocast region.
    let _fp32 = match primals.first() {
        Some(p) => Some(crate::precision::Autocast::set(p.device(), false)?),
        None => None,
    };
    let level = DualLevel::enter()?;
    let duals = primals
        .iter()
        .zip(tangents)
        .map(|(p, t)| level.make_dual(p, t))
        .collect::<Result<Vec<_>>>()?;
    let out = f(&duals)?;
    let (output, tangent) = level.unpack(&out)?;
    let tangent = tangent.ok_or_else(|| {
        Error::Jvp("the output does not depend on the dual inputs (tangent undefined)".into())
    })?;
    // The unpacked primal is a view of the dual output; a fresh alias keeps nothing
    // tied to the level once it is released.
    let output = output.view_as(&output);
    drop(level);
    Ok(Jvp { output, tangent })
}
