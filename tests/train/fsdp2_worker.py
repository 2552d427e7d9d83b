"""FSDP2 on CPU processes, for tests/train/test_distributed.py (run under torchrun, gloo backend).

accelerate 1.15 switches FSDP on for GPU-like devices only (accelerate/state.py), so SFTTrainer
cannot shard on a CPU; this runs what accelerate does with conf/accelerate/fsdp.yaml on a GPU,
with torch itself: `fully_shard` on every module of the class the config names, then on the
root; the same per-rank batches through a DDP copy of the model; the full state dict gathered
as FULL_STATE_DICT asks, saved by rank 0 as the recipe's `final_model/`.

    torchrun --nproc-per-node 2 tests/train/fsdp2_worker.py OUT_DIR
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from accelerate.commands.config.config_args import ClusterConfig
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import fully_shard
from torch.nn.parallel import DistributedDataParallel
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from common.paths import PROJECT_ROOT
from tests.conftest import compose_config
from train import data, model

STEPS, ROWS_PER_RANK = 3, 4


def main(out_dir: Path) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    fsdp = ClusterConfig.from_yaml_file(str(PROJECT_ROOT / "conf" / "accelerate" / "fsdp.yaml")).fsdp_config
    assert fsdp["fsdp_version"] == 2 and fsdp["fsdp_state_dict_type"] == "FULL_STATE_DICT", fsdp

    cfg = compose_config("sft.learning_rate=1e-3")
    tokenizer = model.load_tokenizer(cfg.model)
    for turn in range(world):  # rank 0 prepares the data, the others read its files
        if turn == rank:
            splits, _ = data.load_splits(cfg, tokenizer)
        dist.barrier()
    collate = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id)
    ids = splits["train"]["input_ids"]
    batches = []  # step s: this rank's rows of the step's global batch
    for step in range(STEPS):
        first = (step * world + rank) * ROWS_PER_RANK
        batches.append(collate([{"input_ids": row} for row in ids[first : first + ROWS_PER_RANK]]))

    def train(wrapped) -> list[float]:
        optimizer = torch.optim.AdamW(wrapped.parameters(), lr=cfg.sft.learning_rate, weight_decay=0.0)
        losses = []
        for batch in batches:
            loss = wrapped(**batch).loss
            loss.backward()  # DDP all-reduces the gradients, FSDP2 reduce-scatters them: both average
            optimizer.step()
            optimizer.zero_grad()
            mean = loss.detach().clone()
            dist.all_reduce(mean)
            losses.append(mean.item() / world)
        return losses

    base = model.load_model(cfg.model, cfg.peft, tokenizer)
    ddp = DistributedDataParallel(copy.deepcopy(base))
    ddp_losses = train(ddp)

    sharded = copy.deepcopy(base)
    for module in sharded.modules():
        if type(module).__name__ in fsdp["fsdp_transformer_layer_cls_to_wrap"].split(","):
            fully_shard(module, reshard_after_forward=fsdp["fsdp_reshard_after_forward"])
    fully_shard(sharded)
    fsdp_losses = train(sharded)
    shard = sharded.model.layers[0].mlp.down_proj.weight
    full = get_model_state_dict(sharded, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank == 0:
        reference = ddp.module.state_dict()
        final = out_dir / "final_model"
        base.save_pretrained(final, state_dict=dict(full))  # save_pretrained empties the dict it is given
        tokenizer.save_pretrained(final)
        report = {
            "world_size": world,
            "ddp_losses": ddp_losses,
            "fsdp_losses": fsdp_losses,
            "local_shard_shape": list(shard.to_local().shape),
            "full_shape": list(shard.shape),
            "max_weight_diff_vs_ddp": max((full[k] - v).abs().max().item() for k, v in reference.items()),
        }
        (out_dir / "fsdp2.json").write_text(json.dumps(report), encoding="utf-8")
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
