"""How this process was launched: the run id every rank shares, and which rank it is.

`torchrun` and `accelerate launch` start one process per GPU a few milliseconds apart. A run
folder named by each process's own clock (`${now:...}`) would give every rank a different
folder, and checkpoints, logs and the MLflow run would be split between them. The run id
(`run_id`, which names the run folder) is therefore taken, in this order, from:

1. `FINETUNE_PHI_RUN_ID` (or `run_id=NAME` on the command line): the same name on every node
   and on every rerun after a preemption, so `resume=auto` finds the checkpoints;
2. the launcher's rendezvous id (`TORCHELASTIC_RUN_ID`): `--rdzv-id NAME` as given, or the
   fresh uuid that `torchrun` hands to every rank of a single-node job (the folder is then
   `elastic-<first 8 hex digits>`);
3. on one machine, the process that started every rank (torchrun's agent, or `accelerate
   launch`, whose static rendezvous carries no id): `<its start time>-launcher<its pid>`;
4. the clock, in a single process.

Several nodes without an id from 1 or 2 is an error: they have no way to agree on a name.

A launch that asked for a distributed mode the trainer does not run stops before training
(`check_processes`, `check_sharding`): more processes than the trainer sees, `accelerate launch
--cpu` (whose launcher starts one process whatever `--num_processes` says), and FSDP or DeepSpeed
that accelerate did not switch on (accelerate 1.15 enables FSDP for GPU-like devices only, so on
CPU processes an FSDP config trains plain DDP).
"""

from __future__ import annotations

import functools
import os
import re
from datetime import datetime
from pathlib import Path

RUN_ID_ENV = "FINETUNE_PHI_RUN_ID"
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


class LaunchError(RuntimeError):
    """The launch cannot run as asked (one run folder for every rank, the distributed mode it
    requested); the message says what to do."""


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    return rank() == 0


def check_processes(trainer_world_size: int) -> None:
    """Stop when the launcher meant more processes than the trainer will train with."""
    mpi_sizes = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
    cpu_launcher = _env_true("ACCELERATE_USE_CPU")
    if cpu_launcher and "MASTER_PORT" in os.environ and not {"WORLD_SIZE", *mpi_sizes} & set(os.environ):
        # accelerate's simple launcher: --cpu sends every config to it, and it starts ONE process
        # (it sets MASTER_PORT only for --num_processes > 1 or several machines; mpirun would set a size).
        raise LaunchError(
            "accelerate launch --cpu started only this process: with --cpu, accelerate's launcher runs one "
            "process whatever --num_processes or the config file say. Drop --cpu (without a GPU the recipe "
            "trains on the CPU with the gloo backend anyway) or use torchrun --nproc-per-node N -m train."
        )
    if world_size() != trainer_world_size:
        raise LaunchError(
            f"{world_size()} processes were launched but the trainer sees {trainer_world_size}: every rank "
            "would act as rank 0. Launch with torchrun or accelerate launch, which set RANK and WORLD_SIZE "
            "for every process."
        )


def check_sharding(trainer) -> None:
    """Stop when FSDP or DeepSpeed was asked for but the built trainer does not run it."""
    args, distributed_type = trainer.args, trainer.accelerator.distributed_type
    requested = {
        "FSDP": (_env_true("ACCELERATE_USE_FSDP") or bool(args.fsdp), trainer.is_fsdp_enabled),
        "DeepSpeed": (
            _env_true("ACCELERATE_USE_DEEPSPEED") or bool(args.deepspeed),
            trainer.is_deepspeed_enabled,
        ),
    }
    for mode, (asked, active) in requested.items():
        if asked and not active:
            instead = "DDP" if trainer.args.world_size > 1 else "one unsharded process"
            raise LaunchError(
                f"{mode} was requested but accelerate runs {distributed_type.value}, so this would train "
                f"{instead} instead. accelerate enables {mode} only on GPUs (and other accelerators), not "
                "on CPU processes. On a CPU, launch DDP: torchrun --nproc-per-node N -m train, or accelerate "
                "launch --config_file conf/accelerate/ddp.yaml."
            )


def sharded_model_check():
    """A TrainerCallback that, when training begins (after accelerate has prepared the model), stops
    unless a run with FSDP2 holds an FSDPModule: the proof that the weights are sharded, not only
    that FSDP was configured. It logs what it found on every rank."""
    import logging

    from torch.distributed.fsdp import FSDPModule
    from transformers import TrainerCallback

    log = logging.getLogger(__name__)

    class ShardedModelCheck(TrainerCallback):
        def __init__(self, trainer):
            self.trainer = trainer

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            trainer = self.trainer
            if not trainer.is_fsdp_enabled or trainer.accelerator.state.fsdp_plugin.fsdp_version != 2:
                return
            if not isinstance(trainer.model_wrapped, FSDPModule):
                raise LaunchError(
                    f"FSDP2 is enabled but the model being trained is a {type(trainer.model_wrapped).__name__}, "
                    "not an FSDPModule: its weights are not sharded"
                )
            log.info(
                "FSDP2: rank %d trains %s, an FSDPModule sharded over %d processes",
                rank(),
                type(trainer.model_wrapped).__name__,
                args.world_size,
            )

    return ShardedModelCheck


def _env_true(name: str) -> bool:
    return os.environ.get(name, "false").lower() in ("true", "1")


def rank_suffix() -> str:
    """Empty on rank 0, ".rank1" etc. elsewhere: per-rank file names in a shared run folder."""
    return "" if is_main_process() else f".rank{rank()}"


@functools.cache  # the clock is read once per process, so every use of run_id agrees
def launch_id() -> str:
    """The run folder's name, identical on every rank of one launch (see the module docstring)."""
    explicit = os.environ.get(RUN_ID_ENV)
    if explicit:
        return explicit
    elastic = os.environ.get("TORCHELASTIC_RUN_ID", "none")
    if _UUID.fullmatch(elastic):  # torchrun's own single-node id
        return f"elastic-{elastic[:8]}"
    if elastic != "none":  # --rdzv-id NAME
        return elastic
    one_machine = os.environ.get("LOCAL_WORLD_SIZE") == os.environ.get("WORLD_SIZE")
    launcher = _launcher_id() if world_size() > 1 and one_machine else None
    if launcher:  # every rank is a child of the same launcher process
        return launcher
    if world_size() > 1:  # several nodes without --rdzv-id, or a launcher other than torchrun
        raise LaunchError(
            f"{world_size()} processes were launched without a shared run id, so their run folders "
            f"would differ. Set {RUN_ID_ENV}=NAME (or pass run_id=NAME) with the same NAME on every "
            "node, or give torchrun --rdzv-id NAME."
        )
    return datetime.now().strftime("%Y-%m-%d_%H-%M-%S-%f")


def _launcher_id() -> str | None:
    """`<start time>-launcher<pid>` of this process's parent, which on one machine started every
    rank (Linux: read from /proc); None where that cannot be read."""
    parent = os.getppid()
    try:
        # starttime, field 22 of /proc/PID/stat, in clock ticks after boot (proc(5)); the fields
        # after the command name (in parentheses) start at field 3.
        ticks = int(Path(f"/proc/{parent}/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(
            int(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime")
        )
    except (OSError, ValueError, IndexError, StopIteration):
        return None
    started = datetime.fromtimestamp(boot + ticks / os.sysconf("SC_CLK_TCK"))
    return f"{started:%Y-%m-%d_%H-%M-%S}-launcher{parent}"
