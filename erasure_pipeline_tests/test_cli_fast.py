"""The CLI's ledger commands answer without loading Dagster, pandas, scikit-learn or numpy (how fast they are is
measured in ``benchmarks/cli_startup.py``, not asserted here); ``verify`` checks many certificates in one pass."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from click.testing import CliRunner

from erasure_pipeline.app.cli import main
from erasure_pipeline.app.process import drain
from erasure_pipeline.erasure.intake import erase
from erasure_pipeline_tests.conftest import defs_and_policy, instance
from erasure_pipeline_tests.erasure_helpers import pick_subjects

HEAVY = {"dagster", "pandas", "sklearn", "numpy", "pyarrow", "qdrant_client"}


def _cli(*args):
    return CliRunner().invoke(main, list(args))


def _imported(*args: str) -> set[str]:
    """Top-level packages a fresh ``erasure-pipeline ARGS`` process imports."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "erasure_pipeline.app.cli", *args], env=os.environ.copy(),
                          capture_output=True, text=True, check=False)
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    return {m.group(1).strip().split(".")[0] for m in re.finditer(r"import time:\s+\d+ \|\s+\d+ \|(.*)", done.stderr)}


def test_ledger_commands_import_neither_dagster_nor_pandas_nor_scikit_learn(demo_home, tmp_path):
    defs, policy = defs_and_policy()
    (sid, _shard), (other, _s2) = pick_subjects(policy.shards, with_tickets=2)
    done, pending = erase(sid)[0], erase(other)[0]
    assert not drain(defs, instance()).failed_runs
    pending = _cli("erase", "someone.new@example.com").output.strip()
    certificate = tmp_path / "cert.json"
    certificate.write_text(_cli("certificate", done, "--json").output)
    commands = [["erase", "another.one@example.com"], ["status", done], ["status", "--overdue"], ["hold", pending, "--reason", "legal"],
                ["release", pending], ["extend", pending, "--reason", "backlog"], ["retry", pending], ["signing-key"],
                ["certificate", done, "--json"], ["verify", "--certificate", str(certificate)], ["where"]]
    _imported("erase", "warm.up@example.com")  # the first intake after a declaration change validates it (pydantic, yaml)
    for command in commands:
        heavy = HEAVY & _imported(*command)
        assert not heavy, (command, heavy)
    assert "pydantic" not in _imported("status", done)


@pytest.mark.parametrize("how", ["ids", "since"])
def test_verify_checks_many_certificates_in_one_pass_and_names_each_that_fails(demo_home, how):
    defs, policy = defs_and_policy()
    chosen = pick_subjects(policy.shards, with_tickets=3)
    rids = [erase(sid)[0] for sid, _shard in chosen]
    assert not drain(defs, instance()).failed_runs
    args = rids if how == "ids" else ["--since", "2000-01-01"]
    out = _cli("verify", *args)
    assert out.exit_code == 0, out.output
    assert out.output.strip().endswith("3 certificates: every claim holds")
    for rid in rids:
        assert re.search(rf"^{rid}: all \d+ claims hold$", out.output, re.MULTILINE)
    # A shard partition replaced behind the pipeline's back: the certificates whose claims it breaks are named.
    from erasure_pipeline_tests import stores

    lake = stores.lake()
    shard = chosen[0][1]
    name = f"shard_models/shard_{shard:02d}.pkl"
    lake.write_bytes(name, b"not a model")
    out = _cli("verify", *args)
    assert out.exit_code == 1 and "Traceback" not in out.output
    assert re.search(rf"^{rids[0]}: \d+ of \d+ claims do not hold$", out.output, re.MULTILINE), out.output
    assert "certificates have claims that do not hold" in out.output
