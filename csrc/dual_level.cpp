// Forward-mode AD levels for meanflow's JVP.
//
// tch exposes _make_dual/_unpack_dual but not the level bookkeeping that Python's
// torch.autograd.forward_ad.dual_level does. These two calls are that bookkeeping.
// Every C++ exception stays on this side: the caller gets a non-zero code and reads
// the message with mf_last_error().
#include <torch/csrc/autograd/forward_grad.h>

#include <cstdint>
#include <exception>
#include <string>

namespace {
thread_local std::string last_error;

template <typename F>
int guarded(F&& f) {
  try {
    f();
    return 0;
  } catch (const std::exception& e) {
    last_error = e.what();
  } catch (...) {
    last_error = "unknown C++ exception";
  }
  return 1;
}
}  // namespace

extern "C" {

int mf_dual_level_enter(uint64_t* idx) {
  return guarded([&] { *idx = torch::autograd::ForwardADLevel::get_next_idx(); });
}

int mf_dual_level_exit(uint64_t idx) {
  return guarded([&] { torch::autograd::ForwardADLevel::release_idx(idx); });
}

const char* mf_last_error() { return last_error.c_str(); }

}  // extern "C"
