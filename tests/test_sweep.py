import jax
import pytest

from saddlestudy import sweep

TINY = [
    "--widths",
    "1",
    "3",
    "--replicas",
    "2",
    "--steps",
    "100",
    "--num-samples",
    "64",
    "--pca-dim",
    "4",
]


def test_main_runs_end_to_end_and_prints_the_table(capsys):
    previous = jax.config.jax_enable_x64
    try:
        assert sweep.main(TINY) == 0
    finally:
        jax.config.update("jax_enable_x64", previous)
    out = capsys.readouterr().out
    lines = [
        line
        for line in out.splitlines()
        if line.strip() and line.split()[0].isdigit() and "end points" not in line
    ]
    assert len(lines) == 4  # 2 widths x 2 replicas
    assert "#neg" in out and "#zero" in out and "#pos" in out and "4 end points" in out
    # P for 4 inputs -> w -> 10 classes: 4w + w + 10w + 10.
    assert {int(line.split()[1]) for line in lines} == {15 * 1 + 10, 15 * 3 + 10}


def test_run_rows_are_consistent(x64):
    config = sweep.parse_args(TINY)
    rows = sweep.run(config)
    assert len(rows) == 4
    for row in rows:
        assert row["num_negative"] + row["num_zero"] + row["num_positive"] == row["num_params"]
        assert row["loss"] > 0 and row["grad_norm"] >= 0 and row["spectrum_ok"]
        assert row["minimum_ratio"] == pytest.approx(row["num_positive"] / row["num_params"])
    # Same config and seed, same numbers (timings aside).
    timing = {"train_seconds", "spectrum_seconds"}
    again = sweep.run(config)
    assert [{k: v for k, v in r.items() if k not in timing} for r in rows] == [
        {k: v for k, v in r.items() if k not in timing} for r in again
    ]


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--replicas", "0"], "replicas"),
        (["--widths", "0"], "widths"),
        (["--optimizer", "lbfgs"], "optimizer"),
        (["--learning-rate", "-1"], "learning_rate"),
        (["--zero-tol", "-1"], "zero_tol"),
        (["--activation", "cube"], "activation"),
    ],
)
def test_bad_options_fail_fast_with_one_line(capsys, argv, message):
    assert sweep.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_unknown_dataset_is_rejected_by_the_parser(capsys):
    with pytest.raises(SystemExit):
        sweep.main(["--dataset", "cifar"])
    assert "cifar" in capsys.readouterr().err
