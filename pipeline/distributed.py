"""Data-parallel training over the processes torchrun starts: one model trained by N processes (ranks), each with its
share of every step's batch, DistributedDataParallel averaging the gradients.

    torchrun --standalone --nproc_per_node=4 -m pipeline.train --config configs/base.yaml      # or: make train NPROC=4

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK in each process; with WORLD_SIZE 1 (or no torchrun) nothing here does
anything and a stage runs as a single process, unchanged. With WORLD_SIZE > 1:
- setup(cfg) joins the process group: nccl when the stage runs on CUDA (rank r on cuda:LOCAL_RANK, see
  get_device), gloo on the CPU.
- The epoch order is one shared shuffle (the same numpy generator on every rank); each rank takes its contiguous
  share (share()) of every global batch of train.batch_size clips, so the global batch and the number of steps stay
  what one process would use. Crops, augmentation draws and dropout come from per-rank generators (rank_seed).
- prepare(mode, ...) wraps every network the optimiser trains (Mode.networks(): one, or two for Deep Co-Training)
  in DistributedDataParallel; the modes run their training forwards through the wrapper (Mode.net), so one
  backward per step averages the gradients of all ranks. Passes that only make targets (teachers, weak views) and
  autograd.grad calls with respect to inputs (VAT, FGSM) need no synchronisation and get none.
- BatchNorm: with train.sync_bn (on CUDA) every BatchNorm becomes torch's SyncBatchNorm, normalising with the
  statistics of the whole global batch. torch's SyncBatchNorm runs on CUDA only, so CPU ranks normalise with their
  own share's statistics, and their running statistics are averaged over the ranks after every step
  (average_buffers): every rank then holds the same model after every step, so EMA teachers, teacher copies and
  the checkpoint rank 0 writes describe all of them.
- Rank 0 alone writes (checkpoints, logs, metrics, curves, summaries); the other ranks log warnings only
  (logger()). Validation and calibration predictions are split over the ranks and gathered (sharded()), so every
  rank knows the metric that picks best.pt and the thresholds a mode calibrates.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from pipeline.utils import UserError, get_logger


@dataclass(frozen=True)
class World:
    """This process's place in a data-parallel run (rank 0 of 1 outside torchrun)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes files."""
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.size > 1


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    try:
        return int(raw) if raw != "" else default
    except ValueError:
        raise UserError(f"environment variable {name}={raw!r} is not an integer (torchrun sets it)") from None


def world() -> World:
    """The World torchrun describes in RANK, WORLD_SIZE and LOCAL_RANK (World() without them)."""
    size = _env_int("WORLD_SIZE", 1)
    if size <= 1:
        return World()
    return World(_env_int("RANK", 0), size, _env_int("LOCAL_RANK", 0))


def get_device(cfg):
    """run.device: auto (cuda:0 when CUDA is available, else cpu) | cpu | cuda (cuda:0) | cuda:N. A CUDA device that
    is not there is a UserError naming run.device; the chosen one becomes torch's current CUDA device. In a torchrun
    run of several processes (WORLD_SIZE > 1) auto and cuda mean cuda:LOCAL_RANK."""
    want = cfg.run.device
    if want == "cpu" or (want == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    index = int(want.split(":")[1]) if ":" in want else 0
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    w = world()
    if w.parallel:  # torchrun: one GPU per process
        if ":" in want:
            raise UserError(
                f"run.device={want}: under torchrun each process takes cuda:LOCAL_RANK; use "
                f"run.device=auto or cuda (CUDA_VISIBLE_DEVICES chooses the GPUs)"
            )
        index = w.local_rank
        if index >= count:
            raise UserError(
                f"run.device={want}: torchrun started local rank {index} but this machine has {count} "
                f"CUDA device(s); use --nproc_per_node={count} at most, or run.device=cpu"
            )
    if index >= count:
        there = f"this machine has {count} (cuda:0..cuda:{count - 1})" if count else "no CUDA device is available"
        raise UserError(f"run.device={want}: {there}; use run.device=auto or cpu")
    torch.cuda.set_device(index)  # so that calls without a device (synchronize, memory stats) go to it
    return torch.device("cuda", index)


def setup(cfg) -> World:
    """Join the process group of a torchrun run (once per process; later calls return the same World): nccl for a
    CUDA device, gloo for the CPU. Outside torchrun (WORLD_SIZE unset or 1), World() and nothing else."""
    w = world()
    if not w.parallel or dist.is_initialized():
        return w
    device = get_device(cfg)  # cuda:LOCAL_RANK in a torchrun run (run.device auto | cuda)
    store, rank, size = next(dist.rendezvous("env://"))
    # torchrun --max-restarts starts the ranks again over the store it kept, where the keys of the killed round (its
    # ranks' addresses) are still to be read: each round keys its process group under its own prefix
    store = dist.PrefixStore(f"fattag/round{os.environ.get('TORCHELASTIC_RESTART_COUNT') or 0}", store)
    if device.type == "cuda":
        dist.init_process_group("nccl", store=store, rank=rank, world_size=size, device_id=device)
    else:
        dist.init_process_group("gloo", store=store, rank=rank, world_size=size)
    atexit.register(_teardown)
    return w


def _local_rank(rank, size, port, fn, args):
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(size),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS") or "1",
    )
    fn(rank, *args)


def spawn(fn, *args, size: int = 2):
    """Run fn(rank, *args) in `size` fresh processes of this machine, each with the environment torchrun gives a
    rank (RANK, WORLD_SIZE, LOCAL_RANK, a free MASTER_PORT): what the tests and bench/ddp.py use instead of a
    torchrun command line. fn must be importable (a module-level function); an error in one rank is raised here."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_local_rank, args=(size, port, fn, args), nprocs=size, join=True)


def _teardown():
    if dist.is_initialized():
        dist.destroy_process_group()


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _comm_device() -> torch.device:
    """Where collectives of small tensors run: the current CUDA device under nccl, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def logger(folder=None) -> logging.Logger:
    """Rank 0 (or a single process): pipeline.utils.get_logger(folder=folder), which appends to folder/log.txt. The
    other ranks: a logger of their own that prints warnings and errors to stderr and writes no file."""
    w = world()
    if w.main:
        return get_logger(folder=folder)
    log = logging.getLogger(f"fattag.rank{w.rank}")
    if not log.handlers:
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter(f"%(asctime)s rank {w.rank}: %(message)s", "%H:%M:%S"))
        log.addHandler(h)
    log.setLevel(logging.WARNING)
    log.propagate = False
    return log


def barrier():
    if _active():
        dist.barrier()


def on_main(run, others):
    """Rank 0 runs run() (which may write files) while the other ranks wait; then they run others() (which reads
    what rank 0 wrote). A single process runs run(). Returns what this rank ran returned."""
    if not _active():
        return run()
    result = run() if world().main else None
    dist.barrier()
    return result if world().main else others()


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank `rank`'s own random streams (crops, augmentation masks, mixup, dropout): `seed` itself on
    rank 0, so a single process draws exactly what it drew before data-parallel training existed."""
    if rank == 0:
        return int(seed)
    return int(np.random.SeedSequence([int(seed), int(rank)]).generate_state(1, np.uint64)[0] >> 1)


def share(n: int, rank: int, size: int) -> slice:
    """This rank's rows of a global batch of n rows: the rank-th of `size` contiguous equal blocks."""
    if n % size:
        raise ValueError(f"a batch of {n} clips does not split evenly over {size} processes")
    b = n // size
    return slice(rank * b, (rank + 1) * b)


def check_batch_sizes(sizes: dict, size: int):
    """sizes {config key: clips per step}; every one must split evenly over the ranks (a UserError names the key)."""
    bad = {k: v for k, v in sizes.items() if v % size}
    if bad:
        raise UserError(
            "; ".join(f"{k}: {v} clips per step do not split evenly over {size} processes" for k, v in bad.items())
            + f" (each rank takes 1/{size} of every batch): use a multiple of {size}"
        )


def all_gather(obj) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every rank (picklable objects); [obj] in a single process."""
    if not _active():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def from_main(value):
    """Rank 0's value on every rank (a decision all ranks must share, such as whether a fold is done while another
    process may be finishing it); the value itself in a single process."""
    return all_gather(value)[0]


def sharded(fn, items: list) -> np.ndarray:
    """fn(items) -> (len(items), ...) rows, computed in a data-parallel run as fn(items[rank::size]) on each rank and
    gathered in items' order on every rank. A single process calls fn(items) as it is."""
    if not _active():
        return fn(items)
    size, rank = dist.get_world_size(), dist.get_rank()
    idx = np.arange(len(items))[rank::size]
    part = fn([items[i] for i in idx]) if len(idx) else None
    parts = all_gather((idx, part))
    first = next(p for _, p in parts if p is not None)
    out = np.empty((len(items), *first.shape[1:]), dtype=first.dtype)
    for i, p in parts:
        if len(i):
            out[i] = p
    return out


def mean_values(values: dict) -> dict:
    """The mean over the ranks of each value (floats or scalar tensors; the same keys on every rank), as floats;
    a single process gets `values` back unchanged."""
    if not _active() or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t)
    t /= dist.get_world_size()
    return dict(zip(keys, t.tolist()))


def sum_values(values: list) -> list:
    """The sum over the ranks of each float (counts); the list itself in a single process."""
    if not _active():
        return values
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t)
    return t.tolist()


def mean_tensor(t: torch.Tensor) -> torch.Tensor:
    """The mean over the ranks of a tensor (a copy); `t` itself in a single process."""
    if not _active():
        return t
    out = t.detach().clone()
    dist.all_reduce(out)
    return out / dist.get_world_size()


def _bn_buffers(nets) -> list[torch.Tensor]:
    return [
        b
        for net in nets
        for m in net.modules()
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
        for b in (m.running_mean, m.running_var)
        if b is not None
    ]


@torch.no_grad()
def average_buffers(nets):
    """Average the BatchNorm running means and variances of `nets` over the ranks, in place (one all-reduce). After
    it every rank holds the same statistics (without SyncBatchNorm each rank's come from its own share)."""
    bufs = _bn_buffers(nets)
    if not _active() or not bufs:
        return
    flat = torch.cat([b.reshape(-1).float() for b in bufs])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    i = 0
    for b in bufs:
        b.copy_(flat[i : i + b.numel()].view_as(b))
        i += b.numel()


def prepare(mode, device, sync_bn: bool, log=None) -> bool:
    """Data-parallel wrappers for the networks `mode` trains (Mode.networks()): SyncBatchNorm first where sync_bn
    and the device is CUDA, then DistributedDataParallel, registered in mode.wrappers for Mode.net. Returns whether
    the BatchNorm running statistics need average_buffers after each step (CPU, or sync_bn off). A no-op (False)
    in a single process."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    if not _active():
        return False
    use_sync = sync_bn and device.type == "cuda"
    if log and sync_bn and not use_sync:
        log.info(
            "train.sync_bn: torch's SyncBatchNorm runs on CUDA only; on the CPU each rank normalises with its "
            "own share's statistics, the running statistics averaged over the ranks after every step"
        )
    for net in mode.networks():
        if use_sync:
            torch.nn.SyncBatchNorm.convert_sync_batchnorm(net)  # in place below the top module; same parameters
        unused = mode.unused_parameters(net)
        if unused:  # no loss reaches them: the gradient averaging must not wait for their gradients
            DDP._set_params_and_buffers_to_ignore_for_model(net, unused)
        # buffers are broadcast from rank 0 once, here, never at a forward (a mode's second forward would overwrite
        # statistics an earlier one saved for backward); average_buffers or SyncBatchNorm keep them equal
        mode.wrappers[id(net)] = DDP(
            net, device_ids=[device.index] if device.type == "cuda" else None, forward_sync_buffers=False
        )
    if log:
        log.info(
            f"data-parallel: {dist.get_world_size()} processes ({dist.get_backend()}), "
            f"{len(mode.wrappers)} network(s) in DistributedDataParallel, "
            f"BatchNorm {'synchronised (SyncBatchNorm)' if use_sync else 'per rank, statistics averaged'}"
        )
    return not use_sync
