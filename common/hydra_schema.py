"""Hydra overrides that add keys (`+key=value`, `++key=value`) held to the config's schema.

Hydra adds such keys even to a structured config by design (hydra PR 1549: "+" inserts new
values into Structured Configs), so `python -m train +sft.learning_rat=1` composed, printed
with `--cfg job`, created a run folder and died seconds later inside TRL. The schemas here are
closed: a key a dataclass node does not declare is refused when the config is composed, naming
the node's keys. Nodes typed as plain dicts (`logger.tags`, `environment_variables`,
`smoke_test.payload`) still take new keys.
"""

from __future__ import annotations

import dataclasses
import difflib

from hydra.errors import ConfigCompositionException
from omegaconf import DictConfig, OmegaConf


def check_added_key(cfg: DictConfig, key: str) -> None:
    """Raise ConfigCompositionException when `key` would add a field to a dataclass-typed node."""
    if key == "hydra" or key.startswith("hydra."):
        return  # Hydra's own node, by design open (hydra issue 1457)
    node, path = cfg, []
    for part in key.split("."):
        schema = OmegaConf.get_type(node)
        if dataclasses.is_dataclass(schema):
            fields = [f.name for f in dataclasses.fields(schema)]
            if part not in fields:
                where = ".".join(path) or "the config"
                close = difflib.get_close_matches(part, fields, n=1)
                hint = f"Did you mean '{'.'.join([*path, close[0]])}'? " if close else ""
                keys = f"Its keys: {', '.join(fields)}" if len(fields) <= 20 else "`--cfg job` lists its keys"
                raise ConfigCompositionException(
                    f"Could not add '{key}': {where} ({schema.__name__}) has no key '{part}'. {hint}{keys}"
                )
        if part not in node:
            return  # a new key under a plain dict node
        node, path = node[part], [*path, part]
        if not isinstance(node, DictConfig):
            return


def check_parent_not_null(cfg: DictConfig, key: str) -> None:
    """Raise ConfigCompositionException when a node on `key`'s path is null (OmegaConf would fail
    with a bare AssertionError): e.g. `dpo.beta=0.2` without `method=dpo`, which fills `dpo`."""
    parts = key.split(".")
    node = cfg
    for depth, part in enumerate(parts[:-1]):
        if not isinstance(node, DictConfig) or part not in node:
            return
        if node._get_node(part)._is_none():
            where = ".".join(parts[: depth + 1])
            raise ConfigCompositionException(
                f"Could not set '{key}': '{where}' is null in this config; choose the config group option "
                f"that fills it first (for dpo.* and kto.*: method=dpo or method=kto)"
            )
        node = node[part]


def refuse_keys_outside_the_schema() -> None:
    """Check every add override against the schema before Hydra applies it (idempotent)."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl

    apply = ConfigLoaderImpl._apply_overrides_to_config
    if getattr(apply, "checks_schema", False):
        return

    def apply_checked(overrides, cfg: DictConfig) -> None:
        for override in overrides:
            if override.package is None and (override.is_add() or override.is_force_add()):
                check_added_key(cfg, override.key_or_group)
            if override.package is None and not override.is_delete():
                check_parent_not_null(cfg, override.key_or_group)
        apply(overrides, cfg)

    apply_checked.checks_schema = True
    ConfigLoaderImpl._apply_overrides_to_config = staticmethod(apply_checked)
