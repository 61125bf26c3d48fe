// Forward-mode AD levels for meanflow's JVP.
//
// tch exposes _make_dual/_unpack_dual but not the level bookkeeping that Python's
// torch.autograd.forward_ad.dual_level does. These two calls are that bookkeeping.
// Every C++ exception stays on this side: the caller gets a non-zero code and reads
// the message with mf_last_error().
#include <torch/csrc/autograd/forward_grad.h>

#include <cstdint>

#include "guarded.h"

thread_local std::string mf_error;

extern "C" {

int mf_dual_level_enter(uint64_t* idx) {
  return mf_guarded([&] { *idx = torch::autograd::ForwardADLevel::get_next_idx(); });
}

int mf_dual_level_exit(uint64_t idx) {
  return mf_guarded([&] { torch::autograd::ForwardADLevel::release_idx(idx); });
}

const char* mf_last_error() { return mf_error.c_str(); }

}  // extern "C"
