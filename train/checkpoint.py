"""Checkpoints, exact resume and preemption, on top of transformers' own Trainer checkpointing.

- `resume=auto` (default) continues from the newest *complete* checkpoint in this run's
  `checkpoints/` folder, `resume=none` starts from step 0, `resume=PATH` continues from a
  checkpoint folder or from the newest complete checkpoint of another run folder.
- A checkpoint is complete when its `trainer_state.json` parses and names the folder's step:
  the Trainer writes that file after the weights, optimizer, scheduler and RNG states, so a
  folder cut off mid-write (a preempted node) lacks it and is never picked.
- Starting from step 0 while this run folder holds a complete checkpoint is an error (it would
  overwrite the run), and so is a trainer that, given a checkpoint, restarts at another step
  (a resume that silently starts over: transformers#23325, trl#3179).
- SIGTERM or SIGINT during training saves a checkpoint at the end of the current step, stops,
  and the process exits with status 75 (EX_TEMPFAIL: "try again"), so a scheduler or an
  Azure ML job on a low-priority node reruns the same command and `resume=auto` continues.
  A second signal stops at once.
"""

from __future__ import annotations

import json
import logging
import re
import signal
from pathlib import Path

from accelerate import Accelerator
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from train.model import ConfigError

log = logging.getLogger(__name__)

# EX_TEMPFAIL from sysexits.h. Distinct from 1 (an error), 130/143 (killed by SIGINT/SIGTERM
# before a checkpoint could be written) and 137 (SIGKILL).
EXIT_INTERRUPTED = 75
STATE_FILE = "trainer_state.json"
_STEP = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")


class TrainingInterrupted(SystemExit):
    """Training stopped on a signal at `step`, after saving a checkpoint; exits with EXIT_INTERRUPTED."""

    def __init__(self, step: int):
        super().__init__(EXIT_INTERRUPTED)
        self.step = step


def checkpoint_step(path: Path) -> int | None:
    match = _STEP.match(path.name)
    return int(match.group(1)) if match else None


def is_complete(path: Path) -> bool:
    """True when the Trainer finished writing this checkpoint (its state file is written last)."""
    step = checkpoint_step(path)
    if step is None or not path.is_dir():
        return False
    try:
        state = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return state.get("global_step") == step


def saved_at(checkpoints_dir: Path, step: int) -> Path | None:
    """The complete checkpoint of `step` in `checkpoints_dir`, or None."""
    path = checkpoints_dir / f"{PREFIX_CHECKPOINT_DIR}-{step}"
    return path if is_complete(path) else None


def complete_checkpoints(checkpoints_dir: Path) -> list[Path]:
    """The complete checkpoints in a folder, oldest first; incomplete ones are logged."""
    if not checkpoints_dir.is_dir():
        return []
    found = sorted(
        (p for p in checkpoints_dir.iterdir() if checkpoint_step(p) is not None), key=checkpoint_step
    )
    complete = []
    for path in found:
        if is_complete(path):
            complete.append(path)
        else:
            log.warning("ignoring %s: incomplete (no valid %s; cut off while saving?)", path, STATE_FILE)
    return complete


def find_resume_checkpoint(resume: str, checkpoints_dir: Path) -> Path | None:
    """The checkpoint to continue from, or None to start at step 0 (see the module docstring)."""
    existing = complete_checkpoints(checkpoints_dir)
    if resume == "none":
        if existing:
            raise ConfigError(
                f"resume=none but this run folder already has checkpoints ({existing[-1]}); starting at "
                "step 0 would overwrite them. Use resume=auto to continue, or a new run_id for a new run."
            )
        return None
    if resume == "auto":
        if existing:
            log.info("resume=auto: continuing from %s", existing[-1])
            return existing[-1]
        return None
    path = Path(resume).expanduser()
    if checkpoint_step(path) is not None:
        if not is_complete(path):
            raise ConfigError(
                f"resume={resume}: not a complete checkpoint (missing or invalid {path / STATE_FILE})"
            )
        return path
    for folder in (path / "checkpoints", path):
        candidates = complete_checkpoints(folder)
        if candidates:
            return candidates[-1]
    raise ConfigError(
        f"resume={resume}: no complete checkpoint there. Give a {PREFIX_CHECKPOINT_DIR}-N folder or a "
        "run folder holding checkpoints/, or use resume=auto|none."
    )


class ResumeGuard(TrainerCallback):
    """Fails the run when the trainer does not start at the resumed checkpoint's step."""

    def __init__(self, checkpoint: Path | None):
        self.expected_step = checkpoint_step(checkpoint) if checkpoint else 0

    def on_train_begin(self, args, state, control, **kwargs):
        if state.global_step != self.expected_step:
            raise RuntimeError(
                f"asked to resume at step {self.expected_step} but the trainer starts at step "
                f"{state.global_step}; refusing to train from the wrong step"
            )


class StopOnSignal(TrainerCallback):
    """On SIGTERM/SIGINT: save a checkpoint at the end of the current step and stop training.

    The handlers are installed for the duration of `trainer.train()` only. A signal sets
    accelerate's trigger on the rank that received it (`Accelerator.set_trigger`); every rank
    checks it across all ranks at the end of each step (`Accelerator.check_trigger`, a
    collective), so all ranks stop at the same step even when the signal reached them at
    different times (no rank is left waiting in a collective).
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, accelerator: Accelerator):
        self.accelerator = accelerator
        self.interrupted = False  # on every rank, once any rank received a signal
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame):
        self.accelerator.set_trigger()
        log.warning(
            "%s received: saving a checkpoint at the end of this step, then exiting with status %d "
            "(send it again to stop at once)",
            signal.Signals(signum).name,
            EXIT_INTERRUPTED,
        )
        signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))

    def on_train_begin(self, args, state, control, **kwargs):
        for signum in self.SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)

    def on_train_end(self, args, state, control, **kwargs):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def on_step_end(self, args, state, control, **kwargs):
        if self.accelerator.check_trigger():
            self.interrupted = True
            control.should_save = True
            control.should_training_stop = True
        return control
