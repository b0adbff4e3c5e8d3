"""Packaging and repository hygiene: metadata current setuptools accepts without warning, outputs ignored."""

import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_license_is_an_spdx_expression_with_a_setuptools_that_reads_it():
    # A table ({text = ...}) is deprecated by setuptools 77 and an error from 2027-02-18.
    assert PYPROJECT["project"]["license"] == "MIT"
    assert "setuptools>=77" in PYPROJECT["build-system"]["requires"][0]


@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(), reason="not a git checkout")
@pytest.mark.parametrize("name", ["lenet5.npz", "lenet5.svg", "lenet5.jsonl"])
def test_what_a_default_run_writes_is_ignored(name):
    """`python -m coordinator` in a checkout writes these beside it: none should show as a change to commit."""
    out = subprocess.run(["git", "check-ignore", "-q", name], cwd=ROOT)
    assert out.returncode == 0, f"{name} is not in .gitignore"
