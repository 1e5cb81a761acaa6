"""The memory rule, and the plan it gives for a loss."""

import jax
import jax.numpy as jnp
import pytest

from saddlestudy import memory


def test_memory_plan():
    # P = 5,000 in float64 on a CPU with 8 GiB free: one Hessian (0.6 GB) per replica.
    replicas, chunk = memory.memory_plan(
        method="dense",
        num_params=5000,
        itemsize=8,
        vector_bytes=20 * 2**20,
        available_bytes=8 * 2**30,
        num_replicas=16,
    )
    assert replicas == 2 and chunk & (chunk - 1) == 0 and 1 <= chunk <= 5000  # 2 divides 16
    assert memory.memory_plan(
        method="dense", num_params=10, itemsize=8, vector_bytes=1, available_bytes=2**30
    ) == (1, 10)
    # SLQ: probes in flight bounded by their Krylov bases; Lanczos one vector at a time.
    slq = dict(
        method="slq",
        num_params=10**6,
        itemsize=4,
        vector_bytes=2**20,
        available_bytes=16 * 2**30,
        num_matvecs=100,
        num_probes=16,
        num_replicas=4,
    )
    assert memory.memory_plan(**slq, platform="gpu") == (4, 2)
    assert memory.memory_plan(**slq, platform="cpu") == (1, 1)  # one at a time on a CPU
    # The plan follows the device's total memory, not what happens to be free (which is
    # only checked against the fixed part): the same device gives the same program.
    busy = dict(slq, available_bytes=2**30, budget_bytes=16 * 2**30)
    assert memory.memory_plan(**busy, platform="gpu") == (4, 2)
    with pytest.raises(ValueError, match="lanczos"):
        memory.memory_plan(
            method="dense", num_params=10**5, itemsize=8, vector_bytes=1, available_bytes=2**30
        )


def quadratic_loss(p):
    return 0.5 * jnp.sum(p["w"] ** 2) + jnp.sum(p["b"]) ** 2


PARAMS = {"w": jnp.zeros((4, 5), jnp.float32), "b": jnp.zeros((3,), jnp.float32)}  # P = 23


@pytest.fixture
def small_device(monkeypatch):
    """A 20 kB device whose reads are counted; the plan cache is cleared before and after."""
    reads = []

    def device_memory_bytes(which):
        reads.append(which)
        return 20_000

    monkeypatch.setattr(memory, "device_memory_bytes", device_memory_bytes)
    memory._cached_plan.cache_clear()
    try:
        yield reads
    finally:
        memory._cached_plan.cache_clear()


def test_plan_of_a_loss_on_a_small_device(small_device):
    # The rule with V measured from the traced gradient (all its intermediates, twice).
    jaxpr = jax.make_jaxpr(jax.grad(quadratic_loss))(PARAMS).jaxpr
    expected = memory.memory_plan(
        method="dense",
        num_params=23,
        itemsize=4,
        vector_bytes=2 * memory._jaxpr_bytes(jaxpr),
        available_bytes=20_000,
        budget_bytes=20_000,
        num_replicas=3,
        platform=jax.devices()[0].platform,
    )
    assert memory.plan(quadratic_loss, PARAMS, "dense", num_replicas=3) == expected
    # Dense, float32: F = 3 P^2 * 4 B = 6.3 kB of Hessians per replica > 20 kB / 4: one
    # replica at a time, and the P = 23 basis vectors in several chunks.
    replicas, chunk = expected
    assert replicas == 1 and 1 <= chunk < 23
    # Cached per loss, shapes and settings: the device is read once per new setting.
    reads = len(small_device)
    assert memory.plan(quadratic_loss, PARAMS, "dense", num_replicas=3) == expected
    assert len(small_device) == reads
    # Only shapes and dtypes matter: abstract leaves give the same plan, from the cache.
    shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), PARAMS)
    assert memory.plan(quadratic_loss, shapes, "dense", num_replicas=3) == expected
    assert len(small_device) == reads
    # A Hessian that does not fit at all is refused.
    big = {"w": jnp.zeros((40, 40)), "b": jnp.zeros((3,))}
    with pytest.raises(ValueError, match="GiB"):
        memory.plan(quadratic_loss, big, "dense")


def test_plan_with_a_fixed_chunk_size():
    # The caller's chunk replaces the planned one; SLQ rounds it down to a divisor of the
    # probes (whole chunks: the map over them compiles its body once).
    assert memory.plan(quadratic_loss, PARAMS, "dense", chunk_size=7)[1] == 7
    assert memory.plan(quadratic_loss, PARAMS, "slq", 10, 16, chunk_size=5)[1] == 4
    assert memory.plan(quadratic_loss, PARAMS, "slq", 10, 12, chunk_size=5)[1] == 4
    assert memory.plan(quadratic_loss, PARAMS, "slq", 10, 12, chunk_size=100)[1] == 12
    # Lanczos runs one vector at a time.
    assert memory.plan(quadratic_loss, PARAMS, "lanczos", 10)[1] == 1


def test_device_memory_bytes():
    free, total = memory.device_memory_bytes("free"), memory.device_memory_bytes("total")
    assert isinstance(free, int) and isinstance(total, int)
    assert 0 < free <= total


def _warnings_of(fn, *args):
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fn(*args)
    return result, [str(w.message) for w in caught]


def test_memory_guesses_are_warned_once(monkeypatch):
    # The device's memory cannot be read: the fallback is used and said, once per process.
    import builtins
    import os

    memory._warn_once.cache_clear()

    def no_meminfo(*args, **kwargs):
        raise OSError("no /proc")

    def no_sysconf(name):
        raise ValueError(name)

    monkeypatch.setattr(builtins, "open", no_meminfo)
    monkeypatch.setattr(os, "sysconf", no_sysconf)
    size, said = _warnings_of(memory.device_memory_bytes, "total")
    assert size == memory.FALLBACK_MEMORY_BYTES and len(said) == 1 and "GiB" in said[0]
    assert _warnings_of(memory.device_memory_bytes, "total")[1] == []
    monkeypatch.undo()

    # A loss whose gradient cannot be traced on its own: the per-vector guess, said once.
    def untraceable(params):
        return jnp.sum(params) * float(jnp.sum(params))  # float() of a tracer fails

    params = jnp.ones(3)
    plan, said = _warnings_of(memory.plan, untraceable, params, "dense")
    assert plan[0] >= 1 and len(said) == 1 and "bytes per parameter" in said[0]
    memory._cached_plan.cache_clear()
    assert _warnings_of(memory.plan, untraceable, params, "dense")[1] == []
