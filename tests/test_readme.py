"""README's library example is executed, so the documentation cannot rot."""

import re
from pathlib import Path

import jax

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_blocks_run():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README.md has no python example"
    previous = jax.config.jax_enable_x64
    try:
        for block in blocks:
            namespace: dict = {}
            exec(compile(block, str(README), "exec"), namespace)  # noqa: S102
        spectrum = namespace["spectrum"]
        assert spectrum.num_params == namespace["config"].num_params
        assert (
            int(spectrum.num_negative + spectrum.num_zero + spectrum.num_positive)
            == spectrum.num_params
        )
    finally:
        jax.config.update("jax_enable_x64", previous)
