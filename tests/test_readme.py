"""The README's set-up is what CI runs, with the versions constraints.txt pins."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _pins() -> dict[str, str]:
    lines = (ROOT / "constraints.txt").read_text().splitlines()
    return dict(line.split("==") for line in lines if "==" in line and not line.startswith("#"))


def test_quick_start_installs_exactly_what_ci_installs():
    quick_start = README[README.index("## Quick start"):README.index("## Generating")]
    command = re.search(r"```bash\n(python3 -m venv .*?)\n```", quick_start).group(1)
    readme_installs = [part.strip() for part in command.split("&&") if part.strip().startswith("pip install")]
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    ci_installs = [line.replace(" -q", "") for line in ci if line.startswith("pip install")]
    assert readme_installs == ci_installs


def test_every_torch_version_in_the_readme_is_the_pinned_one():
    pins = _pins()
    found = re.findall(r"\b(torch|torchvision)==([\w.+]+)", README)
    assert found and all(pins[name] == version for name, version in found), found
    # the pinned default-index torch is the CUDA build: the README says so and gives the CPU index
    assert "**CUDA build**" in README and "--index-url https://download.pytorch.org/whl/cpu" in README
