"""README's library example is executed, so the documentation cannot rot."""

import re
from pathlib import Path

import pytest
from helpers import x64_mode

pytestmark = pytest.mark.e2e  # README's code on a finished study

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_blocks_run(tiny_study, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) >= 2, "README.md lost its python examples"
    monkeypatch.chdir(tiny_study.parents[1])  # README reads results/default
    namespace: dict = {}
    with x64_mode(None):  # the first block switches float64 on
        for block in blocks:
            exec(compile(block, str(README), "exec"), namespace)  # noqa: S102
    assert namespace["table"].num_rows == len(namespace["df"]) > 0
    spectrum = namespace["spectrum"]
    assert spectrum.num_params == namespace["config"].num_params
    assert (
        int(spectrum.num_negative + spectrum.num_zero + spectrum.num_positive)
        == spectrum.num_params
    )


def test_readme_names_the_fields_the_result_types_have():
    # "returns a `CriticalPoint` (`params`, `loss`, ...)": every name in backticks inside the
    # parenthesis after a result type must be a field (or method) of that type.
    import saddlestudy

    text = " ".join(README.read_text().split())
    checked = 0
    for name in ("CriticalPoint", "Spectrum", "Inertia"):
        cls = getattr(saddlestudy, name)
        for listing in re.findall(rf"`{name}` \(((?:[^()]|\([^()]*\))*)\)", text):
            for field in re.findall(r"`(\w+)`", listing):
                assert hasattr(cls, field) or field in cls.__dataclass_fields__, (name, field)
                checked += 1
    assert checked >= 9  # the CriticalPoint listing at least
