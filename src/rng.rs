//! Seeding. libtorch's default generator is process-wide, so every seeded draw of the
//! library runs under one lock: two runs in one process (threads, tests) cannot
//! interleave their draws and break each other's determinism.
use std::sync::Mutex;

static RNG_LOCK: Mutex<()> = Mutex::new(());

/// Seeds libtorch's generators (CPU and CUDA) and runs `f` with no other seeded draw
/// of this library in between.
pub fn with_seed<T>(seed: i64, f: impl FnOnce() -> T) -> T {
    let _guard = RNG_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    tch::manual_seed(seed);
    f()
}

/// SplitMix64: decorrelates (seed, stream, index) into one 63-bit libtorch seed.
pub fn mix_seed(seed: u64, stream: u64, index: u64) -> i64 {
    let mut z = seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ index.wrapping_mul(0xD1B5_4A32_D192_ED03);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((z ^ (z >> 31)) >> 1) as i64
}

/// The independent streams of a training run.
pub const STREAM_INIT: u64 = 1;
pub const STREAM_EPOCH: u64 = 2;
pub const STREAM_STEP: u64 = 3;
pub const STREAM_SAMPLE: u64 = 4;
/// Horizontal flips of the training batches (`data.hflip`).
pub const STREAM_FLIP: u64 = 5;
/// Samples of cached VAE posteriors (`posterior: moments` latent sets).
pub const STREAM_POSTERIOR: u64 = 6;
