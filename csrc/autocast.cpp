// Autocast (mixed precision) on one device type, for meanflow's `train.precision`.
//
// tch's own autocast helper knows only CUDA and float16; meanflow needs bfloat16 on CUDA
// and CPU, and needs to switch autocast *off* around the JVP, which stays in float32.
#include <ATen/autocast_mode.h>

#include "guarded.h"

namespace {
at::DeviceType device_type(int cuda) { return cuda ? at::kCUDA : at::kCPU; }
}  // namespace

extern "C" {

// Reads the current state so it can be restored: enabled flag and dtype (0 bf16, 1 f16, 2 other).
int mf_autocast_get(int cuda, int* enabled, int* dtype) {
  return mf_guarded([&] {
    auto d = device_type(cuda);
    *enabled = at::autocast::is_autocast_enabled(d) ? 1 : 0;
    auto t = at::autocast::get_autocast_dtype(d);
    *dtype = t == at::kBFloat16 ? 0 : (t == at::kHalf ? 1 : 2);
  });
}

// Sets enabled/dtype and enters one nesting level (autocast caches casts per level).
int mf_autocast_enter(int cuda, int enabled, int dtype) {
  return mf_guarded([&] {
    auto d = device_type(cuda);
    at::autocast::set_autocast_dtype(d, dtype == 1 ? at::kHalf : at::kBFloat16);
    at::autocast::set_autocast_enabled(d, enabled != 0);
    at::autocast::increment_nesting();
  });
}

// Leaves a nesting level and restores the previous state.
int mf_autocast_exit(int cuda, int prev_enabled, int prev_dtype) {
  return mf_guarded([&] {
    auto d = device_type(cuda);
    if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
    at::autocast::set_autocast_enabled(d, prev_enabled != 0);
    if (prev_dtype != 2) at::autocast::set_autocast_dtype(d, prev_dtype == 1 ? at::kHalf : at::kBFloat16);
  });
}

}  // extern "C"
