//! Mixed precision: `train.precision: bf16` runs the network under libtorch autocast
//! (bfloat16 on CUDA and CPU), except the JVP, which `jvp::jvp` always runs in float32.
use serde::{Deserialize, Serialize};
use tch::Device;

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    #[default]
    Fp32,
    /// Autocast to bfloat16 for everything but the dual (JVP) pass.
    Bf16,
}

extern "C" {
    fn mf_autocast_get(cuda: i32, enabled: *mut i32, dtype: *mut i32) -> i32;
    fn mf_autocast_enter(cuda: i32, enabled: i32, dtype: i32) -> i32;
    fn mf_autocast_exit(cuda: i32, prev_enabled: i32, prev_dtype: i32) -> i32;
    fn mf_accelerator_peak_allocated(device: i32, bytes: *mut u64) -> i32;
    fn mf_accelerator_reset_peak(device: i32) -> i32;
}

fn shim_error(what: &str) -> Error {
    Error::Native(format!("{what}: {}", crate::jvp::shim_last_error()))
}

/// Autocast switched on or off for one device type until dropped; the previous state
/// is restored then, so guards nest (the JVP's "off" inside training's "on").
pub struct Autocast {
    cuda: i32,
    prev: (i32, i32),
}

impl Autocast {
    pub fn set(device: Device, enabled: bool) -> Result<Self> {
        let cuda = i32::from(device.is_cuda());
        let (mut e, mut d) = (0, 0);
        // SAFETY: out-parameters only; the shim catches every C++ exception.
        if unsafe { mf_autocast_get(cuda, &mut e, &mut d) } != 0 {
            return Err(shim_error("reading the autocast state"));
        }
        if unsafe { mf_autocast_enter(cuda, i32::from(enabled), 0) } != 0 {
            return Err(shim_error("setting autocast"));
        }
        Ok(Autocast { cuda, prev: (e, d) })
    }

    /// Autocast on for `precision` (a no-op guard for fp32).
    pub fn for_precision(device: Device, precision: Precision) -> Result<Option<Self>> {
        match precision {
            Precision::Fp32 => Ok(None),
            Precision::Bf16 => Self::set(device, true).map(Some),
        }
    }
}

impl Drop for Autocast {
    fn drop(&mut self) {
        // SAFETY: restores what `set` read.
        if unsafe { mf_autocast_exit(self.cuda, self.prev.0, self.prev.1) } != 0 {
            eprintln!("meanflow: restoring autocast failed: {}", crate::jvp::shim_last_error());
        }
    }
}

/// Peak bytes allocated on a CUDA device since the last reset (libtorch's caching
/// allocator, as torch.cuda.max_memory_allocated); `None` on the CPU.
pub fn peak_allocated(device: Device) -> Option<u64> {
    let Device::Cuda(i) = device else { return None };
    let mut bytes = 0u64;
    // SAFETY: out-parameter; exceptions are caught in the shim.
    (unsafe { mf_accelerator_peak_allocated(i as i32, &mut bytes) } == 0).then_some(bytes)
}

pub fn reset_peak(device: Device) {
    if let Device::Cuda(i) = device {
        // SAFETY: no pointers; exceptions are caught in the shim.
        let _ = unsafe { mf_accelerator_reset_peak(i as i32) };
    }
}
