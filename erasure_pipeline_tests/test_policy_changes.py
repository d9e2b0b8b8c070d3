"""Policy changes mark exactly the assets that read the changed field (and those below) stale;
``policy diff`` says so before the change is applied."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from erasure_pipeline.app.cli import main
from erasure_pipeline.app.demo import demo_policy
from erasure_pipeline.app.policy_changes import field_differences
from erasure_pipeline_tests.conftest import SMALL_POLICY


def _cli(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def _stale_assets(output: str) -> dict[str, str]:
    rows = [line.split("|")[1:3] for line in output.splitlines() if line.startswith("| ") and not line.startswith("| asset")]
    return {a.strip(): p.strip() for a, p in rows}


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("k_min: 3", "k_min: 6"), {"anonymised_cohorts", "cohort_model"}),
        (("consent:\n  column: consent_training\n", "consent:\n  column: consent_training\n  allowed_values: [true, 'yes']\n"),
         {"training_shards", "shard_models", "ensemble_model"}),
        (("estimator: logistic_regression", "estimator: random_forest"), {"shard_models", "ensemble_model"}),
        (("shards: 4", "shards: 8"), {"raw_subjects", "raw_events", "raw_tickets", "cohort_partials", "anonymised_cohorts",
                                      "cohort_model", "training_shards", "shard_models", "ensemble_model", "vector_index"}),
    ],
    ids=["k_min", "consent", "estimator", "reshard"],
)
def test_policy_diff_lists_exactly_the_assets_a_change_makes_stale(demo_home, tmp_path, change, expected):
    assert "nothing is stale" in _cli("policy", "diff").output
    old, new = change
    assert old in SMALL_POLICY
    proposed = tmp_path / "proposed.yaml"
    proposed.write_text(SMALL_POLICY.replace(old, new))
    out = _cli("policy", "diff", "--proposed", str(proposed))
    assert out.exit_code == 0, out.output
    stale = _stale_assets(out.output)
    assert set(stale) == expected
    for asset in {"training_shards", "shard_models", "raw_subjects"} & expected:
        assert stale[asset] == ("all 8" if "shards: 8" in new else "all 4")
    assert "differ from the policy in effect" in out.output
    assert "nothing is stale" in _cli("backfill", "--stale", "--dry-run").output  # policy.yaml itself is unchanged


def test_field_differences_names_dotted_fields():
    a = demo_policy()
    b = demo_policy(k_min=25, models={"model": {**a.models["model"].model_dump(), "estimator": "sgd"}})
    assert field_differences(a, b) == [("k_min", 10, 25), ("models.model.estimator", "logistic_regression", "sgd")]


def test_backfill_stale_is_one_run_of_exactly_the_stale_partitions(demo_home):
    from erasure_pipeline_tests.conftest import instance
    from erasure_pipeline_tests.erasure_helpers import materialised_partitions, max_storage_id

    policy_file = demo_home / "policy.yaml"
    policy_file.write_text(policy_file.read_text().replace("k_min: 3", "k_min: 6"))
    inst = instance()
    start = max_storage_id(inst)
    out = _cli("backfill", "--stale")
    assert out.exit_code == 0, out.output
    assert materialised_partitions(inst, start) == {("anonymised_cohorts", None), ("cohort_model", None)}
    (run,) = [r for r in inst.get_runs() if r.job_name == "rebuild_job"]
    assert run.is_success and run.tags["erasure_pipeline/kind"] == "rebuild"
    assert "nothing is stale" in _cli("policy", "diff").output
    assert "nothing is stale" in _cli("backfill", "--stale").output  # and nothing runs twice
