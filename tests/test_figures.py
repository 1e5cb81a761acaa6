import hashlib
import json

import numpy as np
import pyarrow as pa
import pytest

from saddlestudy import config, figures, store

CENSUS_FIGURES = (*config.DEFAULT_FIGURES, "census", "census_strict", "point_classes")


def fake_study(root, seed=0, figures_table=None):
    """A study shaped like the sweep's output, with known spectra (and ``figures_table`` as
    its config's [figures], if given)."""
    rng = np.random.default_rng(seed)
    st = store.Store(root, "fake")
    with st.lock():
        cfg = {} if figures_table is None else {"figures": figures_table}
        st.prepare(cfg, "cafe", {"config_hash": "cafe"})
        for P in (20, 60, 200):
            rows, spectra = [], {}
            for i in range(12):
                loss = float(rng.uniform(0.0, 1.0))
                neg = int(round(0.3 * loss * P))
                eig = np.concatenate([-rng.uniform(0.01, 1, neg), rng.uniform(0.01, 2, P - neg)])
                flat, conv = i % 6 == 5, i % 6 != 5 and i % 4 != 3
                row_id = f"c{P}:{i}"
                rows.append({
                    "row_id": row_id, "study": "fake", "config_hash": "cafe", "num_params": P,
                    "depth": 1, "widths": str(P), "activation": "tanh",
                    "optimizer": "adam" if i % 2 else "irprop-", "start_kind": "end",
                    "train_loss": loss, "loss": loss, "num_negative@1e-5": neg,
                    "num_positive@1e-5": P - neg, "num_zero@1e-5": 0, "converged": conv,
                    "gradient_flat": flat, "grad_norm_sq": 1e-12 if conv else 1e-7,
                })  # fmt: skip
                spectra[f"{row_id}/eigenvalues"] = np.sort(eig)
            st.write_cell(f"c{P}", pa.Table.from_pylist(rows), spectra)
    return st.dir


@pytest.mark.e2e  # every figure of a study, through the command line
def test_study_figures_are_written_and_deterministic(tmp_path):
    table = {"cutoffs": [1e-10, 1e-6], "draw": list(CENSUS_FIGURES), "reference": "none"}
    directory = fake_study(tmp_path / "results", figures_table=table)
    assert figures.main([str(directory), "--out", str(tmp_path / "a")]) == 0
    assert figures.main([str(directory), "--out", str(tmp_path / "b")]) == 0
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == sorted(f"{stem}.{ext}" for stem in CENSUS_FIGURES for ext in ("png", "pdf"))
    for name in names:
        a, b = (tmp_path / d / name for d in "ab")
        assert a.stat().st_size > 10_000
        digest_a, digest_b = (hashlib.sha256(f.read_bytes()).digest() for f in (a, b))
        assert digest_a == digest_b, name


def test_missing_results_is_a_clear_error(tmp_path, capsys):
    assert figures.main([str(tmp_path / "nothing")]) == 2
    assert "no results" in capsys.readouterr().err


def test_unknown_format_is_refused(tmp_path):
    import matplotlib.pyplot as plt

    with pytest.raises(ValueError, match="format"):
        figures.save_figure(plt.figure(), tmp_path / "x", formats=("bmp",))


@pytest.mark.e2e  # every figure of a study, through the command line
def test_cutoffs_come_from_the_study_config_unless_given(tmp_path, monkeypatch, capsys):
    directory = fake_study(tmp_path / "results")
    settings = figures.study_settings(directory)  # no [figures] table
    assert settings.cutoffs == figures.DEFAULT_CUTOFFS and settings.draw == config.DEFAULT_FIGURES
    assert "predates [figures] cutoffs, draw, reference" in settings.note
    (directory / "config.json").write_text('{"figures": {"cutoffs": [1e-10, 0.001, 1.0]}}')
    assert figures.study_settings(directory).cutoffs == (1e-10, 1e-3, 1.0)
    drawn = []
    real = figures.index_vs_loss_figure

    def spy(df, cutoffs=None, **kwargs):
        drawn.append(tuple(cutoffs) if cutoffs else None)
        return real(df, cutoffs=cutoffs, **kwargs)

    monkeypatch.setattr(figures, "index_vs_loss_figure", spy)
    assert figures.main([str(directory), "--out", str(tmp_path / "a")]) == 0
    assert drawn == [None, (1e-10, 1e-3, 1.0)]
    assert figures.main([str(directory), "--out", str(tmp_path / "b"), "--cutoffs", "1e-4"]) == 0
    assert drawn[-1] == (1e-4,)
    assert "note: " in capsys.readouterr().err  # the defaults are said, in one line
    (directory / "config.json").write_text("{broken")
    assert figures.main([str(directory), "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert "config.json is not valid JSON" in err and len(err.strip().splitlines()) == 1


def test_spectral_density_spans_the_curves_it_draws():
    import pandas as pd

    # Two points of one P: the lower-loss one is drawn; the other's wide spectrum may not
    # stretch the axis.
    df = pd.DataFrame({
        "row_id": ["a", "b"], "num_params": [3, 3], "loss": [0.1, 0.5],
        "status": ["converged", "converged"], "start_kind": ["end", "end"],
        "study": ["fake", "fake"], "config_hash": ["cafe", "cafe"],
    })  # fmt: skip
    spectra = {"a": np.array([-1.0, 0.5, 2.0]), "b": np.array([-100.0, 0.0, 100.0])}
    fig = figures.spectral_density_figure(df, spectra)
    ax = fig.axes[0]
    assert len(ax.lines) == 1
    lo, hi = ax.get_xlim()
    assert -1.5 < lo < -1.0 and 2.0 < hi < 2.5


def test_non_positive_cutoffs_are_refused(tmp_path, capsys):
    directory = fake_study(tmp_path / "results")
    assert figures.main([str(directory), "--out", str(tmp_path / "a"), "--cutoffs", "0"]) == 2
    assert "--cutoffs must be > 0" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()  # refused before drawing anything


def test_spectral_density_draws_only_complete_spectra_and_weighted_densities():
    import pandas as pd

    # Per P its lowest-loss point: P = 3 has all its eigenvalues; P = 50 only 3 Ritz values
    # (never drawn as if they were the spectrum) and, at a worse loss, an SLQ density.
    df = pd.DataFrame({
        "row_id": ["a", "b", "c"], "num_params": [3, 50, 50], "loss": [0.1, 0.2, 0.3],
        "status": ["converged"] * 3, "start_kind": ["end"] * 3,
        "study": ["fake"] * 3, "config_hash": ["cafe"] * 3,
    })  # fmt: skip
    grid = np.linspace(-1.0, 3.0, 101)
    density = np.exp(-0.5 * (grid - 1.0) ** 2) / np.sqrt(2 * np.pi)
    spectra = {"a": np.array([-1.0, 0.5, 2.0]), "b": np.array([-40.0, 0.0, 40.0])}
    fig = figures.spectral_density_figure(df, spectra, {"c": (grid, density)})
    ax = fig.axes[0]
    assert [line.get_label().split(" (")[0] for line in ax.lines] == ["P = 3", "P = 50, SLQ"]
    np.testing.assert_array_equal(ax.lines[1].get_ydata(), density)  # as stored, weighted
    lo, hi = ax.get_xlim()
    assert lo > -2 and hi < 4  # the Ritz values at +-40 did not stretch the axis


def test_points_without_exact_counts_are_drawn_as_intervals(tmp_path):
    import pandas as pd
    from matplotlib.collections import LineCollection

    from saddlestudy import analysis

    # P = 100: two exact points and two whose bounds are [1, 30] and [0, 50] negatives.
    rows = [(1e-12, 0.1, 5, 5, 5), (1e-12, 0.2, 8, 8, 8), (1e-12, 0.3, None, 1, 30),
            (1e-12, 0.4, None, 0, 50)]  # fmt: skip
    df = analysis.with_status(pd.DataFrame([{
        "row_id": f"r{i}", "num_params": 100, "depth": 1, "widths": "100", "activation": "tanh",
        "optimizer": "adam", "start_kind": "end", "train_loss": loss, "loss": loss,
        "num_negative@1e-5": neg, "num_negative_lo@1e-5": lo, "num_negative_hi@1e-5": hi,
        "num_positive@1e-5": None if neg is None else 100 - neg, "converged": True,
        "gradient_flat": False, "grad_norm_sq": g, "study": "fake", "config_hash": "cafe",
    } for i, (g, loss, neg, lo, hi) in enumerate(rows)]))  # fmt: skip
    fig = figures.index_vs_loss_figure(df)
    bars = [c for c in fig.axes[0].collections if isinstance(c, LineCollection)]
    assert len(bars) == 1
    segments = sorted(tuple(map(tuple, s)) for s in bars[0].get_segments())
    assert segments == [((0.3, 0.01), (0.3, 0.3)), ((0.4, 0.0), (0.4, 0.5))]
    # The fraction of minima counts only certified minima; the undetermined one is shown apart.
    fig = figures.scaling_figure(df)
    left = fig.axes[1]
    assert "undetermined" in left.get_title()
    assert left.lines[-1].get_ydata()[0] == pytest.approx(0.25)  # 0 minima + 1 undetermined
    paths = figures.save_figure(figures.minimum_ratio_figure(df), tmp_path / "m")
    assert paths[0].stat().st_size > 10_000


def test_fractions_in_the_scaling_figure_have_exact_intervals():
    import pandas as pd

    from saddlestudy import analysis

    # P = 10: 3 of 3 starts converged, all minima; P = 20: 0 of 4 converged.
    rows = [(10, True, 0)] * 3 + [(20, False, 2)] * 4
    df = analysis.with_status(pd.DataFrame([{
        "num_params": P, "depth": 1, "widths": str(P), "activation": "tanh", "optimizer": "adam",
        "start_kind": "end", "train_loss": 0.1, "loss": 0.1, "num_negative@1e-5": neg,
        "num_positive@1e-5": P - neg, "converged": conv, "gradient_flat": False,
        "grad_norm_sq": 1e-12 if conv else 1e-7, "study": "s", "config_hash": "h",
    } for P, conv, neg in rows]))  # fmt: skip
    fig = figures.scaling_figure(df)
    conv_ax, left = fig.axes[0], fig.axes[1]

    def bars(ax):  # x -> (lower end, upper end) of each error bar
        (container,) = ax.containers
        segments = [s for s in container.lines[2][0].get_segments() if np.ndim(s) == 2]
        return {seg[0, 0]: (seg[0, 1], seg[1, 1]) for seg in segments}

    # Clopper-Pearson 95%: 3 of 3 -> [0.292, 1], 0 of 4 -> [0, 0.602] (binomial tables)
    assert bars(conv_ax)[10] == pytest.approx((0.292, 1.0), abs=5e-4)
    assert bars(conv_ax)[20] == pytest.approx((0.0, 0.602), abs=5e-4)
    assert bars(left)[10] == pytest.approx((0.292, 1.0), abs=5e-4)


def test_point_class_figure_names_every_class_in_its_legend_with_exact_intervals():
    import pandas as pd

    from saddlestudy import analysis

    # depth 1: 2 of 2 starts critical; depth 2: 1 gradient-flat and 3 budget. Every class
    # that occurs at some depth is drawn (and named) in every panel.
    rows = [(1, 50, "critical")] * 2 + [(2, 60, "gradient_flat")] + [(2, 60, "budget")] * 3
    df = pd.DataFrame([{
        "num_params": P, "depth": depth, "start_kind": "end", "point_class": kind,
        "study": "s", "config_hash": "h",
    } for depth, P, kind in rows])  # fmt: skip
    df["point_class"] = pd.Categorical(df["point_class"], analysis.POINT_CLASSES)
    fig = figures.point_class_figure(df)
    panels = [ax for ax in fig.axes if ax.get_title().startswith("depth")]
    labels = [t.get_text() for t in panels[0].get_legend().get_texts()]
    assert labels == ["critical", "gradient_flat", "budget"]

    def point_and_bar(ax, kind):  # (fraction, (lower end, upper end)) at the panel's one P
        (container,) = [c for c in ax.containers if c.get_label() == kind]
        (segment,) = container.lines[2][0].get_segments()
        return container.lines[0].get_ydata()[0], tuple(segment[:, 1])

    # Clopper-Pearson 95 %: 3 of 4 -> [0.194, 0.994], 0 of 4 -> [0, 0.602] (binomial tables)
    fraction, bar = point_and_bar(panels[1], "budget")
    assert fraction == pytest.approx(0.75) and bar == pytest.approx((0.194, 0.994), abs=5e-4)
    fraction, bar = point_and_bar(panels[1], "critical")
    assert fraction == 0 and bar == pytest.approx((0.0, 0.602), abs=5e-4)


def test_the_study_says_which_figures_it_gets(tmp_path, capsys):
    table = {"cutoffs": [1e-10, 1e-6], "draw": ["scaling", "census"], "reference": "none"}
    directory = fake_study(tmp_path / "results", figures_table=table)
    paths = figures.study_figures(directory, tmp_path / "b", formats=("png",))
    assert sorted(p.name for p in paths) == ["census.png", "scaling.png"]
    only = figures.study_figures(directory, tmp_path / "c", formats=("png",), draw=["scaling"])
    assert [p.name for p in only] == ["scaling.png"]
    # what the rows cannot give is refused in one line, before anything is drawn
    with pytest.raises(figures.StudyConfigError, match="no loss-level starts"):
        figures.study_figures(directory, tmp_path / "d", draw=["matched_loss"])
    bad = {**table, "reference": "linear_autoencoder"}
    (directory / "config.json").write_text(json.dumps({"figures": bad}))
    with pytest.raises(figures.StudyConfigError, match="not one deep linear autoencoder"):
        figures.study_figures(directory, tmp_path / "e")
    assert not (tmp_path / "d").exists() and not (tmp_path / "e").exists()


def test_the_figures_table_is_checked_and_not_hashed():
    base = {"study": {"name": "x"}, "data": [{"name": "digits"}],
            "optimizer": [{"name": "adam", "learning_rate": 0.01}]}  # fmt: skip
    plain = config.resolve(base)
    assert plain.figures.draw == config.DEFAULT_FIGURES
    drawn = config.resolve({**base, "figures": {"draw": ["census", "scaling"]}})
    assert drawn.figures.draw == ("scaling", "census")  # config.FIGURES order
    assert config.config_hash(drawn) == config.config_hash(plain)
    with pytest.raises(config.ConfigError, match=r"^figures.draw: unknown figure 'histogram'"):
        config.resolve({**base, "figures": {"draw": ["histogram"]}})
    with pytest.raises(config.ConfigError, match=r"^figures.reference: unknown 'teacher'"):
        config.resolve({**base, "figures": {"reference": "teacher"}})
