// Shared by every file of the shim: C++ exceptions never cross into Rust. A call returns
// 0 on success, or 1 with the message kept for mf_last_error().
#pragma once

#include <exception>
#include <string>

// The message of the last failed call on this thread (defined in dual_level.cpp).
extern thread_local std::string mf_error;

template <typename F>
int mf_guarded(F&& f) {
  try {
    f();
    return 0;
  } catch (const std::exception& e) {
    mf_error = e.what();
  } catch (...) {
    mf_error = "unknown C++ exception";
  }
  return 1;
}
