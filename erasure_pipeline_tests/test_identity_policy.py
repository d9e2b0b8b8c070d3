import hashlib
import hmac
import logging
import multiprocessing
from pathlib import Path

import pytest
import yaml

from erasure_pipeline.app.demo import demo_graph, demo_policy
from erasure_pipeline.core import identity
from erasure_pipeline.core.policy import PolicyError, load_policy, parse_policy


def test_subject_key_is_hmac_sha256_and_shard_rule():
    key = identity.subject_key(b"pepper", "ana@example.com")
    assert key == hmac.new(b"pepper", b"ana@example.com", hashlib.sha256).hexdigest()
    assert identity.shard_of(key, 16) == int(key[:8], 16) % 16
    assert identity.subject_keys(b"pepper", ["ana@example.com", "x"]) == [key, identity.subject_key(b"pepper", "x")]
    assert identity.partition_keys(3) == ["shard_00", "shard_01", "shard_02"]
    assert identity.shard_from_partition("shard_07") == 7



@pytest.mark.parametrize("kind", ["list", "object series", "arrow series", "arrow", "chunked", "large", "sliced", "numpy", "ragged"])
def test_hex_digits_of_keys_read_as_int_of_their_digits_whatever_holds_them(kind):
    import numpy as np
    import pandas as pd
    import pyarrow as pa

    keys = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(1000)]
    held = {"list": keys, "object series": pd.Series(keys, dtype=object), "arrow series": pd.Series(keys, dtype="string[pyarrow]"),
            "arrow": pa.array(keys), "chunked": pa.chunked_array([keys[:7], keys[7:]]), "large": pa.array(keys, pa.large_string()),
            "sliced": pa.array(["x", *keys]).slice(1), "numpy": np.array(keys), "ragged": [k + "0" * (i % 3) for i, k in enumerate(keys)]}[kind]
    for start, end in [(0, 8), (16, 24), (0, 16), (3, 8)]:
        got = identity.hex_digits(held, start, end)
        assert got.dtype == np.uint64 and got.tolist() == [int(k[start:end], 16) for k in keys]
    assert identity.shards_of(held, 16).tolist() == [identity.shard_of(k, 16) for k in keys]
    assert identity.hex_digits([], 0, 8).tolist() == [] and identity.hex_digits(["ab"], 0, 2).tolist() == [0xAB]

@pytest.mark.parametrize("bad", ["", "   ", "a\x00b", "x" * 600, 42, None])
def test_invalid_subject_ids_are_refused_without_echo(bad):
    with pytest.raises(identity.InvalidSubjectId) as err:
        identity.validate_subject_id(bad)
    if isinstance(bad, str) and bad.strip():
        assert bad not in str(err.value)


def test_pepper_env_wins_and_local_default_is_generated_once_with_warning(tmp_path, caplog):
    assert identity.load_pepper("s3cret", tmp_path) == b"s3cret"
    with caplog.at_level(logging.WARNING):
        first = identity.load_pepper(None, tmp_path)
    assert "ERASURE_PIPELINE_PEPPER is not set" in caplog.text
    assert len(first) == 64
    assert identity.load_pepper(None, tmp_path) == first
    assert (tmp_path / "pepper.key").stat().st_mode & 0o777 == 0o600


MINIMAL = {"datasets": {"people": {"id": "person_id", "subject": "email"}}}
"""The least a declaration says: one dataset, its id and its subject column."""


def _with_model(**model) -> dict:
    return {**MINIMAL, "features": {"dataset": "people", "numeric": ["age"]},
            "models": {"model": {"label": "churned", "task": "binary", **model}}}


def _load_local_secrets(home: str, barrier, out) -> None:
    from erasure_pipeline.core.signing import load_signer

    barrier.wait()  # every process finds no pepper and no signing key, and makes them at once
    out.put((identity.load_pepper(None, Path(home)), load_signer(None, Path(home)).key_id))


def test_processes_starting_at_once_on_a_fresh_home_share_one_pepper_and_one_signing_key(tmp_path):
    """A daemon, a webserver and a CLI started together on a new home: each must read the one pepper and signing key
    the first of them wrote, not make its own (keys that match no other process's, certificates no key checks)."""
    ctx = multiprocessing.get_context("spawn")
    barrier, out = ctx.Barrier(6), ctx.Queue()
    procs = [ctx.Process(target=_load_local_secrets, args=(str(tmp_path), barrier, out)) for _ in range(6)]
    for p in procs:
        p.start()
    for p in procs:  # each result is a few bytes: the queue never holds a process back from exiting
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0] * 6  # none failed making or reading them
    seen = [out.get(timeout=10) for _ in procs]
    assert len(set(seen)) == 1
    assert seen[0][0] == (tmp_path / identity.PEPPER_FILE).read_text().strip().encode()
    assert sorted(f.name for f in tmp_path.iterdir()) == sorted([identity.PEPPER_FILE, "signing.key"])  # no temporary file left
    assert all((f.stat().st_mode & 0o777) == 0o600 for f in tmp_path.iterdir())


def test_a_secret_file_is_made_once_where_the_filesystem_has_no_hard_links(tmp_path, monkeypatch):
    from erasure_pipeline.core import files

    def no_links(*_a):
        raise PermissionError("hard links not supported")

    monkeypatch.setattr(files.os, "link", no_links)
    assert files.create_once(tmp_path / "pepper.key", b"first") is True
    assert files.create_once(tmp_path / "pepper.key", b"second") is False
    assert (tmp_path / "pepper.key").read_bytes() == b"first" and [f.name for f in tmp_path.iterdir()] == ["pepper.key"]
    assert (tmp_path / "pepper.key").stat().st_mode & 0o777 == 0o600


def test_a_policy_file_named_but_missing_is_an_error_and_none_found_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("ERASURE_PIPELINE_POLICY", str(tmp_path / "typo.yaml"))
    with pytest.raises(PolicyError, match=r"typo.yaml: the policy file \(\$ERASURE_PIPELINE_POLICY\) does not exist"):
        load_policy()
    with pytest.raises(PolicyError, match="missing.yaml: the policy file does not exist"):
        load_policy(tmp_path / "missing.yaml")
    monkeypatch.delenv("ERASURE_PIPELINE_POLICY")
    monkeypatch.setenv("ERASURE_PIPELINE_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PolicyError, match="no policy file: write policy.yaml here"):  # no built-in declaration to fall back on
        load_policy()
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "policy.yaml").write_text(yaml.safe_dump(MINIMAL))
    assert load_policy().datasets["people"].subject == "email"  # the project home's
    (tmp_path / "policy.yaml").write_text(yaml.safe_dump({**MINIMAL, "shards": 2}))
    assert load_policy().shards == 2  # the working directory's comes first


def test_policy_defaults_and_errors_name_the_field(tmp_path):
    assert parse_policy(MINIMAL).shards == 16 and parse_policy(MINIMAL).k_min == 10
    with pytest.raises(PolicyError, match=r"field 'datasets'"):
        parse_policy({})
    with pytest.raises(PolicyError, match=r"field 'k_min'"):
        parse_policy({**MINIMAL, "k_min": 1})
    from erasure_pipeline.ml.declared import check_declared

    with pytest.raises(PolicyError, match=r"field 'models.model.estimator': 'deep_net' is not an import path"):
        check_declared(parse_policy(_with_model(estimator="deep_net")))
    with pytest.raises(PolicyError, match=r"field 'models.model.estimator': cannot import module 'no_such_pkg'"):
        check_declared(parse_policy(_with_model(estimator="no_such_pkg:Model")))
    with pytest.raises(PolicyError, match=r"field 'models.model.estimator': ridge is a regressor; a binary model needs a classifier"):
        check_declared(parse_policy(_with_model(estimator="ridge")))
    with pytest.raises(PolicyError, match=r"field 'models.model.params': .* does not take these params"):
        check_declared(parse_policy(_with_model(estimator="sklearn.svm.LinearSVC", params={"depth": 3})))
    with pytest.raises(PolicyError, match=r"field 'features.aggregates.0.dataset': no dataset 'orders' is declared"):
        parse_policy({**MINIMAL, "features": {"dataset": "people", "aggregates": [{"name": "n_orders", "dataset": "orders", "agg": "count"}]}})
    with pytest.raises(PolicyError, match=r"field 'models.m.quality.min'|field 'models.m': .*quality.metric 'rmse'"):
        parse_policy({**MINIMAL, "features": {"dataset": "people"},
                      "models": {"m": {"label": "y", "task": "regression", "quality": {"metric": "rmse"}}}})
    with pytest.raises(PolicyError, match=r"field 'shardz'"):
        parse_policy({**MINIMAL, "shardz": 4})
    path = tmp_path / "policy.yaml"
    path.write_text("k_min: [oops")
    with pytest.raises(PolicyError, match="not valid YAML"):
        load_policy(path)


def test_code_versions_fold_in_exactly_the_fields_each_asset_reads():
    graph = demo_graph()
    POLICY_FIELDS = graph.names

    def code_version(policy, asset):
        return graph.code_version(policy, asset)

    base = demo_policy()
    model = base.models["model"].model_dump()
    changes = {
        "k_min": ({"k_min": 25}, {"anonymised_cohorts", "cohort_model"}),
        "consent": ({"consent": {"column": "consent_training", "allowed_values": ["yes"]}},
                    {"training_shards", "shard_models", "ensemble_model"}),
        "estimator": ({"models": {"model": {**model, "estimator": "random_forest"}}}, {"shard_models", "ensemble_model"}),
        "shards": ({"shards": 8}, set(POLICY_FIELDS)),
    }
    for name, (patch, expected) in changes.items():
        changed = demo_policy(**patch)
        stale = {a for a in POLICY_FIELDS if code_version(base, a) != code_version(changed, a)}
        assert stale == expected, name
