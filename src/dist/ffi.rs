//! The C ABI of csrc/dist.cpp. Every function returns 0, or 1 with the message kept
//! for `mf_last_error` (the shim catches every C++ exception).
use std::os::raw::{c_char, c_int, c_void};

use tch::Tensor;

/// tch's C tensor handle: a pointer to an `at::Tensor`.
pub type CTensor = *mut torch_sys::C_tensor;

extern "C" {
    #[allow(clippy::too_many_arguments)]
    pub fn mf_dist_init(
        host: *const c_char,
        port: c_int,
        rank: c_int,
        world: c_int,
        host_store: c_int,
        timeout_ms: i64,
        prefix: *const c_char,
        gloo_kind: c_int,
        gloo_name: *const c_char,
        with_nccl: c_int,
        cuda_device: c_int,
        out: *mut *mut c_void,
    ) -> c_int;
    pub fn mf_dist_free(d: *mut c_void) -> c_int;
    pub fn mf_dist_all_reduce(d: *mut c_void, ts: *const CTensor, n: c_int, op: c_int) -> c_int;
    pub fn mf_dist_broadcast(d: *mut c_void, ts: *const CTensor, n: c_int, root: c_int) -> c_int;
    pub fn mf_dist_barrier(d: *mut c_void) -> c_int;
    pub fn mf_dist_store_set(d: *mut c_void, key: *const c_char, value: *const c_char) -> c_int;
    pub fn mf_dist_store_wait(d: *mut c_void, keys: *const *const c_char, n: c_int, timeout_ms: i64) -> c_int;
}

/// The raw handles of `ts`, valid while `ts` lives.
pub fn handles(ts: &[Tensor]) -> Vec<CTensor> {
    ts.iter().map(|t| t.as_ptr() as CTensor).collect()
}
