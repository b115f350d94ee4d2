"""FLOPs planner and the ``s4d-export flops`` command."""

import json

import pytest
from typer.testing import CliRunner

from export.cli import app
from sdk.models.config import DiTConfig
from sdk.models.flops import estimate_flops
from sdk.sparse import SparsePattern


def test_hand_count_on_a_small_config():
    cfg = DiTConfig.tiny()  # C=64, depth 5, 2 MoE layers of 4 experts top-2, P=64, Cc=128
    T, L, P, C, N = 3, 10, 64, 64, 65
    r = estimate_flops(cfg, num_frames=T, context_tokens=L, steps=7, cfg_batch=2)
    assert r.spatial_attention == 5 * T * 4 * N * N * C
    assert r.cross_attention == 5 * T * 4 * N * L * C
    assert r.temporal_attention_full == 5 * 4 * (T * P) ** 2 * C
    density = SparsePattern.for_tokens(T, P, 16).density()
    assert r.temporal_attention_sparse == pytest.approx(r.temporal_attention_full * density)
    per_block = 4 * 2 * N * C * C + 2 * 2 * N * C * C + 2 * 2 * L * 128 * C + 4 * 2 * P * C * C
    ffn = 2 * 2 * N * C * 256
    skips = 2  # blocks 3, 4
    linear = T * (5 * per_block + 3 * ffn + skips * 2 * N * 2 * C * C + 2 * 2 * P * 8 * C) + 2 * 2 * C * 4 * C
    assert r.linear == pytest.approx(linear)
    assert r.moe == pytest.approx(T * 2 * (2 * N * C * 4 + 3 * ffn))
    assert r.moe_dense_extra == pytest.approx(T * 2 * 2 * ffn)
    assert r.as_dict()["per_sequence_sparse"] == pytest.approx(r.total_sparse * 14)


def test_ratios():
    for T in (8, 16, 32, 64):
        r = estimate_flops(num_frames=T)
        assert r.temporal_ratio == pytest.approx(r.density)
        assert 0 < r.network_ratio < 1
    assert estimate_flops(num_frames=16, schedule="full").network_ratio == 1.0
    ratios = [estimate_flops(num_frames=T).network_ratio for T in (8, 16, 32, 64)]
    assert ratios == sorted(ratios, reverse=True), "sparsity pays more with more frames"


def test_cli_json_and_table():
    runner = CliRunner()
    res = runner.invoke(app, ["flops", "--frames", "16", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["num_frames"] == 16 and data["schedule_name"] == "sculpt4d" and "conventions" in data
    res = runner.invoke(app, ["flops", "--frames", "8", "--schedule", "aggressive", "--no-anchor"])
    assert res.exit_code == 0 and "whole-network ratio" in res.output and "anchor=off" in res.output


@pytest.mark.parametrize("args,needle", [(["--schedule", "wavy"], "neither a preset"),
                                         (["--schedule", "1,0"], "positive integers"),
                                         (["--frames", "0"], "num_frames"),
                                         (["--tokens", "100"], "multiple of the block size")])
def test_cli_errors(args, needle):
    res = CliRunner().invoke(app, ["flops", *args])
    assert res.exit_code == 2
    assert needle in res.output
