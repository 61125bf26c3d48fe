// Data-parallel collectives on libtorch's own c10d engine (what torch.distributed and
// DDP use): a TCPStore for rendezvous, a PrefixStore per run, and one ProcessGroup with a
// Gloo backend for CPU tensors (and, built with MF_WITH_NCCL, an NCCL backend for CUDA
// tensors). Every call catches every C++ exception: the caller gets a non-zero code and
// reads the message with mf_last_error() (see guarded.h).
//
// Compiled with -DUSE_C10D_GLOO (without it ProcessGroupGloo.hpp is empty) against the
// declaration-only gloo headers in csrc/gloo/.
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#ifdef MF_WITH_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "guarded.h"

namespace {

struct Dist {
  c10::intrusive_ptr<c10d::Store> store;  // the PrefixStore over the TCPStore
  c10::intrusive_ptr<c10d::ProcessGroup> pg;
  std::chrono::milliseconds timeout;
};

std::vector<at::Tensor> tensors_of(at::Tensor** ts, int n) {
  std::vector<at::Tensor> out;
  out.reserve(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) out.push_back(*ts[i]);
  return out;
}

c10d::ReduceOp reduce_op(int op) {
  switch (op) {
    case 0: return c10d::ReduceOp::SUM;
    case 1: return c10d::ReduceOp::MAX;
    case 2: return c10d::ReduceOp::MIN;
  }
  throw std::invalid_argument("unknown reduce op " + std::to_string(op));
}

}  // namespace

extern "C" {

// gloo_kind: 0 = default device (this host's name, else loopback), 1 = the interface
// named by gloo_name (GLOO_SOCKET_IFNAME), 2 = the address or host name gloo_name.
int mf_dist_init(const char* host, int port, int rank, int world, int host_store, int64_t timeout_ms,
                 const char* prefix, int gloo_kind, const char* gloo_name, int with_nccl, int cuda_device,
                 void** out) {
  return mf_guarded([&] {
    auto timeout = std::chrono::milliseconds(timeout_ms);
    c10d::TCPStoreOptions so;
    so.port = static_cast<std::uint16_t>(port);
    so.isServer = host_store != 0;
    so.numWorkers = std::nullopt;
    so.waitWorkers = false;
    so.timeout = timeout;
    auto tcp = c10::make_intrusive<c10d::TCPStore>(std::string(host), so);
    auto store = c10::make_intrusive<c10d::PrefixStore>(std::string(prefix), tcp);

    auto opts = c10d::ProcessGroupGloo::Options::create(timeout);
    switch (gloo_kind) {
      case 1: opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(gloo_name)); break;
      case 2: opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(gloo_name)); break;
      default: opts->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice()); break;
    }
    auto pg = c10::make_intrusive<c10d::ProcessGroup>(store, rank, world);
    auto gloo = c10::make_intrusive<c10d::ProcessGroupGloo>(
        c10::make_intrusive<c10d::PrefixStore>("gloo/", store), rank, world, opts);
    pg->setBackend(c10::DeviceType::CPU, c10d::ProcessGroup::GLOO, gloo);
    pg->setDefaultBackend(c10d::ProcessGroup::GLOO);
    if (with_nccl) {
#ifdef MF_WITH_NCCL
      auto nopts = c10d::ProcessGroupNCCL::Options::create();
      nopts->timeout = timeout;
      auto nccl = c10::make_intrusive<c10d::ProcessGroupNCCL>(
          c10::make_intrusive<c10d::PrefixStore>("nccl/", store), rank, world, nopts);
      pg->setBackend(c10::DeviceType::CUDA, c10d::ProcessGroup::NCCL, nccl);
      (void)cuda_device;
#else
      throw std::runtime_error("this build has no NCCL backend (build with --features nccl)");
#endif
    }
    *out = new Dist{store, pg, timeout};
  });
}

int mf_dist_free(void* d) {
  return mf_guarded([&] { delete static_cast<Dist*>(d); });
}

// One collective per tensor (each a flat bucket), all launched before the first wait, so
// the backend's worker threads overlap them; then every one is waited for (in order).
int mf_dist_all_reduce(void* d, at::Tensor** ts, int n, int op) {
  return mf_guarded([&] {
    auto* dist = static_cast<Dist*>(d);
    c10d::AllreduceOptions o;
    o.reduceOp = reduce_op(op);
    o.timeout = dist->timeout;
    std::vector<c10::intrusive_ptr<c10d::Work>> works;
    works.reserve(static_cast<size_t>(n));
    for (int i = 0; i < n; ++i) {
      std::vector<at::Tensor> one{*ts[i]};
      works.push_back(dist->pg->allreduce(one, o));
    }
    for (auto& w : works) w->wait();
  });
}

int mf_dist_broadcast(void* d, at::Tensor** ts, int n, int root) {
  return mf_guarded([&] {
    auto* dist = static_cast<Dist*>(d);
    c10d::BroadcastOptions o;
    o.rootRank = root;
    o.timeout = dist->timeout;
    std::vector<c10::intrusive_ptr<c10d::Work>> works;
    for (auto& t : tensors_of(ts, n)) {
      std::vector<at::Tensor> one{t};
      works.push_back(dist->pg->broadcast(one, o));
    }
    for (auto& w : works) w->wait();
  });
}

int mf_dist_barrier(void* d) {
  return mf_guarded([&] {
    auto* dist = static_cast<Dist*>(d);
    c10d::BarrierOptions o;
    o.timeout = dist->timeout;
    dist->pg->barrier(o)->wait();
  });
}

int mf_dist_store_set(void* d, const char* key, const char* value) {
  return mf_guarded([&] {
    std::string v(value);
    static_cast<Dist*>(d)->store->set(key, std::vector<uint8_t>(v.begin(), v.end()));
  });
}

int mf_dist_store_wait(void* d, const char** keys, int n, int64_t timeout_ms) {
  return mf_guarded([&] {
    std::vector<std::string> ks(keys, keys + n);
    static_cast<Dist*>(d)->store->wait(ks, std::chrono::milliseconds(timeout_ms));
  });
}

}  // extern "C"
