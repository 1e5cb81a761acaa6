"""The package's public surface (saddlestudy/__init__.py)."""

import dataclasses
import subprocess
import sys

import jax

import saddlestudy
from saddlestudy import analysis, critical, data, inertia, optim, runner, train

RESULT_TYPES = (
    saddlestudy.CriticalPoint,
    saddlestudy.SaddleEscape,
    saddlestudy.GradientFlatTest,
    saddlestudy.Spectrum,
    saddlestudy.Eigenpairs,
    saddlestudy.TraceEstimate,
    saddlestudy.Inertia,
)


def test_every_export_resolves_and_the_docstring_lists_it():
    for name in saddlestudy.__all__:
        assert getattr(saddlestudy, name) is not None, name
        assert f"`{name}`" in saddlestudy.__doc__, f"{name} is not in the package docstring"
    assert saddlestudy.load_dataset is data.load_dataset
    assert saddlestudy.train_replicas is train.train_replicas
    assert saddlestudy.make_optimizer is optim.make_optimizer
    assert saddlestudy.hessian_inertia is inertia.hessian_inertia
    assert saddlestudy.escape_saddle is critical.escape_saddle
    assert saddlestudy.run_study is runner.run_study
    assert saddlestudy.load is analysis.load


def test_every_result_is_a_frozen_pytree_dataclass_with_to_dict():
    for cls in RESULT_TYPES:
        assert dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen, cls
        assert callable(getattr(cls, "to_dict", None)), cls
        fields = [f.name for f in dataclasses.fields(cls)]
        # Registered with JAX: flattening an instance gives its array fields, not one leaf.
        instance = cls(**{name: None for name in fields})
        assert jax.tree.leaves(instance) == [], cls
        assert not isinstance(instance, tuple), cls  # no NamedTuples: unpacking by position


def test_import_is_light():
    heavy = "{'ray', 'pandas', 'pyarrow', 'matplotlib'}"
    code = f"import sys, saddlestudy; print(sorted({heavy} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
