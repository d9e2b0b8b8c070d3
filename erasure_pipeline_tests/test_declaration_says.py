"""A declaration means what it says: no value of the demo fills what it leaves out, every row is accounted
for, files in the wrong place are named, missing numbers are filled only as declared, certificates say what
each node actually held, a model below its floor holds back only itself, and lookup tables join features."""

from __future__ import annotations

import io
import re

import numpy as np
import pandas as pd
import pytest
import yaml
from click.testing import CliRunner

from erasure_pipeline.app.cli import main
from erasure_pipeline.core import identity
from erasure_pipeline_tests import stores
from erasure_pipeline_tests.conftest import PEPPER, project_env

DEMO_NAMES = ("subjects", "events", "tickets", "converted", "consent_training", "region", "segment", "lifetime_value",
              "subject_id", "event_type")
"""What the demo's declaration names: none of it may appear where a declaration did not name it."""

MINIMAL = {"shards": 2, "datasets": {"people": {"id": "person_id", "subject": "email"}}}
"""Every optional field left out: one dataset of people."""


def _cli(*args):
    return CliRunner().invoke(main, list(args))


def people(n: int = 240, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    tenure = rng.integers(0, 60, n)
    return pd.DataFrame({
        "person_id": [f"p-{i:05d}" for i in range(n)],
        "email": [f"person{i:05d}@mail.example" for i in range(n)],
        "age": rng.integers(18, 80, n).astype(float),
        "tenure": tenure,
        "plan_id": rng.choice(["basic", "plus", "pro"], n),
        "signed_up": pd.Timestamp("2013-01-01", tz="UTC") + pd.to_timedelta(rng.integers(0, 365, n), unit="D"),
        "churned": np.where(rng.random(n) < 1 / (1 + np.exp((tenure - 25) / 6)), "yes", "no"),
    })


def visits(owners: list[str], n: int = 600, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"visit_id": [f"v-{i:05d}" for i in range(n)], "email": rng.choice(owners, n),
                         "at": pd.Timestamp("2013-06-01", tz="UTC") + pd.to_timedelta(rng.integers(0, 300, n), unit="D")})


def land(name: str, frame: pd.DataFrame) -> None:
    buf = io.StringIO()
    frame.to_csv(buf, index=False)
    stores.landing().write_bytes(name, buf.getvalue().encode())


def home(tmp_path, declaration: dict):
    return project_env(tmp_path / "home", yaml.safe_dump(declaration, sort_keys=False))


def _no_demo_name(text: str) -> None:
    named = [n for n in DEMO_NAMES if re.search(rf"\b{n}\b", text)]
    assert not named, (named, text)


def test_a_declaration_that_omits_every_optional_field_builds_and_names_nothing_of_the_demo(tmp_path):
    with home(tmp_path, MINIMAL):
        land("people/export.csv", people())
        shown = _cli("policy", "show")
        assert shown.exit_code == 0, shown.output
        lines = shown.output.splitlines()
        assert lines[0].endswith("policy.yaml ($ERASURE_PIPELINE_POLICY)")
        assert "shards: 2" in lines  # given: not marked
        for default in ("k_min: 10  # default", "retention_days: null  # default", "consent: null  # default",
                        "cohorts: null  # default", "features: null  # default", "models: {}  # default", "  timestamp: null  # default",
                        "    missing_subject: reject  # default"):
            assert any(line.strip() == default.strip() for line in lines), (default, shown.output)
        _no_demo_name(shown.output)
        out = _cli("materialize")
        assert out.exit_code == 0, out.output
        _no_demo_name(out.output)
        assert "people: 240 rows read; 240 rows in the partitions written" in out.output
        import dagster as dg

        with dg.DagsterInstance.get() as inst:
            assert {k.to_user_string() for k in inst.get_asset_keys()} == {"raw_people"}  # no cohorts, no models: nothing assumed
    # The same, with features and a model, still no aggregates, cohorts, consent or floor: each message names only what was written.
    declared = {**MINIMAL, "features": {"dataset": "people", "numeric": ["age", "tenure"]},
                "models": {"churn": {"label": "churned", "task": "binary", "positive_class": "yes"}}}
    with home(tmp_path / "with_model", declared):
        land("people/export.csv", people().drop(columns=["tenure"]))
        out = _cli("materialize")
        assert out.exit_code == 1 and "Traceback" not in out.output
        assert "column 'tenure'" in out.output and "features.numeric" in out.output
        _no_demo_name(out.output)
        land("people/export.csv", people())
        out = _cli("materialize")
        assert out.exit_code == 0, out.output
        _no_demo_name(out.output)
        models = _cli("models")
        assert "| churn | binary | logistic_regression | roc_auc |" in models.output
        assert re.search(r"\| churn .*\| - \| \d+ \(0: \d+, 1: \d+\) \| yes \|", models.output), models.output  # no floor, published


def test_old_timestamps_stay_without_a_declared_retention_and_a_declared_one_says_what_it_dropped(tmp_path):
    declared = {**MINIMAL, "datasets": {"people": {"id": "person_id", "subject": "email", "timestamp": "signed_up"}}}
    rows = people()
    with home(tmp_path, declared):
        land("people/export.csv", rows)  # every row from 2013
        out = _cli("materialize")
        assert out.exit_code == 0, out.output
        assert "people: 240 rows read; 240 rows in the partitions written" in out.output
        assert "retention" not in out.output
        kept = sum(len(stores.table(stores.lake(), "raw_people", p)) for p in ("shard_00", "shard_01"))
        assert kept == 240
    with home(tmp_path / "retained", {**declared, "retention_days": 365}):
        land("people/export.csv", rows)
        out = _cli("materialize")
        assert out.exit_code == 0, out.output
        line = next(line for line in out.output.splitlines() if line.startswith("people: "))
        assert re.fullmatch(r"people: 240 rows read, 240 past retention \(retention_days 365: older than \d{4}-\d\d-\d\d\); "
                            r"0 rows in the partitions written", line), line


def test_a_file_in_the_wrong_place_is_named_and_a_dataset_without_files_stops_before_any_run(tmp_path):
    with home(tmp_path, MINIMAL):
        land("customers/export.csv", people())  # the source's own folder name, not the dataset's
        out = _cli("materialize")
        assert out.exit_code == 1 and "Traceback" not in out.output
        assert ("dataset 'people' has no file in landing" in out.output
                and "a dataset's files sit in landing/<name>/ or start with <name>_" in out.output
                and "1 files there match no dataset: customers/export.csv" in out.output), out.output
        import dagster as dg

        with dg.DagsterInstance.get() as inst:
            assert inst.get_runs() == []  # refused before any run started
        stores.landing().delete("customers/export.csv")
        land("people_2026.csv", people())
        land("stray/notes.csv", pd.DataFrame({"x": [1]}))
        out = _cli("materialize")
        assert out.exit_code == 0, out.output
        assert "1 file in landing match no dataset and were not read: stray/notes.csv (a dataset's files sit in landing/<name>/ " \
               "or start with <name>_, e.g. people/export.csv)" in out.output


@pytest.mark.parametrize("fill", [None, "zero", "mean", "drop"])
def test_missing_numbers_are_an_error_with_the_count_or_filled_and_counted_as_declared(tmp_path, fill):
    numeric = ["tenure", "age" if fill is None else {"column": "age", "fill": fill}]
    declared = {**MINIMAL, "features": {"dataset": "people", "numeric": numeric},
                "models": {"churn": {"label": "churned", "task": "binary", "positive_class": "yes"}}}
    rows = people()
    rows.loc[[3, 50, 77, 120, 201], "age"] = np.nan
    with home(tmp_path, declared):
        land("people/export.csv", rows)
        out = _cli("materialize")
        if fill is None:
            assert out.exit_code == 1 and "Traceback" not in out.output
            assert ("error: people (every landing file): features.numeric 'age': 5 rows have no numeric value; declare how to "
                    "fill it ({column: age, fill: zero | mean | drop}, or features.fill)") in out.output, out.output
            import dagster as dg

            with dg.DagsterInstance.get() as inst:
                assert inst.get_runs() == []  # said before any run started
            return
        assert out.exit_code == 0, out.output
        lines = [line for line in out.output.splitlines() if line.startswith("training_shards_churn: 'age'")]
        assert lines == [f"training_shards_churn: 'age' had no value in 5 training rows, filled as declared ({fill})"], out.output
        trained = pd.concat([stores.table(stores.lake(), "training_shards_churn", p) for p in ("shard_00", "shard_01")])
        assert trained["num_age"].notna().all()
        assert len(trained) == (235 if fill == "drop" else 240)
        if fill == "zero":
            assert (trained["num_age"] == 0).sum() == 5


@pytest.mark.parametrize("fill", ["zero", "mean"])
def test_after_an_erasure_a_shards_training_rows_and_counts_are_those_a_build_without_the_subject_makes(tmp_path, fill):
    """An erasure recomputes the training rows of the changed buckets only, unless a number is filled with the
    shard's mean: that mean held the erased person's value in every filled row of the shard (a row of another
    bucket kept it; a row of the changed one got the mean of that bucket alone). The counts in the metadata
    are the shard's either way (from the changed buckets alone, subjects_without_consent went negative and
    filled_age counted the changed buckets' rows)."""
    import dagster as dg

    from erasure_pipeline.stores.buckets import bucket_of

    declared = {**MINIMAL, "datasets": {**MINIMAL["datasets"], "visits": {"id": "visit_id", "subject": "email", "timestamp": "at"}},
                "consent": {"column": "consent", "allowed_values": [True]},
                "features": {"dataset": "people", "numeric": ["tenure", {"column": "age", "fill": fill}],
                             "aggregates": [{"name": "n_visits", "dataset": "visits", "agg": "count"}]},
                "models": {"churn": {"label": "churned", "task": "binary", "positive_class": "yes"}}}
    rows = people()
    rows["consent"] = np.random.default_rng(2).random(len(rows)) < 0.8
    blanks = [3, 50, 77, 120, 201]
    rows.loc[blanks, "age"] = np.nan
    seen = visits([*rows["email"], *(f"stranger{i}@mail.example" for i in range(7))])
    keys = [identity.Keyer(PEPPER.encode(), 2, tuple(identity.DEFAULT_NORMALISE)).key(e) for e in rows["email"]]
    blank = keys[blanks[0]]
    part = identity.partition_key(identity.shard_of(blank, 2))
    # a consenting person with an age, in the blank row's shard but not in its bucket
    victim = next(i for i, k in enumerate(keys) if i not in blanks and rows["consent"][i] and identity.shard_of(k, 2) == identity.shard_of(blank, 2)
                  and bucket_of(k, 16) != bucket_of(blank, 16))

    def shard_now() -> tuple[pd.DataFrame, dict]:
        with dg.DagsterInstance.get() as inst:
            record = inst.fetch_materializations(dg.AssetRecordsFilter(asset_key=dg.AssetKey("training_shards_churn"),
                                                                      asset_partitions=[part]), limit=1).records[0]
        meta = {k: v.value for k, v in record.asset_materialization.metadata.items()}
        return stores.table(stores.lake(), "training_shards_churn", part).reset_index(drop=True), meta

    with home(tmp_path, declared):
        land("people/export.csv", rows)
        land("visits/export.csv", seen)
        assert _cli("materialize").exit_code == 0
        assert _cli("erase", rows["email"][victim]).exit_code == 0
        assert _cli("process").exit_code == 0
        erased, meta = shard_now()
    with home(tmp_path / "without", declared):
        land("people/export.csv", rows.drop(index=victim))
        land("visits/export.csv", seen[seen["email"] != rows["email"][victim]])
        assert _cli("materialize").exit_code == 0
        built, built_meta = shard_now()
    pd.testing.assert_frame_equal(erased, built)
    if fill == "mean":
        assert meta["subjects_recomputed"] == "all (filled with the shard's mean: age)"
    else:
        assert re.fullmatch(r"\d+ rows in 1 changed buckets", meta["subjects_recomputed"]), meta["subjects_recomputed"]
    for count in ("rows", "subjects_without_consent", "subjects_without_features_row", "filled_age"):
        assert meta[count] == built_meta[count] > 0, (count, meta[count], built_meta[count])


def test_subjects_without_a_features_row_are_counted_and_their_certificate_says_what_held_them(tmp_path):
    rows = people()
    strangers = [f"stranger{i}@mail.example" for i in range(7)]  # visit, never in the people table
    declared = {**MINIMAL, "datasets": {**MINIMAL["datasets"], "visits": {"id": "visit_id", "subject": "email", "timestamp": "at"}},
                "features": {"dataset": "people", "numeric": ["tenure"],
                             "aggregates": [{"name": "n_visits", "dataset": "visits", "agg": "count"}]},
                "models": {"churn": {"label": "churned", "task": "binary", "positive_class": "yes"}}}
    with home(tmp_path, declared):
        land("people/export.csv", rows)
        land("visits/export.csv", visits([*rows["email"], *strangers]))
        out = _cli("materialize")
        assert out.exit_code == 0, out.output
        assert ("training_shards_churn: 7 subjects have rows in an aggregated dataset but none in 'people' (features.dataset): "
                "they feed no training row") in out.output
        rid = _cli("erase", strangers[0]).output.strip()
        assert _cli("process").exit_code == 0
        certificate = _cli("certificate", rid).output
        shard = identity.partition_key(identity.shard_of(
            identity.Keyer(PEPPER.encode(), 2, tuple(identity.DEFAULT_NORMALISE)).key(strangers[0]), 2))
        assert re.search(rf"\| raw_visits\[{shard}\] \| yes \| RAW_REWRITE \|", certificate), certificate
        for node in ("raw_people", "training_shards_churn", "shard_models_churn"):
            row = next(line for line in certificate.splitlines() if line.startswith(f"| {node}[{shard}] |"))
            assert "| no | NO_DATA |" in row and "checked: held none of the subject's data" in row, row
        assert _cli("verify", rid).exit_code == 0


def test_a_model_below_its_floor_holds_back_only_itself(tmp_path):
    model = {"label": "churned", "task": "binary", "positive_class": "yes"}
    declared = {**MINIMAL, "cohorts": {"dataset": "people", "quasi_identifiers": ["plan_id"], "label": "churned", "positive_class": "yes"},
                "k_min": 3, "features": {"dataset": "people", "numeric": ["tenure", "age"]},
                "models": {"good": {**model, "quality": {"min": 0.5}}, "unreachable": {**model, "quality": {"min": 0.9999}}}}
    with home(tmp_path, declared):
        land("people/export.csv", people(400))
        out = _cli("materialize")
        assert out.exit_code == 1 and "Traceback" not in out.output
        failed = [line for line in out.output.splitlines() if line.startswith("check FAILED")]
        assert len(failed) == 1 and "ensemble_model_unreachable" in failed[0] and "meets_quality_floor" in failed[0], out.output
        from erasure_pipeline.stores import lake as lk

        lake = stores.lake()
        assert lake.read_bytes(lk.model_name("ensemble_model_good")) is not None  # built and published in the same run
        assert lake.read_bytes(lk.model_name("ensemble_model_unreachable")) is None
        assert lake.read_bytes(lk.model_name("ensemble_model_unreachable", "candidate")) is not None
        import dagster as dg

        with dg.DagsterInstance.get() as inst:
            for asset in ("ensemble_model_good", "ensemble_model_unreachable", "anonymised_cohorts", "cohort_model"):
                assert inst.get_latest_materialization_event(dg.AssetKey(asset)) is not None, asset
        models = _cli("models").output
        assert re.search(r"\| unreachable \| .* \| 1\.000 \| .* \| no \|", models), models


def test_a_lookup_table_is_one_unpartitioned_asset_joined_into_features_and_never_certified(tmp_path):
    declared = {**MINIMAL,
                "datasets": {**MINIMAL["datasets"], "plans": {"id": "plan_id", "subject": None}},
                "features": {"dataset": "people", "numeric": ["tenure", "price"],
                             "joins": [{"dataset": "plans", "on": "plan_id", "columns": ["price"]}]},
                "models": {"churn": {"label": "churned", "task": "binary", "positive_class": "yes"}}}
    rows = people()
    with home(tmp_path, declared):
        land("people/export.csv", rows)
        land("plans/prices.csv", pd.DataFrame({"plan_id": ["basic", "plus", "pro"], "price": [10.0, 20.0, 35.0]}))
        out = _cli("materialize")
        assert out.exit_code == 0, out.output
        import dagster as dg

        from erasure_pipeline.app.runner import get_instance
        from erasure_pipeline.core.policy import load_policy
        from erasure_pipeline.defs.pipeline import build_definitions

        graph = build_definitions(load_policy()).resolve_asset_graph()
        lookup = graph.get(dg.AssetKey("lookup_plans"))
        assert lookup.partitions_def is None and dg.AssetKey("training_shards_churn") in lookup.child_keys
        trained = pd.concat([stores.table(stores.lake(), "training_shards_churn", p) for p in ("shard_00", "shard_01")])
        prices = dict(zip(rows["person_id"], rows["plan_id"].map({"basic": 10.0, "plus": 20.0, "pro": 35.0}), strict=True))
        assert set(trained["num_price"]) == set(prices.values())
        with get_instance() as inst:
            assert inst.get_latest_materialization_event(dg.AssetKey("lookup_plans")).asset_materialization.metadata["rows"].value == 3
        rid = _cli("erase", rows["email"].iloc[0]).output.strip()
        assert _cli("process").exit_code == 0
        certificate = _cli("certificate", rid).output
        assert "lookup_plans" not in certificate
        assert _cli("verify", rid).exit_code == 0
        # a new price list rebuilds the lookup and the training sets that join it, in one run
        land("plans/prices.csv", pd.DataFrame({"plan_id": ["basic", "plus", "pro"], "price": [12.0, 20.0, 35.0]}))
        again = _cli("materialize")
        assert again.exit_code == 0, again.output
        trained = pd.concat([stores.table(stores.lake(), "training_shards_churn", p) for p in ("shard_00", "shard_01")])
        assert 12.0 in set(trained["num_price"]) and 10.0 not in set(trained["num_price"])


def test_models_prints_the_holdout_metric_beside_an_unsharded_baseline_and_the_estimator_names(demo_home):
    out = _cli("models")
    assert out.exit_code == 0, out.output
    row = next(line for line in out.output.splitlines() if line.startswith("| model |") and "binary" in line)
    cells = [c.strip() for c in row.strip("|").split("|")]
    ensemble, unsharded, cost, floor = (float(c) for c in cells[4:8])
    assert 0.5 <= ensemble <= 1 and 0.5 <= unsharded <= 1 and cost == pytest.approx(unsharded - ensemble, abs=2e-3) and floor == 0.5
    assert re.fullmatch(r"\d+ \(0: \d+, 1: \d+\)", cells[8]) and cells[9] == "yes"
    for name in ("logistic_regression", "hist_gradient_boosting_regressor", "random_forest"):
        assert re.search(rf"^  {name}\s+(classifier|regressor): ", out.output, re.MULTILINE), name
    from erasure_pipeline.core.declaration import ESTIMATORS
    from erasure_pipeline.ml.estimators import _aliases

    assert set(ESTIMATORS) == set(_aliases())  # the names listed are the names built
    data = __import__("json").loads(_cli("models", "--json").output)
    assert data["models"][0]["unsharded_measured"].startswith("ingest run, ")


def test_the_cli_prints_no_telemetry_banner_on_an_instance_without_a_dagster_yaml(tmp_path, monkeypatch):
    with home(tmp_path, MINIMAL):
        bare = tmp_path / "bare_dagster_home"  # DAGSTER_HOME set by the user, nothing in it yet
        bare.mkdir()
        monkeypatch.setenv("DAGSTER_HOME", str(bare))
        land("people/export.csv", people())
        out = _cli("materialize")
        assert out.exit_code == 0, out.output
        assert "Telemetry" not in out.output and "dagster.yaml" not in out.output, out.output
        assert "enabled: false" in (bare / "dagster.yaml").read_text()


@pytest.mark.parametrize(("how", "shard", "sealed"), [(how, shard, False) for how in ("one batch", "materialize again", "cycle")
                                                      for shard in ("other", "same")] + [("cycle", "other", True)])
def test_an_id_sent_again_under_another_subject_is_one_row_and_erasing_them_leaves_none(tmp_path, how, shard, sealed):
    """Later files win on id across subjects: a corrected attribution moves the row, wherever the old one is (the
    old subject's shard or another, the same batch or an earlier one), and erasing its new subject leaves no copy.
    ``sealed``: the id column is declared personal, so the lake holds it sealed and the claim opens it to compare."""
    rows = people(40)
    keyer = identity.Keyer(PEPPER.encode(), 2, tuple(identity.DEFAULT_NORMALISE))
    old_shard = identity.shard_of(keyer.key(rows["email"][5]), 2)
    other = next(e for i in range(100) if (e := f"someone{i}.else@mail.example")
                 and (identity.shard_of(keyer.key(e), 2) == old_shard) == (shard == "same"))
    declared = {**MINIMAL, "datasets": {"people": {**MINIMAL["datasets"]["people"], "personal": ["person_id"]}}} if sealed else MINIMAL
    with home(tmp_path, declared):
        land("people/export1.csv", rows)
        if how != "one batch":
            assert _cli("materialize").exit_code == 0
        land("people/export2.csv", rows.iloc[[5]].assign(email=other, age=99.0))  # later files win on id
        out = _cli("cycle") if how == "cycle" else _cli("materialize")
        assert out.exit_code == 0, out.output
        if (how, shard) != ("one batch", "same"):  # there the shard's staged rows already keep the later one only
            assert re.search(r"people: \d+ rows read, [12] older rows replaced by their id sent again under another subject", out.output), out.output

        def held() -> pd.DataFrame:
            return pd.concat([stores.table(stores.lake(), "raw_people", p) for p in ("shard_00", "shard_01")])

        moved = held()[lambda df: df["person_id"] == "p-00005"]
        assert len(moved) == 1 and moved["age"].tolist() == [99.0] and moved["email"].tolist() == [other], moved
        assert len(held()) == 40
        raw_held = {(r["asset"], r["partition"]) for r in stores.default_ledger().nodes.provenance_for([keyer.key(rows["email"][5])])
                    if r["asset"] == "raw_people"}
        assert raw_held == set(), raw_held  # the old subject holds nothing in the lake now, and the ledger says so
        rid = _cli("erase", other).output.strip()
        assert _cli("process").exit_code == 0
        assert (held()["person_id"] == "p-00005").sum() == 0 and len(held()) == 39
        assert _cli("verify", rid).exit_code == 0
