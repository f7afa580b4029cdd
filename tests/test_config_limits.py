"""Every config key `tapeline pipelines --keys` lists, given its edge values (0, -1, huge, empty,
wrong type, not finite): refused at entry in one line, or inside the range a run completes with.
The range layer is checked for every key; a few cases run end to end through the CLI."""
from __future__ import annotations

import dataclasses
import math
import re
import typing
from pathlib import Path

import numpy as np
import pytest

from artifacts.errors import UserError
from components import config as cfglib
from flows.registry import all_pipelines, get
from tests.conftest import MNIST, tapeline

EDGES = ["0", "-1", "1", "99999999999999999999", "-99999999999999999999", "1e308", "-0.5", "0.5", "nan",
         "inf", "", " ", "abc", "none", "1,2", "0,-1"]


def _keys_listed() -> dict[str, set[str]]:
    """pipeline -> the keys `tapeline pipelines --keys` prints for it."""
    out, current = {}, None
    for line in tapeline("pipelines", "--keys", timeout=120).stdout.splitlines():
        if line and not line.startswith(" "):
            current = line.split()[0]
            out[current] = set()
        elif line.startswith(" " * 20) and " =" in line and current:
            out[current].add(line.strip().partition(" =")[0])
    return out


def _leaf_type(cfg, key: str):
    *path, name = key.split(".")
    for part in path:
        cfg = getattr(cfg, part)
    return typing.get_type_hints(type(cfg))[name]


def _closed(tp) -> bool:
    """A type whose every parsed value is valid: bool and Literal choices."""
    return tp is bool or typing.get_origin(tp) is typing.Literal


def test_every_key_has_its_whole_range_and_every_edge_value_is_refused_in_one_line_or_in_range():
    from components import beam_run

    listed = _keys_listed()
    assert set(listed) == set(all_pipelines())
    for name, keys in listed.items():
        p = get(name)
        assert keys == set(cfglib.flat_keys(p.default_config())), name
        for key in sorted(keys):
            tp = _leaf_type(p.default_config(), key)
            # every key has its range beside its field (config.bounded), or a type that is one
            assert _closed(tp) != (cfglib.limit_of(p.default_config(), key) is not None), \
                f"{key} of {name} declares no range (components.config.bounded)"
            for text in EDGES:
                try:
                    cfg = p.config([f"{key}={text}"])
                    beam_run.check(cfg)  # what `tapeline run` checks at entry, after the config
                except UserError as e:
                    line = e.line()
                    assert "\n" not in line and key in line, (key, text, line)
                    continue
                value = cfglib.flat(cfg)[key]
                values = value if isinstance(value, list) else [value]
                for v in values:  # what the stages would get: in range, int64, finite
                    if isinstance(v, (int, float)) and not isinstance(v, bool):
                        assert math.isfinite(v) and -(2 ** 63) <= v < 2 ** 63, (key, text)
                limit = cfglib.limit_of(p.default_config(), key)
                assert limit is None or limit.ok(tuple(values) if isinstance(value, list) else value), (key, text)
            np.random.seed(p.config([]).seed)


@pytest.mark.parametrize("value", ["99999999999999999999", "-1", "4294967296"])
def test_the_seeds_numpy_refuses_are_refused_at_entry(value):
    with pytest.raises(UserError, match="seed"):
        get("mnist-classifier").config([f"seed={value}"])
    np.random.seed(get("mnist-classifier").config(["seed=4294967295"]).seed)  # the top of the range runs


@pytest.mark.parametrize("sets", [["seed=99999999999999999999"], ["seed=-1"], ["eval.num_samples=0"],
                                  ["train.epochs=nan"], ["beam.runner=abc"]])
def test_out_of_range_values_fail_in_one_line_before_any_stage_commits(tmp_path, sets):
    root = tmp_path / "root"
    args = [a for s in sets for a in ("--set", s)]
    proc = tapeline("run", "mnist-gan", "--root", str(root), "--set", f"data.source=idx:{MNIST}", *args, timeout=300)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and lines[-1].startswith("tapeline: error:"), proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and not list(Path(root).glob("*/*/*/_COMMITTED"))


def test_a_root_whose_path_holds_glob_characters_runs_and_reuses(tmp_path, harness):
    from flows.pipeline_flow import run_pipeline
    from tests.helpers import TINY

    root = tmp_path / "runs [v1]" / "r*?"
    sets = TINY["mnist-classifier"] + ["train.max_steps=3"]
    first = run_pipeline("mnist-classifier", sets, str(root))
    # every test example was found and measured under the glob characters
    assert first["metrics"]["examples"] == 300 and first["champion"]
    again = run_pipeline("mnist-classifier", sets, str(root))
    assert all(st["reused"] for k, st in again["stages"].items() if not k.endswith("promote"))


def test_dataclass_defaults_are_inside_their_ranges():
    for name, p in all_pipelines().items():
        for key, value in cfglib.flat(p.default_config()).items():
            limit = cfglib.limit_of(p.default_config(), key)
            if limit is not None:
                assert limit.ok(tuple(value) if isinstance(value, list) else value), (name, key, value)
    assert dataclasses.is_dataclass(get("pix2pix").default_config())


@pytest.mark.parametrize("name", ["fashion-dcgan", "mnist-gan"])
def test_an_unknown_gan_variant_and_a_bad_ttur_pair_are_refused_in_one_line(name):
    from pipelines.gan_fixes import VARIANTS

    with pytest.raises(UserError) as e:
        get(name).config(["model.variant=fancy"])
    assert e.value.line() == ("bad value 'fancy' for model.variant (--set) — use one of "
                              + ", ".join(VARIANTS) + ", or fixes joined by + (e.g. resize+ema)")
    for bad in ("resize+fancy", "faithful+ema", "resize+", "+"):
        with pytest.raises(UserError, match=f"bad value '{re.escape(bad)}' for model.variant"):
            get(name).config([f"model.variant={bad}"])
    with pytest.raises(UserError, match="model.ttur_learning_rates.*give two rates"):
        get(name).config(["model.ttur_learning_rates=1e-4"])
    assert get(name).config([]).model.variant == "faithful"  # the seed's recipe stays the default
    for variant in VARIANTS:
        assert get(name).config([f"model.variant={variant}"]).model.variant == variant


@pytest.mark.parametrize("name", ["fashion-dcgan", "mnist-gan"])
def test_fixes_joined_by_plus_apply_each_and_adam_sets_rates_and_beta(name):
    from pipelines import gan_fixes

    seed = get(name).config([]).model
    assert gan_fixes.of(seed) == gan_fixes.Fixes()
    assert (gan_fixes.learning_rates(seed), gan_fixes.beta_1(seed)) == (
        (seed.g_learning_rate, seed.d_learning_rate), 0.9)  # the seeds' Adam, Keras's default beta_1
    model = get(name).config(["model.variant=resize+ema+adam"]).model
    assert gan_fixes.of(model) == gan_fixes.Fixes(resize=True, ema=True, adam=True)
    assert (gan_fixes.learning_rates(model), gan_fixes.beta_1(model)) == ((2e-4, 2e-4), 0.5)
    both = get(name).config(["model.variant=ttur+adam", "model.ttur_learning_rates=1e-4,3e-4"]).model
    assert (gan_fixes.learning_rates(both), gan_fixes.beta_1(both)) == ((1e-4, 3e-4), 0.5)
    assert gan_fixes.of(get(name).config(["model.variant=improved+ema"]).model) == gan_fixes.Fixes(
        resize=True, adam=True, ema=True)
    # what docs/RESULTS.md measured as resize+adam (bilinear) is what `improved` builds
    measured = get(name).config(["model.variant=resize+adam", "model.upsample=bilinear"]).model
    assert gan_fixes.of(measured) == gan_fixes.VARIANTS["improved"] and get(name).config([]).model.upsample == "bilinear"
