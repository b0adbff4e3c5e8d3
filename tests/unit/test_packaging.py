"""Packaging and repository hygiene: metadata current setuptools accepts without warning, outputs ignored."""

import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_the_license_is_a_file_that_every_setuptools_reads_without_warning():
    """`license = {text = ...}` is deprecated by setuptools 77 (an error from 2027-02-18), and the SPDX string
    that replaces it is refused by the older setuptools the Docker image builds with (no index there): the
    license is the LICENSE file, which every setuptools ships by default, and the metadata names none."""
    assert "license" not in PYPROJECT["project"]
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    assert PYPROJECT["build-system"]["requires"] == ["setuptools>=64"]


@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(), reason="not a git checkout")
@pytest.mark.parametrize("name", ["lenet5.npz", "lenet5.svg", "lenet5.jsonl"])
def test_what_a_default_run_writes_is_ignored(name):
    """`python -m coordinator` in a checkout writes these beside it: none should show as a change to commit."""
    out = subprocess.run(["git", "check-ignore", "-q", name], cwd=ROOT)
    assert out.returncode == 0, f"{name} is not in .gitignore"
