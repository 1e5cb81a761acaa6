"""scripts/reproduce_paper.sh --quick: every study and figure end to end, and what they show."""

import numpy as np
import pytest

from saddlestudy import analysis, config

pytestmark = pytest.mark.e2e  # scripts/reproduce_paper.sh --quick

STUDIES = ["linear_autoencoder", "index_vs_loss", "minimum_ratio", "scaling", "optimizers"]
FIGURES = ["index_vs_loss", "index_vs_loss_cutoffs", "scaling", "minimum_ratio", "spectral_density"]


def test_every_study_and_figure_is_written(paper_quick):
    results, figures, log = paper_quick
    assert (figures / "lecture_error_surface.png").is_file()
    for study in STUDIES:
        df = analysis.load(results / study)
        cfg = config.load(study, quick=True)
        assert set(df["config_hash"]) == {config.config_hash(cfg)}  # the quick version ran
        assert len(df) > 0 and f"{study}:" in log
        for name in FIGURES:
            for ext in ("png", "pdf"):
                path = figures / study / f"{name}.{ext}"
                assert path.is_file() and path.stat().st_size > 1000, path


def test_linear_autoencoder_points_are_exact_critical_points(paper_quick):
    # Frye's claim in miniature: what Newton-MR reports at |grad L|^2 < 1e-10 is an exact
    # critical point, with the exact loss and index.
    results, _, _ = paper_quick
    df = analysis.load(results / "linear_autoencoder")
    ref = analysis.linear_autoencoder_reference(range(1, 17), 4)
    exact = set(zip(np.round(ref["loss"], 6), ref["num_negative"]))
    conv = df[(df["finder_method"] == "newton_mr") & df["converged"]]
    assert len(conv) >= 4
    for loss, neg in zip(conv["loss"], conv["num_negative@1e-5"]):
        assert (round(float(loss), 6), int(neg)) in exact, (loss, neg)
    assert conv["loss"].min() == pytest.approx(39.0, abs=1e-8)  # the global minimum is found
    assert not df[df["finder_method"] == "gradnorm"]["converged"].all()  # the loose finder


def test_minimum_ratio_study_measures_where_training_stopped(paper_quick):
    results, _, _ = paper_quick
    df = analysis.load(results / "minimum_ratio")
    assert set(df["finder_method"]) == {"none"} and (df["iterations"] == 0).all()
    assert set(df["optimizer"]) == {"irprop-", "adam", "sgd"}
    assert df["minimum_ratio"].between(0, 1).all()


def test_unknown_option_is_refused():
    import subprocess
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "reproduce_paper.sh"
    run = subprocess.run(["bash", str(script), "--fast"], capture_output=True, text=True)
    assert run.returncode == 2 and "unknown option --fast" in run.stderr


def test_spectral_density_without_converged_points_uses_end_points(paper_quick):
    from saddlestudy import figures, store

    results, _, _ = paper_quick
    df = analysis.load(results / "minimum_ratio")
    assert not df["converged"].any()  # finder "none": nothing is certified
    spectra = {
        r: store.load_spectrum(results, "minimum_ratio", r)["eigenvalues"] for r in df["row_id"]
    }
    fig = figures.spectral_density_figure(df, spectra)
    assert len(fig.axes[0].lines) == df["num_params"].nunique()  # one curve per P


def test_summarize_results_prints_every_study(paper_quick, capsys, tmp_path):
    from scripts import summarize_results as module

    results, _, _ = paper_quick
    assert module.main([str(results)]) == 0
    out = capsys.readouterr().out
    for study in STUDIES:
        assert f"### {study}" in out
    assert "| newton_mr | converged |" in out  # the autoencoder's certified points
    assert module.main([str(tmp_path)]) == 2
    assert "no study linear_autoencoder" in capsys.readouterr().err
