// Peak accelerator memory of libtorch's caching allocator (what
// torch.cuda.max_memory_allocated reports), for benchmarks, through the device-generic
// at::accelerator API so no CUDA header is needed.
#include <cstdint>
#include <exception>
#include <string>

extern thread_local std::string mf_error;

#include <ATen/DeviceAccelerator.h>

extern "C" {

int mf_accelerator_peak_allocated(int device, uint64_t* bytes) {
  try {
    using at::CachingDeviceAllocator::StatType;
    auto stats = at::accelerator::getDeviceStats(static_cast<c10::DeviceIndex>(device));
    *bytes = static_cast<uint64_t>(stats.allocated_bytes[static_cast<size_t>(StatType::AGGREGATE)].peak);
    return 0;
  } catch (const std::exception& e) {
    mf_error = e.what();
  } catch (...) {
    mf_error = "unknown C++ exception";
  }
  return 1;
}

int mf_accelerator_reset_peak(int device) {
  try {
    at::accelerator::resetPeakStats(static_cast<c10::DeviceIndex>(device));
    return 0;
  } catch (const std::exception& e) {
    mf_error = e.what();
  } catch (...) {
    mf_error = "unknown C++ exception";
  }
  return 1;
}

}  // extern "C"
