"""The job table of `python -m train -m ... target=azureml`.

Hydra's basic launcher calls the entry point once per sweep point, so each point submits its
own job and writes its record (`azureml_job.json`) in its own folder of the sweep directory.
This Hydra callback (conf/hydra/default.yaml) reads them after the last point and prints one
line per job; dry-run points are listed with their YAML folder. Local sweeps print nothing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from train.azureml import RECORD


def job_table(sweep_dir: Path) -> list[str]:
    """One line per sweep point that went to Azure ML: point, job name, overrides, studio URL."""
    points = [
        p
        for p in sorted(sweep_dir.iterdir(), key=lambda p: (len(p.name), p.name))
        if (p / RECORD).is_file() or (p / "azureml" / "job.yaml").is_file()
    ]
    if not points:  # a local sweep: nothing to list, nothing to import
        return []
    import yaml

    from train.azureml.job import carried_overrides

    rows = []
    for point in points:
        overrides_file = point / ".hydra" / "overrides.yaml"
        given = yaml.safe_load(overrides_file.read_text(encoding="utf-8")) if overrides_file.is_file() else []
        overrides = " ".join(carried_overrides(given or [], set()))  # the training run's own
        if (point / RECORD).is_file():
            record = json.loads((point / RECORD).read_text(encoding="utf-8"))
            rows.append((point.name, record["job_name"], overrides, record["studio_url"]))
        else:
            rows.append((point.name, "(dry run)", overrides, str(point / "azureml")))
    widths = [max(len(r[i]) for r in [("point", "job", "overrides", ""), *rows]) for i in range(3)]
    header = ("point", "job", "overrides", "studio / YAML")
    return [
        "  ".join(cell.ljust(widths[i]) if i < 3 else cell for i, cell in enumerate(row))
        for row in [header, *rows]
    ]


class AzureMLJobTable(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        lines = job_table(sweep_dir) if sweep_dir.is_dir() else []
        if lines:
            print(f"\nAzure ML jobs of this sweep ({sweep_dir}):\n" + "\n".join(lines), flush=True)
