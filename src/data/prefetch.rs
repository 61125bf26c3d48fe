//! The data order, and background loading of batches that are decoded per step.
//!
//! Determinism: the indices of step s come from [`Order`] on the training thread (the
//! permutation of epoch k seeded from (seed, k), as for in-memory data), and a worker
//! only reads those items into a buffer. Results are handed out in step order whatever
//! thread finished first, so step s's batch never depends on thread timing, and a run
//! resumed at step s draws the same batches as an uninterrupted one. Workers do not call
//! libtorch.
use std::collections::BTreeMap;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};
use crate::rng;

/// Items that can be read one at a time from any thread.
pub trait Source: Send + Sync + 'static {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// [C, H, W] of one item.
    fn item_shape(&self) -> [i64; 3];
    fn num_classes(&self) -> i64;
    /// Writes item `i` (C*H*W floats, channels first) into `out` and returns its label.
    fn read(&self, i: usize, out: &mut [f32]) -> Result<i64>;
}

/// Batches of one epoch drawn without replacement; the last partial batch is dropped.
/// Data parallel: a step's global batch is `shards` consecutive per-rank batches of the
/// epoch's permutation, and shard (rank) k reads the k-th of them; a process reads the
/// shards in `mine` (its rank, or all of them when it stands in for several ranks).
#[derive(Debug)]
pub struct Order {
    pub seed: u64,
    /// Rows per shard.
    pub batch: i64,
    pub n: i64,
    pub shards: i64,
    pub mine: Vec<i64>,
    epoch: Option<(u64, Tensor)>,
}

impl Order {
    pub fn new(seed: u64, batch: i64, n: i64) -> Order {
        Order::sharded(seed, batch, n, 1, vec![0])
    }

    pub fn sharded(seed: u64, batch: i64, n: i64, shards: i64, mine: Vec<i64>) -> Order {
        Order { seed, batch, n, shards, mine, epoch: None }
    }

    /// Indices (int64, CPU) of shard `shard` of the batch of `step`.
    pub fn shard_indices(&mut self, step: u64, shard: i64) -> Tensor {
        let global = self.batch * self.shards;
        let per_epoch = (self.n / global) as u64;
        let (epoch, i) = (step / per_epoch, (step % per_epoch) as i64);
        if self.epoch.as_ref().map(|(e, _)| *e) != Some(epoch) {
            let perm = rng::with_seed(rng::mix_seed(self.seed, rng::STREAM_EPOCH, epoch), || {
                Tensor::randperm(self.n, (Kind::Int64, Device::Cpu))
            });
            self.epoch = Some((epoch, perm));
        }
        self.epoch.as_ref().unwrap().1.narrow(0, i * global + shard * self.batch, self.batch)
    }

    /// Indices of this process's shards of the batch of `step`, shard after shard.
    pub fn indices(&mut self, step: u64) -> Tensor {
        let parts: Vec<Tensor> = self.mine.clone().into_iter().map(|k| self.shard_indices(step, k)).collect();
        Tensor::cat(&parts, 0)
    }
}

/// The seed of shard `shard`'s per-row draws (flips): shard 0 keeps the run's seed.
pub fn shard_flip_seed(seed: u64, shard: i64) -> u64 {
    if shard == 0 {
        seed
    } else {
        rng::mix_seed(seed, rng::STREAM_FLIP, 1 << 40 | shard as u64) as u64
    }
}

/// Which rows of step `step`'s batch of `b` rows are flipped horizontally (`data.hflip`):
/// one fair coin per row from (seed, step, row), independent of every other draw.
pub fn flip_mask(seed: u64, step: u64, b: i64) -> Vec<bool> {
    (0..b as u64).map(|row| rng::mix_seed(seed, rng::STREAM_FLIP, step.wrapping_mul(1 << 20) ^ row) & 1 == 1).collect()
}

/// Flips the rows of `x` `[B, C, H, W]` chosen by `flip_mask` along the width.
pub fn hflip_rows(x: &Tensor, seed: u64, step: u64) -> Tensor {
    let b = x.size()[0];
    let mask = Tensor::from_slice(&flip_mask(seed, step, b)).to_device(x.device()).view([b, 1, 1, 1]);
    x.flip([3]).where_self(&mask, x)
}

struct Job {
    step: u64,
    indices: Vec<i64>,
}

struct Ready {
    images: Vec<f32>,
    labels: Vec<i64>,
}

/// Up to `depth` batches are read ahead by `workers` threads.
pub struct Prefetcher {
    order: Order,
    jobs: Option<SyncSender<Job>>,
    results: Option<Receiver<(u64, Result<Ready>)>>,
    ready: BTreeMap<u64, Result<Ready>>,
    workers: Vec<JoinHandle<()>>,
    shape: [i64; 3],
    /// The next step handed out, and the first step not yet submitted.
    next: u64,
    submitted: u64,
    end: u64,
    depth: u64,
}

impl Prefetcher {
    /// Shards of the process in each batch (each `order.batch` rows, in order).
    pub fn shards_per_batch(&self) -> i64 {
        self.order.mine.len() as i64
    }

    /// Batches for steps `start..end` in order; `workers` >= 1 threads, `depth` >= 1 in flight.
    pub fn new(source: Arc<dyn Source>, order: Order, start: u64, end: u64, workers: usize, depth: usize) -> Prefetcher {
        let depth = depth.max(1);
        let (job_tx, job_rx) = sync_channel::<Job>(depth);
        let (res_tx, res_rx) = sync_channel::<(u64, Result<Ready>)>(depth);
        let job_rx = Arc::new(Mutex::new(job_rx));
        let shape = source.item_shape();
        let item = (shape[0] * shape[1] * shape[2]) as usize;
        let workers = (0..workers.max(1))
            .map(|w| {
                let (source, job_rx, res_tx) = (source.clone(), job_rx.clone(), res_tx.clone());
                std::thread::Builder::new()
                    .name(format!("meanflow-data-{w}"))
                    .spawn(move || loop {
                        let job = match job_rx.lock().unwrap_or_else(|e| e.into_inner()).recv() {
                            Ok(j) => j,
                            Err(_) => return, // the trainer is done
                        };
                        // A panic while reading becomes this step's error: the trainer waits
                        // for every step in order and would otherwise wait forever.
                        let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            read_batch(source.as_ref(), &job.indices, item)
                        }))
                        .unwrap_or_else(|_| Err(Error::Shape(format!("the data loader panicked reading the batch of step {}", job.step))));
                        if res_tx.send((job.step, out)).is_err() {
                            return;
                        }
                    })
                    .expect("spawn a data loader thread")
            })
            .collect();
        let mut p = Prefetcher {
            order,
            jobs: Some(job_tx),
            results: Some(res_rx),
            ready: BTreeMap::new(),
            workers,
            shape,
            next: start,
            submitted: start,
            end,
            depth: depth as u64,
        };
        p.fill();
        p
    }

    fn fill(&mut self) {
        while self.submitted < self.end && self.submitted < self.next + self.depth {
            let indices = Vec::<i64>::try_from(&self.order.indices(self.submitted)).expect("int64 indices");
            let job = Job { step: self.submitted, indices };
            self.jobs.as_ref().expect("open").send(job).expect("data loader threads are alive");
            self.submitted += 1;
        }
    }

    /// The batch of the next step: images `[B, C, H, W]` float and labels `[B]` int64, on the CPU.
    pub fn next_batch(&mut self) -> Result<(u64, Tensor, Tensor)> {
        let step = self.next;
        if step >= self.end {
            return Err(Error::Shape(format!("no batch past step {}", self.end)));
        }
        let ready = loop {
            if let Some(r) = self.ready.remove(&step) {
                break r;
            }
            let (s, r) = self
                .results
                .as_ref()
                .expect("open")
                .recv()
                .map_err(|_| Error::Shape("a data loader thread stopped".into()))?;
            self.ready.insert(s, r);
        };
        self.next += 1;
        self.fill();
        let r = ready?;
        let b = r.labels.len() as i64;
        let [c, h, w] = self.shape;
        Ok((step, Tensor::from_slice(&r.images).view([b, c, h, w]), Tensor::from_slice(&r.labels)))
    }
}

fn read_batch(source: &dyn Source, indices: &[i64], item: usize) -> Result<Ready> {
    let mut images = vec![0f32; indices.len() * item];
    let mut labels = Vec::with_capacity(indices.len());
    for (k, &i) in indices.iter().enumerate() {
        labels.push(source.read(i as usize, &mut images[k * item..(k + 1) * item])?);
    }
    Ok(Ready { images, labels })
}

impl Drop for Prefetcher {
    fn drop(&mut self) {
        // Closing both channels wakes every worker, waiting on a job or on a full queue.
        self.jobs.take();
        self.results.take();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}
