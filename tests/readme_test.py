"""The README's set-up and test commands are exactly what CI runs, and the commands and
links of the docs point at modules, presets and files that exist."""
import importlib.util
import pathlib
import re

import pytest

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


DOCS = ["README.md", "launch/README.md", *(str(p.relative_to(ROOT))
                                           for p in sorted((ROOT / "docs").glob("*.md")))]


@pytest.mark.parametrize("doc", DOCS)
def test_the_docs_commands_name_modules_and_presets_that_exist(doc):
  text = (ROOT / doc).read_text()
  commands = " ".join(_bash_blocks(text))
  for module in re.findall(r"python3? -m ((?:cfg_jax|bench)[\w.]*)", commands):
    assert importlib.util.find_spec(module) is not None, (doc, module)
  for preset in re.findall(r"--config=(configs/\w+\.py)", commands):
    assert (ROOT / preset).is_file(), (doc, preset)


@pytest.mark.parametrize("doc", DOCS)
def test_the_docs_links_to_files_of_the_checkout_exist(doc):
  path = ROOT / doc
  for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text()):
    if "://" not in target:
      assert (path.parent / target).exists(), (doc, target)
