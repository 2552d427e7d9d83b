"""Training benchmark: real tokens/s, step time, MFU and peak memory of a training config,
against the seed recipe's settings in the same run, and the optimisation knobs one by one.

python -m bench.train                                     # tiny model on this machine vs the seed recipe
python -m bench.train bench.ablations=[eager,padded,no_checkpointing,adamw_fused,compile]
python -m bench.train +profile=h100 model=phi3_mini_4k bench.weights=random bench.data=synthetic \\
    bench.ablations=[sdpa,fa2,liger,compile,selective_checkpointing,no_checkpointing]
python -m bench.train model=phi35_mini bench.weights=random bench.data=synthetic bench.dry_run=true

Results: bench/results/<date>-<hardware>.json and .md (conf/bench.yaml lists every key).
"""

import hydra
from omegaconf import DictConfig

from bench.config import register_bench_configs

register_bench_configs()


@hydra.main(version_base="1.3", config_path="../conf", config_name="bench")
def main(cfg: DictConfig) -> None:
    from bench.throughput import run_benchmark  # heavy imports after Hydra parsed the command line

    run_benchmark(cfg)


if __name__ == "__main__":
    main()
