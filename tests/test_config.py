import copy
import dataclasses
import tomllib

import pytest

from saddlestudy import config

BASE = {
    "study": {"name": "t", "seed": 1},
    "data": [{"name": "digits", "pca_dim": 4, "num_samples": 64}],
    "model": {"depth": [1, 2], "width": [3, 5], "activation": ["tanh", "relu"]},
    "optimizer": [
        {"name": "irprop-", "learning_rate": 0.01},
        {"name": "adam", "learning_rate": 0.01},
    ],
    "train": {"num_steps": 100, "record_every": 10, "replicas": 2, "snapshot_steps": [10]},
    "finder": {"method": ["newton_mr", "gradnorm"]},
}


def with_(path, value):
    raw = copy.deepcopy(BASE)
    node = raw
    *parents, last = path
    for p in parents:
        node = node[p]
    node[last] = value
    return raw


def test_resolve_fills_defaults_and_expand_makes_the_grid():
    cfg = config.resolve(copy.deepcopy(BASE))
    assert cfg.spectrum.zero_tols == (1e-8, 1e-6, 1e-5, 1e-4)
    assert cfg.spectrum.relative_tols == (1e-3,) and cfg.spectrum.method == "auto"
    assert cfg.spectrum.full_spectrum_max_params == 2000
    assert cfg.spectrum.dense_max_params == 0 and cfg.spectrum.max_matvecs == 3000
    assert cfg.dtype == "float64"
    cells = config.expand(cfg)
    assert len(cells) == 2 * 2 * 2 * 2 * 2  # depth x width x activation x optimizer x finder
    assert len({c.cell_id for c in cells}) == len(cells)
    assert cfg.train.num_starts == 2
    by = {(c.depth, c.width): c.num_params for c in cells}
    assert by[(1, 3)] == 4 * 3 + 3 + 3 * 10 + 10
    assert by[(2, 5)] == 4 * 5 + 5 + 5 * 5 + 5 + 5 * 10 + 10


def test_hash_and_cell_ids_are_stable_and_sensitive():
    a = config.resolve(copy.deepcopy(BASE))
    b = config.resolve(copy.deepcopy(BASE))
    assert config.config_hash(a) == config.config_hash(b)
    assert [c.cell_id for c in config.expand(a)] == [c.cell_id for c in config.expand(b)]
    c = config.resolve(with_(["finder", "grad_tol"], 1e-8))
    assert config.config_hash(c) != config.config_hash(a)
    assert not {x.cell_id for x in config.expand(c)} & {x.cell_id for x in config.expand(a)}


def test_figures_table_is_validated_and_left_out_of_the_hash():
    a = config.resolve(copy.deepcopy(BASE))
    assert a.figures.cutoffs == (1e-10, 1e-6)
    b = config.resolve(with_(["figures"], {"cutoffs": [1e-10, 1e-2, 10]}))
    assert b.figures.cutoffs == (1e-10, 1e-2, 10.0)
    assert config.config_hash(b) == config.config_hash(a)  # results on disk stay valid
    with pytest.raises(config.ConfigError, match=r"^figures\.cutoffs"):
        config.resolve(with_(["figures"], {"cutoffs": [0.0]}))
    with pytest.raises(config.ConfigError, match=r"^figures\.colour"):
        config.resolve(with_(["figures"], {"colour": "red"}))


def test_per_layer_widths_pair_with_their_depth_and_depth_zero_once():
    cfg = config.resolve(with_(["model"], {"depth": [0, 2], "width": [3, [4, 2]]}))
    cells = config.expand(cfg)
    shapes = {(c.depth, config.width_text(c.width)) for c in cells}
    assert shapes == {(0, "3"), (2, "3"), (2, "[4, 2]")}


def methods(spectrum):
    """P -> the method that counts each cell (BASE: P = 55, 67, 85, 115)."""
    cfg = config.resolve(with_(["spectrum"], spectrum))
    return {c.num_params: c.spectrum_method for c in config.expand(cfg)}


def test_each_cell_says_which_method_counts_it(monkeypatch):
    assert set(methods({}).values()) == {"eigh"}  # every P <= full_spectrum_max_params
    # Past full_spectrum_max_params: "auto" is dense while it fits ...
    assert methods({"full_spectrum_max_params": 60}) == {
        55: "eigh", 67: "dense", 85: "dense", 115: "dense"
    }  # fmt: skip
    # ... the cap sends it matrix-free (and caps the full spectrum too) ...
    capped = {"full_spectrum_max_params": 100, "dense_max_params": 70}
    assert methods(capped) == {55: "eigh", 67: "eigh", 85: "lanczos+slq", 115: "lanczos+slq"}
    # ... and an explicit method is used as given.
    explicit = {"full_spectrum_max_params": 60, "method": "lanczos"}
    assert methods(explicit) == {55: "eigh", 67: "lanczos", 85: "lanczos", 115: "lanczos"}
    # Where dense does not fit, "auto" goes matrix-free instead of failing.
    monkeypatch.setattr(config.inertia, "dense_fits", lambda P, itemsize: P < 80)
    assert methods({"full_spectrum_max_params": 60}) == {
        55: "eigh", 67: "dense", 85: "lanczos+slq", 115: "lanczos+slq"
    }  # fmt: skip
    # The plan is not part of the cell id: a machine with more memory resumes the same cells.
    monkeypatch.undo()
    ids = [c.cell_id for c in config.expand(config.resolve(copy.deepcopy(BASE)))]
    monkeypatch.setattr(config.inertia, "dense_fits", lambda P, itemsize: False)
    assert [c.cell_id for c in config.expand(config.resolve(copy.deepcopy(BASE)))] == ids


def test_dry_run_shows_the_method_of_each_cell():
    cfg = config.resolve(with_(["spectrum"], {"full_spectrum_max_params": 60, "method": "slq"}))
    lines = config.describe(cfg, config.expand(cfg)).splitlines()
    rows = [line.split() for line in lines[2:-3]]
    assert {(int(r[5]), r[-1]) for r in rows} == {(55, "eigh"), (67, "slq"), (85, "slq"),
                                                  (115, "slq")}  # fmt: skip


def test_removed_large_method_says_what_replaces_it():
    with pytest.raises(config.ConfigError) as err:
        config.resolve(with_(["spectrum"], {"large_method": "lanczos"}))
    message = str(err.value)
    assert message.startswith("spectrum.large_method: removed") and "\n" not in message
    assert "spectrum.method" in message and "full_spectrum_max_params" in message


@pytest.mark.parametrize(
    "path,value,key",
    [
        (["study", "color"], "red", "study.color"),
        (["physics"], {}, "physics"),
        (["study", "name"], "", "study.name"),
        (["study", "name"], "../evil", "study.name"),
        (["study", "seed"], "zero", "study.seed"),
        (["study", "dtype"], "float16", "study.dtype"),
        (["data"], [{"name": "cifar10"}], "data[0].name"),
        (["data"], [{"pca_dim": 3}], "data[0]"),
        (["model", "depth"], [-1], "model.depth"),
        (["model", "width"], [0], "model.width"),
        (["model", "width"], ["wide"], "model.width"),
        (["model", "width"], [[3, 3, 3]], "model.width"),
        (["model", "activation"], "cube", "model.activation"),
        (["model", "loss"], "hinge", "model.loss"),
        (["optimizer"], [{"name": "lbfgs", "learning_rate": 0.1}], "optimizer[0]"),
        (["optimizer"], [{"name": "irprop-", "learning_rate": -1.0}], "optimizer[0]"),
        (["optimizer"], [{"name": "adam", "learning_rate": 0.1, "beta": 0.9}], "optimizer[0]"),
        (["train", "num_steps"], 0, "train.num_steps"),
        (["train", "num_steps"], 1.5, "train.num_steps"),
        (["train", "record_every"], 7, "train.record_every"),
        (["train", "snapshot_steps"], [1000], "train.snapshot_steps"),
        (["train", "batch_size"], -2, "train.batch_size"),
        (["finder", "method"], ["bfgs"], "finder.method"),
        (["finder", "grad_tol"], 0, "finder.grad_tol"),
        (["finder", "batching"], "pmap", "finder.batching"),
        (["spectrum"], {"large_method": "power"}, "spectrum.large_method"),
        (["spectrum"], {"zero_tols": [-1.0]}, "spectrum.zero_tols"),
        (["spectrum"], {"zero_tols": [0.0]}, "spectrum.zero_tols"),
        (["spectrum"], {"num_matvecs": 1}, "spectrum.num_matvecs"),
        (["spectrum"], {"method": "power"}, "spectrum.method"),
        (["spectrum"], {"dense_max_params": -1}, "spectrum.dense_max_params"),
        (["spectrum"], {"full_spectrum_max_params": 1.5}, "spectrum.full_spectrum_max_params"),
        (["spectrum"], {"relative_tols": [0.0]}, "spectrum.relative_tols"),
        (["spectrum"], {"relative_tols": [2.0]}, "spectrum.relative_tols"),
        (["spectrum"], {"max_matvecs": 1}, "spectrum.max_matvecs"),
        (["spectrum"], {"failure_prob": 1.0}, "spectrum.failure_prob"),
        (["spectrum"], {"failure_prob": "small"}, "spectrum.failure_prob"),
        (
            ["spectrum"],
            {"method": "dense", "full_spectrum_max_params": 0, "dense_max_params": 60},
            "spectrum.dense_max_params",
        ),
    ],
)
def test_config_errors_name_the_key_in_one_line(path, value, key):
    with pytest.raises(config.ConfigError) as err:
        cfg = config.resolve(with_(path, value))
        config.expand(cfg)
    message = str(err.value)
    assert message.startswith(key), message
    assert "\n" not in message


def test_expand_errors_name_the_key():
    cfg = config.resolve(with_(["data"], [{"name": "digits", "pca_dim": 999}]))
    with pytest.raises(config.ConfigError, match=r"^data\[0\]"):
        config.expand(cfg)
    cfg = config.resolve(with_(["train", "batch_size"], 10_000))
    with pytest.raises(config.ConfigError, match=r"^train\.batch_size"):
        config.expand(cfg)
    cfg = config.resolve(with_(["model", "loss"], "cross_entropy"))
    cfg = dataclasses.replace(cfg, data=({"name": "teacher_student", "num_samples": 16},))
    with pytest.raises(config.ConfigError, match=r"^model\.loss"):
        config.expand(cfg)


def test_dense_spectra_that_cannot_fit_are_refused(monkeypatch):
    monkeypatch.setattr(config, "_available_memory", lambda: 2**16)  # 64 KiB
    cfg = config.resolve(copy.deepcopy(BASE))
    with pytest.raises(config.ConfigError, match=r"^spectrum\.full_spectrum_max_params"):
        config.expand(cfg)
    # An explicit dense inertia that does not fit: one line before compute; "auto" never fails.
    monkeypatch.setattr(config.inertia, "dense_fits", lambda P, itemsize: False)
    for method, fails in (("dense", True), ("auto", False)):
        cfg = config.resolve(with_(["spectrum"], {"method": method, "full_spectrum_max_params": 0}))
        if fails:
            with pytest.raises(config.ConfigError, match=r"^spectrum\.method: \"dense\" at P=55"):
                config.expand(cfg)
        else:
            assert {c.spectrum_method for c in config.expand(cfg)} == {"lanczos+slq"}


def test_load_by_name_path_and_errors(tmp_path):
    cfg = config.load()  # the embedded default study
    assert cfg.name == "default"
    cells = config.expand(cfg)
    Ps = sorted({c.num_params for c in cells})
    assert len(Ps) >= 4 and Ps[-1] / Ps[0] >= 10 and cfg.train.replicas >= 8
    names = {c.optimizer["name"] for c in cells}
    assert names & {"irprop-", "irprop+", "rprop-", "rprop+", "quickprop"} and names & {
        "adam",
        "sgd",
        "momentum",
    }
    with pytest.raises(config.ConfigError, match="not found"):
        config.load(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[study\nname=")
    with pytest.raises(config.ConfigError, match="not valid TOML"):
        config.load(bad)


def test_every_experiment_file_is_valid():
    studies = 0
    for path in sorted(config.EXPERIMENTS.glob("*.toml")):
        raw = tomllib.loads(path.read_text())
        if "optimizer" not in raw:  # not a sweep study (e.g. the lecture example's config)
            continue
        studies += 1
        full = config.expand(config.load(path))
        if "quick" in raw:  # the reduced version is smaller and still a valid study
            quick = config.expand(config.load(path, quick=True))
            assert len(quick) <= len(full)
    assert studies >= 2


def test_quick_table_and_set_overrides(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text(
        '[study]\nname = "s"\n[[data]]\nname = "digits"\npca_dim = 4\nnum_samples = 64\n'
        '[model]\nwidth = [3, 5, 7]\n[[optimizer]]\nname = "adam"\nlearning_rate = 0.01\n'
        "[train]\nnum_steps = 100\nreplicas = 8\n"
        "[quick.train]\nreplicas = 2\n[quick.model]\nwidth = [3]\n"
        '[[quick.data]]\nname = "w1w2"\n'
    )
    full, quick = config.load(path), config.load(path, quick=True)
    assert full.train.replicas == 8 and full.models[0].width == (3, 5, 7)
    assert quick.train.replicas == 2 and quick.models[0].width == (3,)
    assert quick.data == ({"name": "w1w2"},) and quick.train.num_steps == 100
    assert config.config_hash(full) != config.config_hash(quick)
    name, value = config.parse_override("model.width=[4, 8]")
    assert (name, value) == ("model.width", [4, 8])
    cfg = config.load(path, overrides={name: value, "train.replicas": 3})
    assert cfg.models[0].width == (4, 8) and cfg.train.replicas == 3
    # Bad overrides: one line naming the key, before anything runs.
    with pytest.raises(config.ConfigError, match="TABLE.KEY=VALUE"):
        config.parse_override("replicas=2")
    with pytest.raises(config.ConfigError, match="not a TOML value"):
        config.parse_override("optimizer.name=adam")
    with pytest.raises(config.ConfigError, match="train.replica"):
        config.load(path, overrides={"train.replica": 2})
    with pytest.raises(config.ConfigError, match="train.replicas"):
        config.load(path, overrides={"train.replicas": "two"})
    plain = tmp_path / "plain.toml"
    plain.write_text(path.read_text().split("[quick.train]")[0])
    with pytest.raises(config.ConfigError, match="no \\[quick\\] table"):
        config.load(plain, quick=True)
    path.write_text(path.read_text() + "[quick.nonsense]\nx = 1\n")
    with pytest.raises(config.ConfigError, match="quick.nonsense"):
        config.load(path)  # a broken [quick] table fails even when not used


def test_describe_lists_cells_and_work():
    cfg = config.resolve(copy.deepcopy(BASE))
    text = config.describe(cfg, config.expand(cfg))
    assert "32 cells" in text and "128 finder starts" in text and "multiply-adds" in text


def test_the_schema_in_the_module_docstring_shows_the_real_defaults():
    # The ```toml block of config's docstring is what a user copies: each value it shows for a
    # table with defaults must be that default (examples go in comments).
    block = config.__doc__.split("```toml\n")[1].split("```")[0]
    schema = tomllib.loads(block)
    for table, defaults in config._DEFAULTS.items():
        assert set(schema[table]) <= set(defaults), table
        for key, value in schema[table].items():
            if defaults[key] is None:  # required (study.name): the schema shows an example
                continue
            assert value == defaults[key], f"{table}.{key}: {value!r} != {defaults[key]!r}"
    assert set(config._DEFAULTS) <= set(schema)


def test_model_tables_union_their_grids_with_their_own_train_settings():
    # [[model]]: depths meet at other widths, and the large ones get fewer replicas and no
    # snapshots ([model.train] on top of [train]).
    raw = with_(
        ["model"],
        [
            {"depth": [1], "width": [3, 5]},
            {"depth": [2], "width": [4], "train": {"replicas": 1, "snapshot_steps": []}},
        ],
    )
    raw["finder"] = {"method": ["newton_mr"]}
    raw["optimizer"] = raw["optimizer"][:1]
    cfg = config.resolve(raw)
    cells = config.expand(cfg)
    got = sorted((c.depth, c.width, c.train.replicas) for c in cells)
    assert got == [(1, 3, 2), (1, 5, 2), (2, 4, 1)]
    by_depth = {c.depth: c for c in cells}
    assert by_depth[1].train.num_starts == 2 and by_depth[2].train.num_starts == 1
    assert by_depth[2].train.num_steps == 100  # the rest of [train] is inherited
    # The same architecture under other train settings is another cell; the same one twice is
    # refused in one line.
    raw["model"].append({"depth": [2], "width": [4]})
    assert len(config.expand(config.resolve(raw))) == 4
    raw["model"].append({"depth": [1], "width": [5]})
    with pytest.raises(
        config.ConfigError, match=r"model\[3\]: the cell depth=1 width=5 .* model\[0\]"
    ):
        config.expand(config.resolve(raw))


def test_model_tables_may_set_their_own_finder_budget():
    raw = with_(["model"], [{"depth": [1], "width": [3]}])
    raw["finder"] = {"method": ["newton_mr"], "max_iters": 20}
    raw["optimizer"] = raw["optimizer"][:1]
    plain = config.resolve(raw)
    raw["model"].append({"depth": [2], "width": [4], "finder": {"max_iters": 500}})
    cfg = config.resolve(raw)
    cells = {c.depth: c for c in config.expand(cfg)}
    assert cells[1].finder.max_iters == 20 and cells[2].finder.max_iters == 500
    assert cells[2].finder.grad_tol == 1e-10  # the rest of [finder] is inherited
    # A table without [model.finder] keeps its cells' ids; the study's hash changes.
    assert cells[1].cell_id == config.expand(plain)[0].cell_id
    assert config.config_hash(cfg) != config.config_hash(plain)
    same = {**raw, "model": [raw["model"][0], {"depth": [2], "width": [4]}]}
    assert config.expand(config.resolve(same))[1].cell_id != cells[2].cell_id
    for finder, match in (
        ({"method": "gradnorm"}, r"^model\[1\]\.finder\.method: unknown key"),
        ({"max_iters": 0}, r"^model\[1\]\.finder\.max_iters: must be an int >= 1"),
        ({"batching": "sideways"}, r"^model\[1\]\.finder\.batching: unknown 'sideways'"),
    ):
        raw["model"][1]["finder"] = finder
        with pytest.raises(config.ConfigError, match=match):
            config.resolve(raw)


@pytest.mark.parametrize(
    "model, match",
    [
        ([], r"^model: needs at least one"),
        ([{"depth": [1], "train": {"replica": 2}}], r"^model\[0\]\.train\.replica: unknown key"),
        ([{"depth": [1], "train": {"replicas": 0}}], r"^model\[0\]\.train\.replicas: must be"),
        ([{"depth": [1]}, {"widht": [2]}], r"^model\[1\]\.widht: unknown key"),
        (
            [{"depth": [1], "train": {"snapshot_steps": [500]}}],
            r"^model\[0\]\.train\.snapshot_steps",
        ),
        ([{"depth": [1], "train": 3}], r"^model\[0\]\.train: must be a table"),
    ],
)
def test_bad_model_tables_name_the_key(model, match):
    with pytest.raises(config.ConfigError, match=match):
        config.resolve(with_(["model"], model))


def test_census_studies_meet_at_equal_sizes_and_span_the_decades():
    # The census's design (experiments/census.toml): depths 1, 2 and 4 within 8 % of each other
    # at P ~ 1e3, 5e3 and 1e4; the quick version spans two decades up to P >= 1e4, exact counts.
    full = config.expand(config.load("census"))
    sizes = {}
    for c in full:
        sizes.setdefault(c.depth, set()).add(c.num_params)
    for target in (1e3, 5e3, 1e4):
        near = [min(s, key=lambda p: abs(p - target)) for s in sizes.values()]
        assert len(near) == 3 and max(near) / min(near) < 1.08, (target, near)
    assert max(c.num_params for c in full) >= 2e4
    assert all(c.train.replicas >= 16 for c in full if c.num_params <= 5.1e3)
    assert all(c.spectrum_method in ("eigh", "dense") for c in full)
    quick = config.expand(config.load("census", quick=True))
    ps = [c.num_params for c in quick]
    assert max(ps) >= 1e4 and max(ps) / min(ps) >= 100
    assert config.load("census").models[0].loss == "mse"
    assert all(c.l2 == 0 for c in full)


def test_gpu_census_reaches_two_hundred_thousand_parameters():
    cells = config.expand(config.load("census_gpu"))
    assert max(c.num_params for c in cells) >= 2e5
    assert {c.depth for c in cells if c.num_params >= 9e4} == {1, 2, 4}


def test_describe_names_the_primary_tolerance():
    raw = with_(["spectrum"], {"zero_tols": [1e-8, 1e-4], "relative_tols": []})
    cfg = config.resolve(raw)
    text = config.describe(cfg, config.expand(cfg))
    assert "counts_exact at 0.0001" in text and "c = none" in text
    assert "counts_exact at 1e-05" in config.describe(config.resolve(BASE), [])


@pytest.mark.parametrize(
    "spectrum, key",
    [
        ({"zero_tols": [1e-5, 1e-5]}, "spectrum.zero_tols"),
        ({"zero_tols": [1e-5, 0.00001, 1e-4]}, "spectrum.zero_tols"),
        ({"relative_tols": [1e-3, 0.001]}, "spectrum.relative_tols"),
    ],
)
def test_tolerances_that_would_share_a_column_are_refused(spectrum, key):
    with pytest.raises(config.ConfigError) as err:
        config.resolve(with_(["spectrum"], spectrum))
    message = str(err.value)
    assert message.startswith(key) and "share the column" in message, message
    assert "\n" not in message


def test_tolerances_differing_beyond_the_first_digit_are_kept_apart():
    cfg = config.resolve(with_(["spectrum"], {"zero_tols": [1e-5, 1.2e-5],
                                              "relative_tols": [1e-3, 1.5e-3]}))  # fmt: skip
    assert cfg.spectrum.zero_tols == (1e-5, 1.2e-5)
    assert cfg.spectrum.relative_tols == (1e-3, 1.5e-3)
