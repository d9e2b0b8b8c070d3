"""Labels are read by their values; a useless model is never reported "ok" (issue: garbage in)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from erasure_pipeline.app.cli import main
from erasure_pipeline.ml.labels import BinaryLabel, LabelError, require_two_classes
from erasure_pipeline_tests.conftest import project_env

CUSTOMER_POLICY = """\
shards: 2
seed: 5
k_min: 3
datasets:
  subjects: {id: subject_id, subject: subject_id}
consent:
  column: consent_training
cohorts:
  dataset: subjects
  quasi_identifiers: [region]
  measures: [monthly_charges]
  label: Churn
features:
  dataset: subjects
  numeric: [tenure, monthly_charges]
  categorical: [region]
models:
  model:
    label: Churn
    task: binary
    quality: {metric: roc_auc, min: 0.6}
"""


def customers(n: int = 800, seed: int = 0, label=None) -> pd.DataFrame:
    """A churn table as a CRM exports it: one file, string "Yes"/"No" label driven by tenure."""
    rng = np.random.default_rng(seed)
    tenure = rng.integers(0, 72, n)
    churn = rng.random(n) < 1 / (1 + np.exp((tenure - 20) / 6))
    return pd.DataFrame({
        "subject_id": [f"customer-{i:05d}@crm.example" for i in range(n)],
        "consent_training": "Yes",
        "region": rng.choice(["north", "south", "east"], n),
        "tenure": tenure,
        "monthly_charges": rng.uniform(20, 120, n).round(2),
        "Churn": np.where(churn, "Yes", "No") if label is None else label,
    })


def _cli(*args):
    return CliRunner().invoke(main, list(args))


@pytest.fixture
def customer_home(tmp_path):
    with project_env(tmp_path / "home", CUSTOMER_POLICY) as home:
        (home / "landing" / "subjects").mkdir(parents=True)
        yield home


def _land(home, df: pd.DataFrame, name: str = "subjects/customers.csv") -> None:
    df.to_csv(home / "landing" / name, index=False)


# ---------------------------------------------------------------- reading a label (pure)
@pytest.mark.parametrize(
    ("values", "positive", "expected"),
    [
        ([True, False, True], None, [1, 0, 1]),
        ([1, 0, 0], None, [1, 0, 0]),
        (["Yes", "No", " yes "], None, [1, 0, 1]),
        (["TRUE", "false", "T"], None, [1, 0, 1]),
        (["churned", "stayed", "churned"], "Churned", [1, 0, 1]),
        ([5, 7, 5], 7, [0, 1, 0]),
    ],
)
def test_labels_are_read_by_their_values(values, positive, expected):
    codes, statement = BinaryLabel("y", positive).encode(pd.Series(values), where="f.csv")
    assert codes.tolist() == expected and statement


def test_inferred_encoding_is_stated():
    _codes, statement = BinaryLabel("y").encode(pd.Series(["Yes", "No"]), where="f.csv")
    assert statement == "inferred from yes/no-like values: yes → 1, no → 0"


@pytest.mark.parametrize(
    ("values", "positive", "problem"),
    [
        (["Yes", "No", "Maybe"], None, "not yes/no, true/false or 1/0"),
        ([0, 1, 2], None, "must be 0 or 1"),
        (["a", "b", "c"], "a", "needs two values"),
        (["a", "b"], "c", "neither of its two values"),
        (["Yes", None], None, "missing label"),
    ],
)
def test_unreadable_labels_are_one_line_naming_file_and_column_never_a_value(values, positive, problem):
    with pytest.raises(LabelError) as err:
        BinaryLabel("Churn", positive).encode(pd.Series(values), where="subjects/crm.csv")
    message = str(err.value)
    assert problem in message and message.startswith("subjects/crm.csv, column 'Churn'") and "\n" not in message
    for v in values:
        if isinstance(v, str) and v not in ("a", "b", "c"):  # single letters occur in any sentence
            assert v not in message


def test_one_class_is_an_error():
    with pytest.raises(LabelError, match="holds one class"):
        require_two_classes({0: 0, 1: 12}, column="Churn", where="x")
    require_two_classes({0: 1, 1: 12}, column="Churn", where="x")


# ---------------------------------------------------------------- end to end through the CLI
def test_yes_no_label_on_a_subjects_only_table_trains_a_useful_model(customer_home):
    import dagster as dg

    _land(customer_home, customers())
    out = _cli("materialize")
    assert out.exit_code == 0, out.output
    with dg.DagsterInstance.get() as inst:
        ens = inst.get_latest_materialization_event(dg.AssetKey("ensemble_model")).asset_materialization.metadata
        assert ens["holdout_roc_auc"].value > 0.7 and ens["published"].value == "yes"
        assert ens["holdout_class_0"].value > 0 and ens["holdout_class_1"].value > 0
        shard = next(r.event_log_entry.asset_materialization.metadata for r in inst.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey("training_shards"), asset_partitions=["shard_00"]), limit=1).records)
        balance = {r.data["class"]: r.data["rows"] for r in shard["class_balance"].value.records}
        assert balance[0] > 0 and balance[1] > 0
        assert shard["label_encoding"].value == "inferred from yes/no-like values: yes → 1, no → 0"
        assert shard["constant_features"].value >= 0
    assert "Traceback" not in out.output


def test_one_class_label_is_one_clear_line_before_anything_is_trained(customer_home):
    _land(customer_home, customers(label="No"))
    out = _cli("materialize")
    assert out.exit_code == 1
    errors = [line for line in out.output.splitlines() if line.startswith("error:")]
    assert errors == [(
        "error: subjects (every landing file), column 'Churn': the training set holds one class (class 0: 630 rows); "
        "a model cannot learn from it. Check the label column and models.model.positive_class"
    )]
    assert "Traceback" not in out.output
    assert not (customer_home / "lake").exists()  # nothing was trained or written


def test_unknown_label_value_is_one_clear_line_naming_the_file(customer_home):
    df = customers()
    df.loc[7, "Churn"] = "Unknown"
    _land(customer_home, df)
    out = _cli("materialize")
    assert out.exit_code == 1 and "Traceback" not in out.output
    (line,) = [line for line in out.output.splitlines() if line.startswith("error:")]
    assert line.startswith("error: subjects/customers.csv, column 'Churn': row 8: a label value that is not yes/no")
    assert "Unknown" not in line and "3 distinct values" in line


def test_policy_column_missing_from_the_data_is_one_line(customer_home):
    _land(customer_home, customers().drop(columns=["tenure"]))
    out = _cli("materialize")
    assert out.exit_code == 1
    assert out.output.strip().splitlines()[-1] == ("error: subjects/customers.csv, column 'tenure': column named by "
                                                   "features.numeric is missing")


def test_missed_quality_floor_fails_the_command_names_the_check_and_publishes_nothing(customer_home):
    from erasure_pipeline.stores import lake as lk
    from erasure_pipeline_tests import stores

    (customer_home / "policy.yaml").write_text(CUSTOMER_POLICY.replace("min: 0.6", "min: 0.999"))
    _land(customer_home, customers())
    out = _cli("materialize")
    assert out.exit_code == 1
    assert "meets_quality_floor" in out.output and "check FAILED (ERROR): ensemble_model meets_quality_floor" in out.output
    assert "--allow-failed-checks" in out.output
    store = stores.lake()
    assert store.read_bytes(lk.model_name("ensemble_model")) is None  # not published ...
    assert store.read_bytes(lk.model_name("ensemble_model", "candidate")) is not None  # ... only kept as a candidate
    accepted = _cli("materialize", "--allow-failed-checks")
    assert accepted.exit_code == 0 and "meets_quality_floor" in accepted.output
    audit = _cli("audit")
    assert audit.exit_code == 1 and "no published ensemble_model" in audit.output


def test_a_category_falls_in_the_bucket_of_its_value_as_text_however_many_rows_share_it():
    """Training sets hash each distinct category value once: every row still gets its own value's bucket."""
    from erasure_pipeline.ml.features import _bucket, _buckets

    values = pd.Series(["basic", "pro", None, float("nan"), pd.NA, 3, "3", "basic"] * 50, dtype=object)
    assert _buckets("plan", values).tolist() == [_bucket("plan", str(v)) for v in values]
    arrow = pd.Series(["basic", None, "pro", "basic"], dtype="string[pyarrow]")
    assert _buckets("plan", arrow).tolist() == [_bucket("plan", str(v)) for v in arrow]
    assert len(_buckets("plan", pd.Series([], dtype=object))) == 0
