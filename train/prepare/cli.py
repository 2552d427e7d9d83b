"""What `python -m train.prepare` does, as a plain function (also used by tests)."""

from __future__ import annotations

from omegaconf import DictConfig

from train import data, lengths, model
from train.gguf_model import resolve_gguf
from train.prepare import preview


def prepare_and_report(cfg: DictConfig) -> data.PreparedData:
    """Prepare `cfg.data` with the model's tokenizer, print counts and stats (and a preview)."""
    resolve_gguf(cfg.model)  # model.gguf_file (model=smollm2): converted once into a model directory
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
    print(length_advice(cfg, stats, lengths.model_context(cfg.model, tokenizer)))
    print(f"next: python -m train {' '.join(_overrides())}  (train on it; the preparation is reused)")
    return prepared


def length_advice(cfg: DictConfig, stats: dict, context: int | None) -> str:
    """How max_length sits between the data's lengths and the model's limit, and what to set."""
    over = stats.get("over_max_length") or 0
    if lengths.configured(cfg) is None:  # from the data: rows kept up to the model's context
        line = f"  max_length     {lengths.training_length(cfg, stats).describe()}"
        if over:
            line += (
                f"\n  {over} of {stats['rows_read']} conversations were longer than {stats.get('max_length')} "
                f"tokens, the model's context: data.length_policy={stats.get('length_policy')} (stats.json counts each)"
            )
        return line
    tokens, max_length = stats.get("tokens") or {}, stats.get("max_length")
    limit = f"the model takes up to {context}" if context else "the model's limit is unknown"
    line = f"  max_length     {max_length} tokens ({limit}; kept rows: p95 {tokens.get('p95')}, max {tokens.get('max')})"
    if over and max_length and (context is None or max_length < context):
        line += (
            f"\n  {over} of {stats['rows_read']} conversations were longer than max_length: raise "
            f"sft.max_length (up to {context or 'the model limit'}; memory grows with it), or "
            "sft.max_length=null to take it from the data, to keep them whole"
        )
    return line


def _overrides() -> list[str]:
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    return [o for o in HydraConfig.get().overrides.task if not o.startswith(("preview=", "data.output_dir="))]
