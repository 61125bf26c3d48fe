// Declaration-only stand-in (see csrc/gloo/README.md).
#pragma once

namespace gloo {
namespace transport {
class Device;
class UnboundBuffer;
}  // namespace transport
}  // namespace gloo
