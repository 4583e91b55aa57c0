"""Tests of the report: metrics.csv, metrics.md and the plot with classifier scales."""
import csv

from etils import epath

from cfg_jax.evaluation import report


def test_write_results_with_classifier_scales(tmp_path):
  rows = [dict(w=w, classifier_scale=s, fid=10. - w, inception_score=2. + w,
               inception_score_std=0.1, precision=0.5, recall=0.4, accuracy=float("nan"),
               num_samples=4) for s in (1., 3.) for w in (0., 1.)]
  report.write_results(rows, epath.Path(tmp_path), title="t")
  with open(tmp_path / "metrics.csv") as f:
    written = list(csv.DictReader(f))
  assert [(r["w"], r["classifier_scale"], r["accuracy"]) for r in written] == [
      ("0.0", "1.0", ""), ("1.0", "1.0", ""), ("0.0", "3.0", ""), ("1.0", "3.0", "")]
  assert "| 1 | 3 | 9 | 3 ± 0.1 | 0.500 | 0.400 | – |" in (tmp_path / "metrics.md").read_text()
  assert (tmp_path / "fid_vs_is.png").exists()
