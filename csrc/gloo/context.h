// Declaration-only stand-in (see csrc/gloo/README.md).
#pragma once
#include <chrono>

namespace gloo {
class Context {
 public:
  // Named by an inline member of ProcessGroupGloo that the shim never calls.
  void setTimeout(std::chrono::milliseconds timeout);
};
}  // namespace gloo
