"""Results files shared by the benchmarks: `<date>-<hardware>[-n].json` plus a markdown twin.

A second run on the same day and hardware gets `-2`, `-3`, ...: results are never overwritten.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path


def _fmt(value, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


def markdown_table(columns: list[tuple[str, str, str]], rows: list[dict]) -> str:
    """columns: (header, row key, format spec); a missing value prints as `-`."""
    lines = [
        "| " + " | ".join(h for h, _, _ in columns) + " |",
        "|" + "|".join("---" for _ in columns) + "|",
    ]
    for row in rows:
        cells = [
            _fmt(row.get(key), spec) if spec else str(row.get(key, "") or "-") for _, key, spec in columns
        ]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def write_results(results: dict, markdown: str, results_dir: str | Path, slug: str, kind: str = "") -> Path:
    """Write `<date>-<slug>.json` and `.md` into `results_dir`; return the JSON path."""
    out = Path(results_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{dt.date.today().isoformat()}-{kind + '-' if kind else ''}{slug}"
    for n in range(1, 1000):
        path = out / (stem + (f"-{n}" if n > 1 else "") + ".json")
        try:
            with path.open("x", encoding="utf-8") as f:  # exclusive: never overwrite a run
                json.dump(results, f, indent=2, default=str)
                f.write("\n")
        except FileExistsError:
            continue
        path.with_suffix(".md").write_text(markdown + "\n", encoding="utf-8")
        return path
    raise RuntimeError(f"{out}: 999 results files named {stem}-*; move some away")


def publish(results: dict, markdown: str, results_dir: str | Path, kind: str) -> dict:
    """Write the results beside earlier runs (`write_results`, named by the hardware), print the
    table and where it went; `results` gains `json_path`."""
    from bench.metrics import hardware_slug

    path = write_results(results, markdown, results_dir, hardware_slug(results["hardware"]), kind=kind)
    results["json_path"] = str(path)
    print(markdown)
    print(f"\nresults: {path}\n         {path.with_suffix('.md')}")
    return results
