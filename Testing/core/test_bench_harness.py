"""benchmarks/harness.py: what the benchmark scripts share."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def harness(load_script):
    return load_script("harness")


def test_variant_resolves_budget_functions_and_train_overrides(harness):
    method_train = {"ucmt": {"optimizer": "adamw"}}
    v = harness.Variant("coranet", params={"pretrain_iterations": lambda n: n // 2, "supervised": "code"})
    assert v.resolve_params(400) == {"pretrain_iterations": 200, "supervised": "code"}
    assert harness.variant("ucmt", {}).train_overrides(method_train) == {"optimizer": "adamw"}
    assert harness.Variant("ucmt", train={}).train_overrides(method_train) == {}
    assert harness.variant("ucmt_x", {"ucmt_x": harness.Variant("ucmt")}).method == "ucmt"


def test_child_env_sets_threads_and_library_path(harness):
    env = harness.child_env(3)
    assert all(env[k] == "3" for k in harness.THREAD_VARIABLES)
    assert env["PYTHONPATH"].endswith("SemiSupUncertainty")


def test_merge_result_keeps_what_another_sweep_wrote(harness, tmp_path):
    path = tmp_path / "results.json"
    harness.merge_result(path, "a", 1)
    harness.write_json(path, {**harness.read_results(path), "b": 2})  # another invocation writes meanwhile
    assert harness.merge_result(path, "c", 3) == {"a": 1, "b": 2, "c": 3}
    assert not list(tmp_path.glob(".*.tmp"))
