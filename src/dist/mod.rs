//! Multi-process data-parallel training on libtorch's own c10d engine (the one
//! torch.distributed and DDP use): Gloo for CPU tensors, NCCL for CUDA tensors (cargo
//! feature `nccl`). csrc/dist.cpp is the C++ side; this is the safe API over it.
//!
//! Why gradients cannot silently go unsynchronised (the DDP + JVP pitfall): PyTorch DDP
//! averages gradients in autograd hooks of the wrapped module, so a JVP computed on the
//! raw module skips them. Here the average is not a hook: [`GradSync::sync`] runs on the
//! VarStore's gradients after `backward()`, whatever computed the loss, and the training
//! step's update only accepts the [`SyncedGrads`] token that `sync` alone produces.
//! The periodic [`Dist::check_in_sync`] catches any remaining divergence.
pub mod ffi;
pub mod launch;

use std::ffi::CString;
use std::os::raw::c_void;
use std::time::Duration;

use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};
pub use launch::{Launch, Launcher};

/// Test-only knob: the rank named here computes the gradient all-reduce but keeps its own
/// gradients, as if its synchronisation had been bypassed. Exists so a test can prove
/// the sanity check catches unsynchronised ranks; never set it in a real run.
pub const SKIP_GRAD_SYNC_ENV: &str = "MEANFLOW_TEST_SKIP_GRAD_SYNC_RANK";

/// The stream of per-shard draws (rng.rs holds streams 1-4).
const STREAM_SHARD: u64 = 16;

fn err(msg: impl Into<String>) -> Error {
    Error::Native(format!("data-parallel (c10d): {}", msg.into()))
}

fn last_error() -> String {
    crate::jvp::shim_last_error()
}

fn check(what: &str, code: i32) -> Result<()> {
    if code == 0 {
        Ok(())
    } else {
        Err(err(format!("{what}: {}", last_error())))
    }
}

/// Seed of the draws of `step` for data shard `shard` (= rank). Shard 0 keeps the seed
/// of a single-process run, so world size 1 draws exactly what it always did.
pub fn shard_seed(seed: u64, stream: u64, step: u64, shard: u64) -> i64 {
    let base = crate::rng::mix_seed(seed, stream, step);
    if shard == 0 {
        base
    } else {
        crate::rng::mix_seed(base as u64, STREAM_SHARD, shard)
    }
}

/// Reduction of [`Dist::all_reduce`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReduceOp {
    Sum = 0,
    Max = 1,
    Min = 2,
}

/// One process's membership of the process group.
#[derive(Debug)]
pub struct Dist {
    handle: *mut c_void,
    pub rank: i64,
    pub world_size: i64,
    pub local_rank: i64,
    pub launcher: Launcher,
    hosts_store: bool,
    timeout: Duration,
}

// SAFETY: the c10d ProcessGroup and Store are thread-safe objects; the handle is only
// freed by Drop.
unsafe impl Send for Dist {}
unsafe impl Sync for Dist {}

impl Dist {
    /// Connects to the store (hosting it on rank 0 unless torchrun's agent does) and
    /// builds the process group: Gloo for CPU tensors, plus NCCL for CUDA when `cuda`.
    /// Blocks until every rank has joined or `timeout` passes.
    pub fn init(l: &Launch, timeout: Duration, cuda: bool) -> Result<Dist> {
        if cuda && !cfg!(feature = "nccl") {
            return Err(err("training on CUDA across processes needs the NCCL backend: build with `--features nccl`"));
        }
        let cstr = |s: &str| CString::new(s).map_err(|_| err(format!("{s:?} contains a NUL byte")));
        let host = cstr(&l.master_addr)?;
        let prefix = cstr(&format!("meanflow/attempt_{}/", l.attempt))?;
        // Gloo binds to GLOO_SOCKET_IFNAME when given (multi-homed hosts), to loopback for
        // a loopback master, else to the address this host's name resolves to.
        let ifname = std::env::var("GLOO_SOCKET_IFNAME").ok().and_then(|v| v.split(',').next().map(str::to_string));
        let loopback = l.master_addr == "localhost" || l.master_addr.starts_with("127.") || l.master_addr == "::1";
        let (kind, name) = match ifname.filter(|s| !s.is_empty()) {
            Some(i) => (1, i),
            None if loopback => (2, "127.0.0.1".to_string()),
            None => (0, String::new()),
        };
        let name = cstr(&name)?;
        let mut handle: *mut c_void = std::ptr::null_mut();
        // SAFETY: NUL-terminated strings that outlive the call; out-parameter.
        let code = unsafe {
            ffi::mf_dist_init(
                host.as_ptr(),
                l.master_port as i32,
                l.rank as i32,
                l.world_size as i32,
                l.hosts_store as i32,
                timeout.as_millis() as i64,
                prefix.as_ptr(),
                kind,
                name.as_ptr(),
                cuda as i32,
                l.local_rank as i32,
                &mut handle,
            )
        };
        check(&format!("cannot join the process group at {}:{} as rank {}/{}", l.master_addr, l.master_port, l.rank, l.world_size), code)?;
        Ok(Dist {
            handle,
            rank: l.rank,
            world_size: l.world_size,
            local_rank: l.local_rank,
            launcher: l.launcher,
            hosts_store: l.hosts_store,
            timeout,
        })
    }

    pub fn is_lead(&self) -> bool {
        self.rank == 0
    }

    /// In place on every rank: one collective per tensor, all launched before the first
    /// wait. Tensors must be dense and contiguous.
    pub fn all_reduce(&self, ts: &[Tensor], op: ReduceOp) -> Result<()> {
        if ts.is_empty() {
            return Ok(());
        }
        let h = ffi::handles(ts);
        // SAFETY: `h` points at tensors alive for the call.
        check("all-reduce", unsafe { ffi::mf_dist_all_reduce(self.handle, h.as_ptr(), h.len() as i32, op as i32) })
    }

    /// Averages `ts` in place across ranks, in buckets of at most `bucket_bytes`: each
    /// bucket is flattened into one buffer, all buckets are all-reduced at once (the
    /// backend overlaps them), then divided by the world size and copied back.
    pub fn all_reduce_mean(&self, ts: &[Tensor], bucket_bytes: usize) -> Result<()> {
        let buckets = buckets(ts, bucket_bytes);
        let flats: Vec<Tensor> = buckets.iter().map(|b| Tensor::cat(&b.iter().map(|&i| ts[i].reshape([-1])).collect::<Vec<_>>(), 0)).collect();
        self.all_reduce(&flats, ReduceOp::Sum)?;
        tch::no_grad(|| {
            for (b, flat) in buckets.iter().zip(&flats) {
                let flat = flat / (self.world_size as f64);
                let mut at = 0;
                for &i in b {
                    let n = ts[i].numel() as i64;
                    ts[i].shallow_clone().copy_(&flat.narrow(0, at, n).view_as(&ts[i]));
                    at += n;
                }
            }
        });
        Ok(())
    }

    /// Overwrites `ts` on every rank with rank `root`'s values.
    pub fn broadcast(&self, ts: &[Tensor], root: i64) -> Result<()> {
        if ts.is_empty() {
            return Ok(());
        }
        let ts: Vec<Tensor> = ts.iter().map(|t| t.shallow_clone()).collect();
        let h = ffi::handles(&ts);
        // The shim writes into leaf variables: no autograd recording.
        let _guard = tch::no_grad_guard();
        // SAFETY: `h` points at tensors alive for the call.
        check("broadcast", unsafe { ffi::mf_dist_broadcast(self.handle, h.as_ptr(), h.len() as i32, root as i32) })
    }

    pub fn barrier(&self) -> Result<()> {
        // SAFETY: live handle.
        check("barrier", unsafe { ffi::mf_dist_barrier(self.handle) })
    }

    /// Compares a checksum of every tensor of `named` across ranks; on any difference,
    /// every rank returns the same error naming the first differing tensor.
    pub fn check_in_sync(&self, named: &[(String, Tensor)], step: u64) -> Result<()> {
        let sums = checksums(named);
        let (hi, lo) = (sums.copy(), sums.copy());
        self.all_reduce(&[hi.shallow_clone()], ReduceOp::Max)?;
        self.all_reduce(&[lo.shallow_clone()], ReduceOp::Min)?;
        let hi: Vec<i64> = Vec::try_from(&hi)?;
        let lo: Vec<i64> = Vec::try_from(&lo)?;
        if let Some(i) = (0..named.len()).find(|&i| hi[i] != lo[i]) {
            return Err(err(format!(
                "after step {step} the ranks' parameters differ, first at {:?} (checksums {} vs {}); gradients were not synchronised",
                named[i].0, lo[i], hi[i]
            )));
        }
        Ok(())
    }

    /// Ends the job cleanly: every rank marks itself done, and the process hosting the
    /// store waits for all of them before it exits (and takes the store down with it).
    pub fn finish(self) -> Result<()> {
        let key = CString::new(format!("done/{}", self.rank)).expect("no NUL");
        let value = CString::new("1").expect("no NUL");
        // SAFETY: live handle, NUL-terminated strings.
        check("marking this rank done", unsafe { ffi::mf_dist_store_set(self.handle, key.as_ptr(), value.as_ptr()) })?;
        if self.hosts_store {
            let keys: Vec<CString> = (0..self.world_size).map(|r| CString::new(format!("done/{r}")).expect("no NUL")).collect();
            let ptrs: Vec<*const std::os::raw::c_char> = keys.iter().map(|k| k.as_ptr()).collect();
            // SAFETY: `ptrs` point into `keys`, alive for the call.
            check("waiting for the other ranks to finish", unsafe {
                ffi::mf_dist_store_wait(self.handle, ptrs.as_ptr(), ptrs.len() as i32, self.timeout.as_millis() as i64)
            })?;
        }
        Ok(())
    }

    /// Leaves the process group's C++ objects alone (for an error exit: a group whose peer
    /// died may block in its destructor; the process is about to end anyway).
    pub fn abandon(self) {
        std::mem::forget(self);
    }
}

impl Drop for Dist {
    fn drop(&mut self) {
        // SAFETY: the handle came from mf_dist_init and is freed once.
        unsafe { ffi::mf_dist_free(self.handle) };
    }
}

/// Indices of `ts` grouped into buckets: same kind and device, in order, each at most
/// `bucket_bytes` (a tensor larger than that is a bucket of its own).
fn buckets(ts: &[Tensor], bucket_bytes: usize) -> Vec<Vec<usize>> {
    let mut out: Vec<Vec<usize>> = Vec::new();
    let mut bytes = 0usize;
    let mut key: Option<(Kind, Device)> = None;
    for (i, t) in ts.iter().enumerate() {
        let k = (t.kind(), t.device());
        let b = t.numel() * t.kind().elt_size_in_bytes();
        if key != Some(k) || out.is_empty() || bytes + b > bucket_bytes.max(1) && bytes > 0 {
            out.push(Vec::new());
            bytes = 0;
            key = Some(k);
        }
        out.last_mut().unwrap().push(i);
        bytes += b;
    }
    out
}

/// One int64 per tensor, equal on two ranks exactly when their tensors are bitwise equal
/// (up to a 2^-64 collision chance): sum over i of bits[i] * (2i + 1), wrapping.
/// A single differing element always changes it (odd multiplier).
pub fn checksums(named: &[(String, Tensor)]) -> Tensor {
    tch::no_grad(|| {
        let sums: Vec<Tensor> = named
            .iter()
            .map(|(_, t)| {
                let t = t.detach().contiguous();
                let bits = match t.kind() {
                    Kind::Float => t.view_dtype(Kind::Int),
                    Kind::Double => t.view_dtype(Kind::Int64),
                    Kind::Half | Kind::BFloat16 => t.view_dtype(Kind::Int16),
                    _ => t.shallow_clone(),
                }
                .reshape([-1])
                .to_kind(Kind::Int64);
                let w = Tensor::arange(bits.size()[0], (Kind::Int64, bits.device())) * 2 + 1;
                (bits * w).sum(Kind::Int64).to_device(Device::Cpu)
            })
            .collect();
        if sums.is_empty() {
            Tensor::zeros([0], (Kind::Int64, Device::Cpu))
        } else {
            Tensor::stack(&sums, 0)
        }
    })
}

/// Proof that this step's gradients were averaged across ranks (or that there is one
/// rank). Only [`GradSync::sync`] makes one; the trainer's update takes it by value.
#[must_use]
pub struct SyncedGrads {
    _private: (),
}

/// The gradient all-reduce of one training run.
pub struct GradSync {
    bucket_bytes: usize,
    /// Test-only (see [`SKIP_GRAD_SYNC_ENV`]).
    skip: bool,
}

impl GradSync {
    pub fn new(dist: Option<&Dist>, bucket_mb: f64) -> GradSync {
        let skip = dist.is_some_and(|d| {
            std::env::var(SKIP_GRAD_SYNC_ENV).ok().and_then(|v| v.trim().parse::<i64>().ok()) == Some(d.rank)
        });
        if skip {
            eprintln!("meanflow: {SKIP_GRAD_SYNC_ENV} is set: this rank keeps its own gradients (a test of the sanity check)");
        }
        GradSync { bucket_bytes: (bucket_mb * 1024.0 * 1024.0) as usize, skip }
    }

    /// Averages the gradients of `params` across ranks in place (nothing to do for a
    /// single process). Undefined gradients take part as zeros and stay undefined.
    pub fn sync(&self, dist: Option<&Dist>, params: &[(String, Tensor)]) -> Result<SyncedGrads> {
        let Some(d) = dist.filter(|d| d.world_size > 1) else {
            return Ok(SyncedGrads { _private: () });
        };
        let grads: Vec<Tensor> = params
            .iter()
            .map(|(_, p)| {
                let g = p.grad();
                if g.defined() {
                    g
                } else {
                    p.zeros_like()
                }
            })
            .collect();
        if self.skip {
            let copies: Vec<Tensor> = grads.iter().map(|g| g.copy()).collect();
            d.all_reduce_mean(&copies, self.bucket_bytes)?;
        } else {
            d.all_reduce_mean(&grads, self.bucket_bytes)?;
        }
        Ok(SyncedGrads { _private: () })
    }
}

/// Test-only knob: a folder where every rank writes its final weights as
/// `rank<r>.safetensors`, so a test can compare ranks bit for bit (normally only rank 0
/// writes anything). Never needed in a real run.
pub const DUMP_WEIGHTS_ENV: &str = "MEANFLOW_TEST_DUMP_RANK_WEIGHTS";

/// Writes this rank's weights when [`DUMP_WEIGHTS_ENV`] is set (see there).
pub fn dump_weights_for_test(vs: &tch::nn::VarStore, rank: i64) -> Result<()> {
    if let Some(dir) = std::env::var_os(DUMP_WEIGHTS_ENV) {
        let dir = std::path::PathBuf::from(dir);
        std::fs::create_dir_all(&dir)?;
        vs.save(dir.join(format!("rank{rank}.safetensors")))?;
    }
    Ok(())
}

/// What [`self_test`] measured.
#[derive(Debug, Clone)]
pub struct SelfTest {
    pub rank: i64,
    pub world_size: i64,
    pub device: Device,
    pub bytes: usize,
    pub buckets: usize,
    /// Wall time of the bucketed all-reduce mean (after one warm-up), seconds.
    pub all_reduce_s: f64,
}

/// Checks the collectives on `device` tensors: a bucketed all-reduce mean of `mb` MiB
/// spread over several tensors (rank r contributes r + 1 + i, so the mean is known), a
/// broadcast from the last rank and a barrier. Errors name what came out wrong.
pub fn self_test(d: &Dist, device: Device, mb: f64, bucket_mb: f64) -> Result<SelfTest> {
    let total = ((mb * 1024.0 * 1024.0) as i64 / 4).max(8);
    // Uneven sizes: a tensor larger than a bucket is its own bucket, small ones share.
    let sizes = [total / 2, total / 4, total / 8, total - total / 2 - total / 4 - total / 8];
    let fill = |rank: i64| -> Vec<Tensor> {
        sizes.iter().enumerate().map(|(i, &n)| Tensor::full([n], (rank + 1 + i as i64) as f64, (Kind::Float, device))).collect()
    };
    let bucket_bytes = (bucket_mb * 1024.0 * 1024.0) as usize;
    let warm = fill(d.rank);
    d.all_reduce_mean(&warm, bucket_bytes)?;
    let ts = fill(d.rank);
    d.barrier()?;
    let t0 = std::time::Instant::now();
    d.all_reduce_mean(&ts, bucket_bytes)?;
    let _ = ts.iter().map(|t| t.sum(Kind::Float).double_value(&[])).sum::<f64>(); // device sync
    let all_reduce_s = t0.elapsed().as_secs_f64();
    let mean_rank = (d.world_size - 1) as f64 / 2.0;
    for (i, t) in ts.iter().chain(&warm).enumerate() {
        let want = mean_rank + 1.0 + (i % sizes.len()) as f64;
        let (lo, hi) = (t.min().double_value(&[]), t.max().double_value(&[]));
        if lo != want || hi != want {
            return Err(err(format!("all-reduce mean of tensor {i} gave values in [{lo}, {hi}], expected {want}")));
        }
    }
    let root = d.world_size - 1;
    let b = Tensor::full([1000], d.rank as f64, (Kind::Float, device));
    d.broadcast(&[b.shallow_clone()], root)?;
    let (lo, hi) = (b.min().double_value(&[]), b.max().double_value(&[]));
    if lo != root as f64 || hi != root as f64 {
        return Err(err(format!("broadcast from rank {root} gave values in [{lo}, {hi}]")));
    }
    d.barrier()?;
    Ok(SelfTest {
        rank: d.rank,
        world_size: d.world_size,
        device,
        bytes: total as usize * 4,
        buckets: buckets(&ts, bucket_bytes).len(),
        all_reduce_s,
    })
}
