"""The command line: stable verbs, one-line user errors with exit status 2."""
from __future__ import annotations

import json

from tests.conftest import tapeline


def _one_error_line(proc):
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("tapeline: error: "), proc.stderr
    return lines[0]


def test_unknown_key_is_one_line_exit_2(tmp_path):
    proc = tapeline("run", "fashion-dcgan", "--set", "no.such.key=1", "--root", str(tmp_path / "r"))
    assert "no.such.key" in _one_error_line(proc)
    assert not (tmp_path / "r" / "fashion-dcgan").exists()


def test_wrong_type_is_one_line_exit_2(tmp_path):
    proc = tapeline("run", "fashion-dcgan", "--set", "train.epochs=abc", "--root", str(tmp_path / "r"))
    line = _one_error_line(proc)
    assert "train.epochs" in line and "'abc'" in line


def test_unknown_pipeline_and_bad_choice(tmp_path):
    assert "no-such" in _one_error_line(tapeline("plan", "no-such", "--root", str(tmp_path)))
    line = _one_error_line(tapeline("plan", "pix2pix", "--set", "train.strategy=tpu", "--root", str(tmp_path)))
    assert "train.strategy" in line and "mirrored" in line


def test_pipelines_and_empty_root(tmp_path):
    proc = tapeline("pipelines", "--keys")
    assert proc.returncode == 0
    for name in ("mnist-classifier", "mnist-gan", "fashion-dcgan", "pix2pix"):
        assert name in proc.stdout
    assert "train.checkpoint_every = 1000" in proc.stdout
    proc = tapeline("artifacts", "--json", "--root", str(tmp_path / "r"))
    assert proc.returncode == 0 and json.loads(proc.stdout) == {}
    proc = tapeline("verify", "--root", str(tmp_path / "r"))
    assert proc.returncode == 0 and "verified 0 artifacts" in proc.stdout
