"""Fine-tune a chat model with TRL's SFTTrainer, configured by Hydra.

python -m train                                  # tiny offline model, bundled data, CPU
python -m train model=smollm2                    # SmolLM2-135M-Instruct, a real model, on this CPU
python -m train +profile=a100                    # Phi-3.5-mini on ultrachat, one A100
python -m train +profile=24gb                    # QLoRA on a 24 GB consumer GPU
python -m train peft=lora sft.learning_rate=2e-4 # any SFTConfig field as sft.<field>
python -m train -m sft.learning_rate=1e-3,3e-3   # a sweep: one run per value
python -m train --cfg job                        # print the composed config and exit
python -m train +profile=a100 estimate=true      # memory, time and cost before launching
python -m train +profile=a100 target=azureml     # the same config as an Azure ML command job
"""

import hydra
from omegaconf import DictConfig

from train.config import TargetName, register_configs
from train.errors import one_line_user_errors
from train.gguf_model import resolve_gguf

register_configs()


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
@one_line_user_errors  # a bad data row or setting: one line on stderr, exit status 2
def main(cfg: DictConfig) -> float | None:
    resolve_gguf(cfg.model)  # model.gguf_file: every path below sees a plain model directory
    if cfg.estimate:  # memory, tokens, time and cost of this config; loads no weights
        from train.estimate import estimate

        estimate(cfg)
        return None
    if (
        cfg.target.name == TargetName.azureml
    ):  # submit the same config as a job that runs it with target=local
        from train.azureml.submit import submit

        submit(cfg)
        return None
    from train.recipe import run  # heavy imports after Hydra has parsed the command line

    metrics = run(cfg)
    return metrics.get("eval_loss")  # the value a Hydra sweeper minimises


if __name__ == "__main__":
    main()
