"""What `python -m train.prepare` does, as a plain function (also used by tests)."""

from __future__ import annotations

from omegaconf import DictConfig

from train import data, model
from train.prepare import preview


def prepare_and_report(cfg: DictConfig) -> data.PreparedData:
    """Prepare `cfg.data` with the model's tokenizer, print counts and stats (and a preview)."""
    data.refuse_demo_model_on_own_data(cfg)
    tokenizer = model.load_tokenizer(cfg.model)
    prepared = data.prepare_for(cfg, tokenizer)
    stats = prepared.stats
    print(
        f"{'reused' if prepared.reused else 'wrote'} {prepared.dir}/train.jsonl ({stats['train']} conversations) "
        f"and test.jsonl ({stats['test']}); stats in stats.json"
    )
    if cfg.preview:
        print(preview.render(cfg, tokenizer, prepared, cfg.preview))
    else:
        print(preview.stats_summary(stats, prepared.dir))
    return prepared
