// Peak accelerator memory of libtorch's caching allocator (what
// torch.cuda.max_memory_allocated reports), for benchmarks, through the device-generic
// at::accelerator API so no CUDA header is needed.
#include <ATen/DeviceAccelerator.h>

#include <cstdint>

#include "guarded.h"

extern "C" {

int mf_accelerator_peak_allocated(int device, uint64_t* bytes) {
  return mf_guarded([&] {
    using at::CachingDeviceAllocator::StatType;
    auto stats = at::accelerator::getDeviceStats(static_cast<c10::DeviceIndex>(device));
    *bytes = static_cast<uint64_t>(stats.allocated_bytes[static_cast<size_t>(StatType::AGGREGATE)].peak);
  });
}

int mf_accelerator_reset_peak(int device) {
  return mf_guarded([&] { at::accelerator::resetPeakStats(static_cast<c10::DeviceIndex>(device)); });
}

}  // extern "C"
