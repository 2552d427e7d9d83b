"""Prepare a dataset without training, and look at it.

python -m train.prepare data.source=chats.jsonl data.output_dir=data/chats  # any local file or folder
python -m train.prepare data=ultrachat data.output_dir=data/ultrachat      # the hub preset (1% of train_sft)
python -m train.prepare data.source=sharegpt.json preview=3                 # + 3 examples, trained tokens marked
python -m train.prepare +profile=a100                                       # with that profile's tokenizer and max length

Takes the training config (conf/prepare.yaml extends conf/train.yaml), so the tokenizer, the
chat template, max_length and the loss mask are the ones `python -m train` would use.
"""

import hydra
from omegaconf import DictConfig

from train.config import register_configs
from train.errors import one_line_user_errors

register_configs()


@hydra.main(version_base="1.3", config_path="../../conf", config_name="prepare")
@one_line_user_errors  # a bad data row or setting: one line on stderr, exit status 2
def main(cfg: DictConfig) -> None:
    from train.prepare.cli import prepare_and_report

    prepare_and_report(cfg)


if __name__ == "__main__":
    main()
