//! Multi-process data-parallel training (issue 6) on Gloo over loopback: the release
//! binary launched as 2 ranks by torchrun and by hand, against a single process that
//! computes the same global batch with the same draws (`dist.emulate_world_size: 2`).
//! Each rank runs 1 libtorch thread (two processes spinning on every core of a small
//! machine run many times slower).
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use meanflow::dist::launch::{from_vars, Launcher};
use tch::Tensor;

const BIN: &str = env!("CARGO_BIN_EXE_meanflow");
const FMNIST: &str = "/usr/share/datasets/fashion-mnist";

/// Largest |difference| allowed between a 2-rank run and the single process that sees the
/// same global batch: the two average the same per-sample gradients in a different order
/// (mean of two 8-sample means vs one 16-sample mean), so they differ by float
/// reassociation, which 20 Adam steps carry into the weights.
const TOL: f64 = 1e-4;

/// The demo model (0.63M-parameter U-Net, CFG, ratio 0.25) at batch 8 per rank, 20 steps.
fn args(run_dir: &Path, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = vec!["train".into(), "--config".into(), concat!(env!("CARGO_MANIFEST_DIR"), "/configs/fashion_mnist.yaml").into()];
    let sets = [
        format!("train.run_dir={}", run_dir.display()),
        format!("data.root={FMNIST}"),
        "train.steps=20".into(),
        "train.batch_size=8".into(),
        "train.threads=1".into(),
        "train.checkpoint_every=10".into(),
        "train.log_every=5".into(),
        "sample.nfe=[]".into(),
        "dist.timeout_s=30".into(),
        "dist.sanity_every=5".into(),
    ];
    for s in sets.iter().map(String::as_str).chain(extra.iter().copied()) {
        // A flag ("--resume") as is; anything else is a config override.
        if !s.starts_with("--") {
            a.push("--set".into());
        }
        a.push(s.into());
    }
    a
}

/// A command with no launcher variables inherited and one OpenMP thread.
fn command(program: &str) -> Command {
    let mut c = Command::new(program);
    for k in ["RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "SLURM_PROCID", "SLURM_NTASKS",
        "TORCHELASTIC_RUN_ID", "TORCHELASTIC_USE_AGENT_STORE", "GLOO_SOCKET_IFNAME", meanflow::dist::SKIP_GRAD_SYNC_ENV]
    {
        c.env_remove(k);
    }
    c.env("OMP_NUM_THREADS", "1");
    c
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// Ranks 0..world by hand (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT); `env` adds
/// variables to every rank.
fn spawn_by_hand(world: usize, run_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Vec<Child> {
    let port = free_port().to_string();
    (0..world)
        .map(|r| {
            let mut c = command(BIN);
            c.args(args(run_dir, extra))
                .env("RANK", r.to_string())
                .env("WORLD_SIZE", world.to_string())
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", &port)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            for (k, v) in env {
                c.env(k, v);
            }
            c.spawn().unwrap()
        })
        .collect()
}

fn wait_all(children: Vec<Child>) -> Vec<Output> {
    children.into_iter().map(|c| c.wait_with_output().unwrap()).collect()
}

fn torchrun() -> PathBuf {
    let venv = std::env::var("VIRTUAL_ENV").map(PathBuf::from).unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv"));
    venv.join("bin/torchrun")
}

fn load(path: &Path) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).into_iter().collect()
}

/// Largest |a - b| over all tensors (same names required).
fn max_diff(a: &HashMap<String, Tensor>, b: &HashMap<String, Tensor>) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().map(|(k, t)| (t - &b[k]).abs().max().double_value(&[])).fold(0.0, f64::max)
}

fn bit_equal(a: &HashMap<String, Tensor>, b: &HashMap<String, Tensor>) -> bool {
    a.len() == b.len() && a.iter().all(|(k, t)| b.get(k).is_some_and(|u| t.equal(u)))
}

/// Single process vs 2 ranks by hand (and, with `with_torchrun`, 2 ranks by torchrun):
/// ranks bit-identical, the launches bit-identical to each other, and within TOL of the
/// single process; returns the observed difference. With `with_torchrun` also: 10 steps by
/// hand, then every rank resumes from rank 0's checkpoint for 10 more, bit for bit the
/// 20 straight steps (weights, EMAs and optimizer moments).
fn two_ranks_match_one_process(extra: &[&str], with_torchrun: bool) -> f64 {
    let tmp = tempfile::tempdir().unwrap();
    let single = tmp.path().join("single");
    let out = command(BIN).args(args(&single, &[extra, &["dist.emulate_world_size=2"]].concat())).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("batch 16 (8 per rank x 2 ranks, emulated)"), "{}", text(&out));
    let reference = load(&single.join("checkpoints/step_00000020/model.safetensors"));

    let mut launches = vec![("hand", tmp.path().join("hand"))];
    if with_torchrun {
        launches.push(("torchrun", tmp.path().join("torchrun")));
    }
    let mut finals = Vec::new();
    let mut worst: f64 = 0.0;
    for (how, run) in &launches {
        let dump = run.join("dump");
        let outs = if *how == "hand" {
            wait_all(spawn_by_hand(2, run, extra, &[(meanflow::dist::DUMP_WEIGHTS_ENV, dump.to_str().unwrap())]))
        } else {
            let mut c = command(torchrun().to_str().unwrap());
            c.args(["--standalone", "--nproc_per_node=2", "--no-python", BIN])
                .args(args(run, extra))
                .env(meanflow::dist::DUMP_WEIGHTS_ENV, &dump);
            vec![c.output().unwrap()]
        };
        for o in &outs {
            assert!(o.status.success(), "{how}: {}", text(o));
        }
        let all = outs.iter().map(text).collect::<String>();
        assert!(all.contains("batch 16 (8 per rank x 2 ranks)"), "{how}: {all}");
        let r0 = load(&dump.join("rank0.safetensors"));
        let r1 = load(&dump.join("rank1.safetensors"));
        assert!(bit_equal(&r0, &r1), "{how}: ranks differ by up to {}", max_diff(&r0, &r1));
        // Only rank 0 wrote the checkpoint; it holds rank 0's weights.
        let ckpt = load(&run.join("checkpoints/step_00000020/model.safetensors"));
        assert!(bit_equal(&ckpt, &r0), "{how}");
        let d = max_diff(&ckpt, &reference);
        eprintln!("{how} launch, 2 ranks vs one process ({extra:?}): max |diff| {d:.3e}");
        assert!(d <= TOL, "{how}: 2 ranks differ from the single process by {d:.3e} > {TOL:e}");
        worst = worst.max(d);
        finals.push(ckpt);
    }
    for f in &finals[1..] {
        assert!(bit_equal(&finals[0], f), "torchrun and hand launches differ");
    }
    if with_torchrun {
        let split = tmp.path().join("split");
        let ok = |outs: Vec<Output>| outs.iter().for_each(|o| assert!(o.status.success(), "{}", text(o)));
        ok(wait_all(spawn_by_hand(2, &split, &[extra, &["train.steps=10"]].concat(), &[])));
        ok(wait_all(spawn_by_hand(2, &split, &[extra, &["--resume"]].concat(), &[])));
        for f in ["model", "ema_0.99", "ema_0.995", "optimizer"] {
            let file = format!("checkpoints/step_00000020/{f}.safetensors");
            let (a, b) = (load(&launches[0].1.join(&file)), load(&split.join(&file)));
            assert!(bit_equal(&a, &b), "{f}: resumed 2-rank run differs by {}", max_diff(&a, &b));
        }
    }
    worst
}

#[test]
fn flow_matching_two_ranks_by_hand_match_one_process() {
    // ratio 0, no guidance: no JVP, plain flow matching.
    two_ranks_match_one_process(&["meanflow.ratio=0", "guidance=null"], false);
}

#[test]
fn meanflow_with_cfg_two_ranks_by_torchrun_and_by_hand_match_one_process_and_resume() {
    // The demo objective: ratio 0.25 (JVP rows) and CFG baked into training.
    two_ranks_match_one_process(&[], true);
}

#[test]
fn skipped_gradient_sync_is_caught_by_the_sanity_check() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("broken");
    let outs = wait_all(spawn_by_hand(2, &run, &["dist.sanity_every=3"], &[(meanflow::dist::SKIP_GRAD_SYNC_ENV, "1")]));
    for (r, o) in outs.iter().enumerate() {
        let t = text(o);
        assert!(!o.status.success(), "rank {r} should fail: {t}");
        assert!(t.contains("after step 3 the ranks' parameters differ, first at"), "rank {r}: {t}");
    }
}

/// Starts 2 ranks on a long run, waits for rank 0's first checkpoint, applies `hurt` to
/// rank `victim`, and checks the other exits non-zero within the timeout and the last
/// checkpoint is intact.
fn survivor_exits(hurt: &str, victim: usize, timeout_s: u64) {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let timeout = format!("dist.timeout_s={timeout_s}");
    let mut ranks = spawn_by_hand(2, &run, &["train.steps=100000", "train.checkpoint_every=2", &timeout], &[]);
    let latest = run.join("checkpoints/latest");
    let t0 = Instant::now();
    while !latest.exists() {
        assert!(t0.elapsed() < Duration::from_secs(120), "no checkpoint after 120 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    let pid = ranks[victim].id().to_string();
    assert!(Command::new("kill").args([hurt, &pid]).status().unwrap().success());
    let hurt_at = Instant::now();
    let mut victim_child = ranks.remove(victim);
    let mut survivor = ranks.remove(0);
    let status = loop {
        if let Some(s) = survivor.try_wait().unwrap() {
            break s;
        }
        if hurt_at.elapsed() > Duration::from_secs(timeout_s + 30) {
            survivor.kill().ok();
            let _ = Command::new("kill").args(["-KILL", &pid]).status();
            panic!("the survivor still runs {} s after rank {victim} got {hurt}", timeout_s + 30);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let took = hurt_at.elapsed();
    let _ = Command::new("kill").args(["-KILL", &pid]).status();
    let _ = victim_child.wait();
    let out = survivor.wait_with_output().unwrap();
    let last = text(&out).lines().last().unwrap_or_default().to_string();
    eprintln!("rank {victim} {hurt}: the other exited with {status} after {:.1} s: {last}", took.as_secs_f64());
    assert!(!status.success(), "{}", text(&out));
    assert!(took < Duration::from_secs(timeout_s + 20), "took {took:?}");
    // The last checkpoint is whole: it loads.
    let ckpt = meanflow::checkpoint::latest(&run).unwrap().unwrap();
    meanflow::checkpoint::read_state(&ckpt).unwrap();
    load(&ckpt.join("model.safetensors"));
    load(&ckpt.join("optimizer.safetensors"));
}

#[test]
fn a_killed_rank_makes_the_other_exit_with_an_error() {
    survivor_exits("-KILL", 1, 20);
}

#[test]
fn a_killed_store_host_makes_the_other_exit_with_an_error() {
    // Rank 0 hosts the TCPStore in a launch by hand.
    survivor_exits("-KILL", 0, 20);
}

#[test]
fn a_hung_rank_makes_the_other_exit_within_the_timeout() {
    survivor_exits("-STOP", 1, 5);
}

#[test]
fn launch_environment() {
    let env = |pairs: &[(&str, &str)]| {
        let m: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        from_vars(move |k| m.get(k).cloned())
    };
    assert_eq!(env(&[]).unwrap(), None);
    // torchrun: the agent hosts the store, so rank 0 is a client too.
    let l = env(&[
        ("RANK", "0"), ("WORLD_SIZE", "8"), ("LOCAL_RANK", "0"), ("LOCAL_WORLD_SIZE", "8"), ("MASTER_ADDR", "10.0.0.1"),
        ("MASTER_PORT", "29500"), ("TORCHELASTIC_RUN_ID", "x"), ("TORCHELASTIC_USE_AGENT_STORE", "True"),
    ])
    .unwrap()
    .unwrap();
    assert_eq!((l.launcher, l.world_size, l.hosts_store, l.local_world_size), (Launcher::Torchrun, 8, false, 8));
    // By hand: rank 0 hosts.
    let l = env(&[("RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "1234")]).unwrap().unwrap();
    assert_eq!((l.launcher, l.hosts_store, l.master_port, l.local_world_size), (Launcher::Env, true, 1234, 2));
    // srun: from SLURM_* when RANK is absent; one task is a single process.
    let l = env(&[
        ("SLURM_PROCID", "5"), ("SLURM_NTASKS", "16"), ("SLURM_LOCALID", "1"), ("SLURM_NTASKS_PER_NODE", "8(x2)"),
        ("MASTER_ADDR", "node1"),
    ])
    .unwrap()
    .unwrap();
    assert_eq!((l.launcher, l.rank, l.world_size, l.local_rank, l.local_world_size, l.master_port), (Launcher::Slurm, 5, 16, 1, 8, 29500));
    assert_eq!(env(&[("SLURM_PROCID", "0"), ("SLURM_NTASKS", "1")]).unwrap(), None);
    // Errors name the variable.
    assert!(env(&[("RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_PORT", "1")]).unwrap_err().contains("MASTER_ADDR"));
    assert!(env(&[("RANK", "2"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "a"), ("MASTER_PORT", "1")]).unwrap_err().contains("rank 2"));
    assert!(env(&[("SLURM_PROCID", "0"), ("SLURM_NTASKS", "2")]).unwrap_err().contains("MASTER_ADDR"));
}

#[test]
fn dist_check_collectives_across_two_ranks() {
    // `meanflow dist-check`: bucketed all-reduce mean (16 MiB in 4 MiB buckets), broadcast
    // from the last rank, barrier; each rank prints its all-reduce time.
    let port = free_port().to_string();
    let children: Vec<Child> = (0..2)
        .map(|r| {
            command(BIN)
                .args(["dist-check", "--device", "cpu", "--mb", "16", "--bucket-mb", "4", "--timeout-s", "30"])
                .env("RANK", r.to_string())
                .env("WORLD_SIZE", "2")
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", &port)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (r, o) in wait_all(children).iter().enumerate() {
        let t = text(o);
        eprint!("{t}");
        assert!(o.status.success(), "rank {r}: {t}");
        assert!(t.contains(&format!("rank {r}/2: all-reduce mean of 16.0 MiB on Cpu in 3 bucket(s)")), "{t}");
    }
    // Without a launcher it says what is missing.
    let o = command(BIN).args(["dist-check"]).output().unwrap();
    assert!(!o.status.success() && text(&o).contains("torchrun"), "{}", text(&o));
}

#[test]
fn checksums_see_any_single_changed_element() {
    let a = Tensor::randn([1000], (tch::Kind::Float, tch::Device::Cpu));
    let named = |t: &Tensor| vec![("w".to_string(), t.copy())];
    let base: Vec<i64> = Vec::try_from(meanflow::dist::checksums(&named(&a))).unwrap();
    assert_eq!(base, Vec::<i64>::try_from(meanflow::dist::checksums(&named(&a.copy()))).unwrap());
    for i in [0i64, 1, 500, 999] {
        // One ulp at one element, and a swap of two elements.
        let b = a.copy();
        let bits = b.view_dtype(tch::Kind::Int);
        let _ = bits.narrow(0, i, 1).g_add_scalar_(1);
        assert_ne!(base, Vec::<i64>::try_from(meanflow::dist::checksums(&named(&b))).unwrap(), "ulp at {i}");
        let c = a.copy();
        let j = (i + 1) % 1000;
        let (x, y) = (a.narrow(0, i, 1), a.narrow(0, j, 1));
        c.narrow(0, i, 1).copy_(&y);
        c.narrow(0, j, 1).copy_(&x);
        assert_ne!(base, Vec::<i64>::try_from(meanflow::dist::checksums(&named(&c))).unwrap(), "swap at {i}");
    }
}
