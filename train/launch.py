"""How this process was launched: the run id every rank shares, and which rank it is.

`torchrun` and `accelerate launch` start one process per GPU a few milliseconds apart. A run
folder named by each process's own clock (`${now:...}`) would give every rank a different
folder, and checkpoints, logs and the MLflow run would be split between them. The run id
(`run_id`, which names the run folder) is therefore taken, in this order, from:

1. `FINETUNE_PHI_RUN_ID` (or `run_id=NAME` on the command line): the same name on every node
   and on every rerun after a preemption, so `resume=auto` finds the checkpoints;
2. the launcher's rendezvous id (`TORCHELASTIC_RUN_ID`): `--rdzv-id NAME` as given, or the
   fresh uuid that `torchrun` and `accelerate launch` hand to every rank of a single-node job
   (the folder is then `elastic-<first 8 hex digits>`);
3. the clock, in a single process.

Several nodes without an id from 1 or 2 is an error: they have no way to agree on a name.
"""

from __future__ import annotations

import functools
import os
import re
from datetime import datetime

RUN_ID_ENV = "FINETUNE_PHI_RUN_ID"
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


class LaunchError(RuntimeError):
    """The launch cannot give every rank the same run folder; the message says what to set."""


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    return rank() == 0


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
    if world_size() > 1:  # several nodes without --rdzv-id, or a launcher other than torchrun
        raise LaunchError(
            f"{world_size()} processes were launched without a shared run id, so their run folders "
            f"would differ. Set {RUN_ID_ENV}=NAME (or pass run_id=NAME) with the same NAME on every "
            "node, or give torchrun --rdzv-id NAME."
        )
    return datetime.now().strftime("%Y-%m-%d_%H-%M-%S-%f")
