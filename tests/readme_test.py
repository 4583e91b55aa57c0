"""The README's set-up and test commands are exactly what CI runs."""
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _bash_blocks(text):
  return [b.strip() for b in re.findall(r"```bash\n(.*?)```", text, re.S)]


def test_ci_runs_the_readme_commands():
  blocks = _bash_blocks((ROOT / "README.md").read_text())
  setup, tests = blocks[0], blocks[1]
  assert setup.startswith("pip install") and "\n" not in setup
  assert tests.startswith("python -m pytest") and "\n" not in tests
  ci_lines = [l.strip() for l in (ROOT / ".ci" / "run").read_text().splitlines()]
  assert any(l.startswith(setup) for l in ci_lines), setup
  assert tests in ci_lines, tests
