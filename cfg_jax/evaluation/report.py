"""The report of an evaluation: metrics.csv, metrics.md and the FID-against-IS plot.

One row per (EMA, classifier scale, w). The plot draws FID against IS with one curve per
(EMA, classifier scale) whose points are labelled by w (the paper's trade-off figure).
"""
from __future__ import annotations

import csv
import io
import math
from typing import Any, Sequence

from etils import epath

from cfg_jax import extras
from cfg_jax import files
from cfg_jax import visualization

COLUMNS = ("ema", "w", "classifier_scale", "fid", "inception_score", "inception_score_std",
           "precision", "recall", "accuracy", "num_samples")
CHECKPOINT_EMA = "checkpoint"  # the ema column of the checkpoint's own EMA


def _is_missing(value: Any) -> bool:
  """None (no classifier guidance) or NaN (no accuracy for Inception)."""
  return value is None or (isinstance(value, float) and math.isnan(value))


def write_results(rows: Sequence[dict[str, Any]], out: epath.PathLike, *, title: str,
                  notes: Sequence[str] = ()) -> None:
  """metrics.csv (a row per (EMA, w, s)), metrics.md (a table) and fid_vs_is.png in `out`."""
  rows = [{"ema": CHECKPOINT_EMA} | row for row in rows]
  out = epath.Path(out)
  out.mkdir(parents=True, exist_ok=True)
  buffer = io.StringIO()
  writer = csv.DictWriter(buffer, fieldnames=COLUMNS)
  writer.writeheader()
  for row in rows:
    writer.writerow({c: "" if _is_missing(row[c]) else row[c] for c in COLUMNS})
  files.write_text_atomic(out / "metrics.csv", buffer.getvalue())

  lines = [f"# Evaluation of {title}", "", *[f"- {note}" for note in notes], "",
           "| EMA | w | classifier scale | FID | IS | precision | recall | accuracy |",
           "|---|---:|---:|---:|---:|---:|---:|---:|"]
  for row in rows:
    scale, accuracy = row["classifier_scale"], row["accuracy"]
    lines.append(f"| {row['ema']} | {row['w']:g} | "
                 f"{'–' if _is_missing(scale) else f'{scale:g}'} | {row['fid']:.4g} | "
                 f"{row['inception_score']:.4g} ± "
                 f"{row['inception_score_std']:.2g} | {row['precision']:.3f} | "
                 f"{row['recall']:.3f} | {'–' if _is_missing(accuracy) else f'{accuracy:.3f}'} |")
  files.write_text_atomic(out / "metrics.md", "\n".join(lines) + "\n")
  _plot_fid_vs_is(rows, out / "fid_vs_is.png", title=title)


def require_matplotlib() -> Any:
  """matplotlib, or an error naming the `eval` extra: checked before a long evaluation."""
  return extras.require("matplotlib", extra="eval", purpose="The FID-against-IS plot")


def _plot_fid_vs_is(rows: Sequence[dict[str, Any]], path: epath.Path, *, title: str) -> None:
  matplotlib = require_matplotlib()
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt
  fig, ax = plt.subplots(figsize=(5.5, 4.5))
  curves = list(dict.fromkeys((row["ema"], row["classifier_scale"]) for row in rows))
  several_emas = len({ema for ema, _ in curves}) > 1
  for ema, scale in curves:
    curve = [row for row in rows if (row["ema"], row["classifier_scale"]) == (ema, scale)]
    label = "no classifier guidance" if scale is None else f"classifier scale {scale:g}"
    ax.plot([r["inception_score"] for r in curve], [r["fid"] for r in curve], marker="o",
            label=f"{ema}, {label}" if several_emas else label)
    for r in curve:
      ax.annotate(f"w={r['w']:g}", (r["inception_score"], r["fid"]), textcoords="offset points",
                  xytext=(4, 4), fontsize=8)
  ax.margins(0.15)  # room for the w labels
  ax.set_xlabel("Inception Score")
  ax.set_ylabel("FID")
  ax.set_title(f"{title}: FID against IS across w", fontsize=9)
  if len(curves) > 1:
    ax.legend(fontsize=8)
  fig.tight_layout()
  visualization.write_png(fig, path)
  plt.close(fig)
