//! Who this process is in a data-parallel job, read from the launcher's environment:
//! torchrun (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT and
//! TORCHELASTIC_USE_AGENT_STORE), the same variables set by hand, or SLURM's srun
//! (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID when RANK is absent). No variables: a
//! single-process run.

/// How the processes were started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Launcher {
    /// torchrun (torch.distributed.run): its agent hosts the TCPStore.
    Torchrun,
    /// RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT set by hand: rank 0 hosts the store.
    Env,
    /// srun: rank 0 hosts the store at MASTER_ADDR:MASTER_PORT.
    Slurm,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    pub launcher: Launcher,
    pub rank: i64,
    pub world_size: i64,
    pub local_rank: i64,
    /// Processes on this host (for the default thread count).
    pub local_world_size: i64,
    pub master_addr: String,
    pub master_port: u16,
    /// Whether this process hosts the TCPStore (and so must exit last).
    pub hosts_store: bool,
    /// torchrun's restart count: a fresh key prefix per attempt.
    pub attempt: u64,
}

/// Reads the process environment; `Ok(None)` for a single-process run.
pub fn from_env() -> Result<Option<Launch>, String> {
    from_vars(|k| std::env::var(k).ok())
}

/// As [`from_env`], from any variable lookup (tests).
pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Option<Launch>, String> {
    let int = |k: &str| -> Result<Option<i64>, String> {
        match var(k) {
            None => Ok(None),
            Some(v) => v.trim().parse::<i64>().map(Some).map_err(|_| format!("{k}={v:?} is not an integer")),
        }
    };
    let need = |k: &str, why: &str| -> Result<String, String> {
        var(k).filter(|v| !v.is_empty()).ok_or_else(|| format!("{k} is not set ({why})"))
    };
    let port = |why: &str, default: Option<u16>| -> Result<u16, String> {
        match (var("MASTER_PORT"), default) {
            (Some(p), _) => p.trim().parse::<u16>().map_err(|_| format!("MASTER_PORT={p:?} is not a port number")),
            (None, Some(d)) => Ok(d),
            (None, None) => Err(format!("MASTER_PORT is not set ({why})")),
        }
    };
    let (launcher, rank, world, local_rank, local_world, addr, port) = if let Some(rank) = int("RANK")? {
        let why = "RANK is set, so this is a data-parallel launch";
        let world = int("WORLD_SIZE")?.ok_or_else(|| format!("WORLD_SIZE is not set ({why})"))?;
        let torchrun = var("TORCHELASTIC_RUN_ID").is_some() || var("TORCHELASTIC_USE_AGENT_STORE").is_some();
        let launcher = if torchrun { Launcher::Torchrun } else { Launcher::Env };
        // By hand on one host, LOCAL_RANK / LOCAL_WORLD_SIZE may be left out.
        let local_rank = int("LOCAL_RANK")?.unwrap_or(rank);
        let local_world = int("LOCAL_WORLD_SIZE")?.unwrap_or(world);
        (launcher, rank, world, local_rank, local_world, need("MASTER_ADDR", why)?, port(why, None)?)
    } else if let Some(rank) = int("SLURM_PROCID")? {
        let world = int("SLURM_NTASKS")?.unwrap_or(1);
        if world <= 1 {
            return Ok(None);
        }
        let why = "srun started several tasks; set it to the first node's address, e.g. \
                   MASTER_ADDR=$(scontrol show hostnames \"$SLURM_JOB_NODELIST\" | head -n1)";
        let local_rank = int("SLURM_LOCALID")?.unwrap_or(0);
        // SLURM_NTASKS_PER_NODE looks like "4" or "4(x2)"; absent, assume an even split.
        let per_node = var("SLURM_NTASKS_PER_NODE")
            .and_then(|v| v.split(|c: char| !c.is_ascii_digit()).next().and_then(|n| n.parse::<i64>().ok()));
        let nodes = int("SLURM_NNODES")?.unwrap_or(1).max(1);
        let local_world = per_node.unwrap_or((world + nodes - 1) / nodes);
        (Launcher::Slurm, rank, world, local_rank, local_world, need("MASTER_ADDR", why)?, port(why, Some(29500))?)
    } else {
        return Ok(None);
    };
    if world < 1 || rank < 0 || rank >= world {
        return Err(format!("rank {rank} is not in 0..{world} (world size {world})"));
    }
    if local_rank < 0 || local_world < 1 || local_rank >= local_world {
        return Err(format!("local rank {local_rank} is not in 0..{local_world}"));
    }
    let agent_store = var("TORCHELASTIC_USE_AGENT_STORE").is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1");
    let attempt = int("TORCHELASTIC_RESTART_COUNT")?.unwrap_or(0).max(0) as u64;
    Ok(Some(Launch {
        launcher,
        rank,
        world_size: world,
        local_rank,
        local_world_size: local_world,
        master_addr: addr,
        master_port: port,
        hosts_store: rank == 0 && !agent_store,
        attempt,
    }))
}

impl Launch {
    /// libtorch threads per process when train.threads is not set: the cores shared out
    /// among this host's ranks (several processes each spinning on every core run 5-10x
    /// slower).
    pub fn default_threads(&self) -> i32 {
        let cores = std::thread::available_parallelism().map(|n| n.get() as i64).unwrap_or(1);
        (cores / self.local_world_size).max(1) as i32
    }
}
