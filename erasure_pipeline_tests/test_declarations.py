"""Your data, your features, your model: the examples' declarations end to end, and a dataset added by
declaration alone (no code change) with its raw asset, lineage and certificate row."""

from __future__ import annotations

import importlib.util
import re
import shutil
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from erasure_pipeline.app.cli import main
from erasure_pipeline.app.demo import write_landing
from erasure_pipeline.core import identity
from erasure_pipeline.stores import lake as lk
from erasure_pipeline_tests import stores
from erasure_pipeline_tests.conftest import PEPPER, project_env
from erasure_pipeline_tests.erasure_helpers import scan_for

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SIZES = {"single_table": 600, "five_tables": 500}


def _cli(*args):
    return CliRunner().invoke(main, list(args))


def _generator(example: str):
    spec = importlib.util.spec_from_file_location(f"example_{example}", EXAMPLES / example / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.generate


def _home(tmp_path: Path, example: str, name: str = "home", policy: str | None = None):
    """A project home with the example's declaration (and any code beside it) copied in."""
    home = tmp_path / name
    home.mkdir(parents=True)
    for f in (EXAMPLES / example).iterdir():
        if f.suffix == ".py" and f.name != "generate.py":
            shutil.copy(f, home / f.name)
    return project_env(home, policy or (EXAMPLES / example / "policy.yaml").read_text())


def _materialise(tables: dict[str, pd.DataFrame]) -> None:
    write_landing(stores.landing(), tables)
    out = _cli("materialize")
    assert out.exit_code == 0, out.output


def _without(tables: dict[str, pd.DataFrame], policy, ids: list[str]) -> dict[str, pd.DataFrame]:
    return {name: df[~df[policy.datasets[name].subject].isin(ids)] for name, df in tables.items()}


def _pick(tables: dict[str, pd.DataFrame], policy, n: int = 3) -> list[str]:
    """Subjects with rows in as many datasets as possible, in pairwise different shards."""
    keyer = policy.keyer(PEPPER.encode())
    present = pd.concat([df[policy.datasets[name].subject].value_counts().rename(name) for name, df in tables.items()], axis=1)
    ranked = present.notna().sum(axis=1).sort_values(ascending=False, kind="stable")
    out, shards = [], set()
    for sid in ranked.index:
        shard = identity.shard_of(keyer.key(sid), policy.shards)
        if shard not in shards:
            out.append(sid)
            shards.add(shard)
        if len(out) == n:
            return out
    raise AssertionError("not enough shards with subjects")


def _model_state(policy, graph):
    """Per model node partition: training rows and shard model fingerprints, and ensemble predictions."""
    store = stores.lake()
    state = {}
    for node in graph.nodes:
        if node.kind == "training_set":
            for p in identity.partition_keys(policy.shards):
                state[(node.name, p)] = stores.table(store, node.name, p)
        elif node.kind == "shard_model":
            for p in identity.partition_keys(policy.shards):
                state[(node.name, p)] = lk.model_fingerprint(lk.loads_model(store.read_bytes(lk.model_name(node.name, p))))
        elif node.kind == "ensemble":
            saved = lk.loads_model(store.read_bytes(lk.model_name(node.name, "candidate")))
            state[(node.name, None)] = saved
    return state


@pytest.mark.parametrize("example", ["single_table", "five_tables"])
def test_example_runs_end_to_end_erases_three_subjects_and_equals_a_retrain_without_them(tmp_path, example):
    from erasure_pipeline.core.policy import load_policy
    from erasure_pipeline.kinds.registry import graph_for

    tables = _generator(example)(SIZES[example], 1)
    with _home(tmp_path, example) as home:
        policy = load_policy()
        graph = graph_for(policy)
        _materialise(tables)
        with dg.DagsterInstance.get() as inst:
            keys = {k.to_user_string() for k in inst.get_asset_keys()}
        assert {f"raw_{d}" for d in policy.datasets} <= keys
        assert ("vector_index" in keys) == bool(policy.text_datasets)
        victims = _pick(tables, policy)
        rids, mentioned = [], 0
        for sid in victims:
            out = _cli("erase", sid, "--reason", "example test")
            assert out.exit_code == 0, out.output
            rids.append(out.output.strip().splitlines()[-1])
        out = _cli("process")
        assert out.exit_code == 0, out.output
        keyer = policy.keyer(PEPPER.encode())
        for sid, rid in zip(victims, rids, strict=True):
            out = _cli("verify", rid)
            assert out.exit_code == 0 and "claims hold" in out.output, out.output
            # their e-mail in a text of a subject in another shard: that partition is erased and certified too
            shard = identity.shard_of(keyer.key(sid), policy.shards)
            elsewhere = sorted({identity.partition_key(identity.shard_of(keyer.key(owner), policy.shards))
                                for d in policy.text_datasets for owner, texts in
                                zip(tables[d][policy.datasets[d].subject], tables[d][policy.datasets[d].text].astype(str).agg(" ".join, axis=1),
                                    strict=True)
                                if sid in texts and identity.shard_of(keyer.key(owner), policy.shards) != shard})
            certificate = _cli("certificate", rid).output
            for p in elsewhere:
                assert re.search(rf"\| raw_\w+\[{p}\] \| yes \| RAW_REWRITE \|", certificate), (p, certificate)
            mentioned += len(elsewhere)
        assert scan_for(home, victims) == []
        assert mentioned > 0 or not policy.text_datasets  # the data names some victims in others' text
        erased = _model_state(policy, graph)
    # The same declaration built from scratch on the data without the three subjects: bit for bit the same models.
    with _home(tmp_path, example, "fresh"):
        _materialise(_without(tables, policy, victims))
        fresh = _model_state(policy, graph)
    assert erased.keys() == fresh.keys()
    for key, value in erased.items():
        if isinstance(value, pd.DataFrame):
            pd.testing.assert_frame_equal(value, fresh[key], check_exact=True)
        elif isinstance(value, dict):
            X = pd.concat([erased[(key[0].replace("ensemble_model", "training_shards"), p)]
                           for p in identity.partition_keys(policy.shards)])[value["features"]].to_numpy(dtype="float64")
            model, other = value["model"], fresh[key]["model"]
            out = (model.predict_proba(X), other.predict_proba(X)) if hasattr(model, "predict_proba") else (model.predict(X), other.predict(X))
            np.testing.assert_array_equal(*out)
            assert value["metrics"] == fresh[key]["metrics"]
        else:
            assert value == fresh[key], key


ADDED = """
  visits:
    id: visit_id
    subject: email
    timestamp: at
"""


def test_a_dataset_added_to_the_declaration_is_a_raw_asset_with_lineage_provenance_and_a_certificate_row(tmp_path):
    from erasure_pipeline.core.policy import load_policy
    from erasure_pipeline.defs.pipeline import build_definitions

    text = (EXAMPLES / "single_table" / "policy.yaml").read_text()
    text = text.replace("    subject: email              # the data subject's id: hashed into subject_key, never stored in Dagster\n",
                        "    subject: email\n" + ADDED.lstrip("\n"))
    text = text.replace("  aggregates: []", "  aggregates:\n    - {name: n_visits, dataset: visits, agg: count, transform: log1p}")
    tables = _generator("single_table")(300, 2)
    rng = np.random.default_rng(0)
    owners = rng.integers(0, 300, 900)
    tables["visits"] = pd.DataFrame({
        "visit_id": [f"v-{i:05d}" for i in range(900)], "email": tables["customers"]["email"].to_numpy()[owners],
        "at": pd.Timestamp("2026-06-01", tz="UTC") + pd.to_timedelta(rng.integers(0, 100, 900), unit="D"),
        "page": rng.choice(["pricing", "docs", "cancel"], 900),
    })
    with _home(tmp_path, "single_table", policy=text):
        policy = load_policy()
        defs = build_definitions(policy)
        graph = defs.resolve_asset_graph()
        raw = dg.AssetKey("raw_visits")
        assert graph.get(raw).partitions_def.get_partition_keys() == identity.partition_keys(policy.shards)
        assert raw in graph.get(dg.AssetKey("training_shards_churn")).parent_keys
        assert dg.AssetKey("cohort_partials") not in graph.get(raw).child_keys  # cohorts read customers only
        _materialise(tables)
        victim = tables["visits"]["email"].iloc[0]
        rid = _cli("erase", victim).output.strip().splitlines()[-1]
        assert _cli("process").exit_code == 0
        certificate = _cli("certificate", rid).output
        shard = identity.partition_key(identity.shard_of(policy.keyer(PEPPER.encode()).key(victim), policy.shards))
        assert re.search(rf"\| raw_visits\[{shard}\] \| yes \| RAW_REWRITE \| \w+ \| \w+ \|", certificate), certificate
        assert "✅ no rows of the subject — raw_visits" in certificate
        assert _cli("verify", rid).exit_code == 0


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda t: t["orders"].drop(columns=["amount"]),
         "orders/demo.csv, column 'amount': column named by features.aggregates.1.column is missing"),
        (lambda t: t["reviews"].assign(posted_at=["not a date", *t["reviews"]["posted_at"].iloc[1:]]),
         "reviews/demo.csv, column 'posted_at', row 1 (line 2): must be a timestamp (ISO 8601)"),
        (lambda t: t["customers"].assign(tier=[*t["customers"]["tier"].iloc[:4], "platinum", *t["customers"]["tier"].iloc[5:]]),
         ("customers/demo.csv, column 'tier': row 5: a label value that is not one of models.tier.classes "
          "(1 distinct values holding 1 rows outside them)")),
    ],
    ids=["declared column missing", "bad timestamp", "unknown class"],
)
def test_bring_your_own_data_errors_are_one_line_naming_file_column_row_and_field(tmp_path, change, expected):
    tables = _generator("five_tables")(120, 3)
    table = expected.split("/")[0]
    tables[table] = change(tables)
    with _home(tmp_path, "five_tables"):
        write_landing(stores.landing(), tables)
        out = _cli("materialize")
    assert out.exit_code == 1 and "Traceback" not in out.output
    last = out.output.strip().splitlines()[-1]
    assert last.startswith("error: ") and last.endswith(expected), last
    assert "platinum" not in out.output and "not a date" not in out.output


def test_code_a_declaration_names_fails_at_load_as_one_line(tmp_path):
    text = (EXAMPLES / "five_tables" / "policy.yaml").read_text().replace("shop_features:payment_mix", "shop_features:no_such")
    with _home(tmp_path, "five_tables", policy=text):
        out = _cli("materialize")
    assert out.exit_code == 1
    assert out.output.strip().splitlines()[-1] == "error: field 'features.functions.0.function': module 'shop_features' has no 'no_such'"
