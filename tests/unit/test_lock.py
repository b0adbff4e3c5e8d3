"""The image's lock file pins every runtime dependency, within pyproject's ranges, with hashes."""

import re
import tomllib
from pathlib import Path


ROOT = Path(__file__).resolve().parents[2]


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def lock() -> dict[str, tuple[str, list[str]]]:
    """name -> (pinned version, hashes), parsed from the requirements.lock lines."""
    text = (ROOT / "deploy" / "requirements.lock").read_text()
    pinned = {}
    for block in re.split(r"\n(?=\S)", re.sub(r"(?m)^#.*\n", "", text).strip()):
        m = re.match(r"([A-Za-z0-9_.-]+)==([^\s\\]+)", block)
        assert m, f"not an exact pin: {block[:60]!r}"
        pinned[canonical(m.group(1))] = (m.group(2), re.findall(r"--hash=sha256:([0-9a-f]{64})", block))
    return pinned


def test_lock_pins_exactly_the_runtime_dependencies_with_hashes():
    from packaging.requirements import Requirement

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pinned = lock()
    wanted = {canonical(Requirement(d).name): Requirement(d) for d in deps}
    assert set(pinned) == set(wanted)
    for name, req in wanted.items():
        version, hashes = pinned[name]
        assert req.specifier.contains(version), f"{name}=={version} outside {req.specifier}"
        assert hashes, f"{name} has no hashes"


def test_dockerfile_installs_from_the_lock_with_hashes_only():
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    installs = [line for line in dockerfile.splitlines() if "pip install" in line]
    assert any("--require-hashes" in i and "requirements.lock" in i and "--no-deps" in i for i in installs)
    assert all("--require-hashes" in i or "--no-index" in i for i in installs), installs
