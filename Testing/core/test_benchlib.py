"""scripts/benchlib.py: what the benchmark scripts share."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def benchlib(load_script):
    return load_script("benchlib")


def test_variant_resolves_budget_functions_and_train_overrides(benchlib):
    method_train = {"ucmt": {"optimizer": "adamw"}}
    v = benchlib.Variant("coranet", params={"pretrain_iterations": lambda n: n // 2, "supervised": "code"})
    assert v.resolve_params(400) == {"pretrain_iterations": 200, "supervised": "code"}
    assert benchlib.variant("ucmt", {}).train_overrides(method_train) == {"optimizer": "adamw"}
    assert benchlib.Variant("ucmt", train={}).train_overrides(method_train) == {}
    assert benchlib.variant("ucmt_x", {"ucmt_x": benchlib.Variant("ucmt")}).method == "ucmt"


def test_child_env_sets_threads_and_library_path(benchlib):
    env = benchlib.child_env(3)
    assert all(env[k] == "3" for k in benchlib.THREAD_VARIABLES)
    assert env["PYTHONPATH"].endswith("SemiSupUncertainty")
