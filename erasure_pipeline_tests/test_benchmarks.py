"""The benchmarks still run: each at a toy size, in its own process, as `make bench` runs them at full size.

Timings are not asserted (benchmarks/RESULTS.md holds them); what is asserted is that each command finishes and
measures what it says: a benchmark that reads landing after a build that removed it measured nothing, silently,
until these ran.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _bench(module: str, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", f"benchmarks.{module}", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done.stdout


def _row(out: str, label: str) -> list[str]:
    (line,) = [ln for ln in out.splitlines() if ln.startswith(f"| {label} |")]
    return [c.strip() for c in line.strip("|").split("|")]


@pytest.mark.slow
def test_erasure_cost_measures_every_operation_against_a_floor_that_read_something():
    out = _bench("erasure_cost", "--subjects", "300", "--batch", "5", "--subjects-per-file", "100", "--fresh", "2")
    rebuild = _row(out, "full rebuild")  # the floor table: read + write once, fits, merges, total
    assert float(rebuild[1]) > 0, "the rebuild floor read no landing file"
    # two more timed in a process that built nothing: subjects, median, min, max
    fresh = _row(out, "erase 1 subject, one after another (the first, which warms the process, left out)")
    assert int(fresh[1]) == 2 and 0 < float(fresh[3]) <= float(fresh[2]) <= float(fresh[4])
    for op in ("full rebuild of every asset (all partitions + merges)", "erase 1 subject (request -> certificate)",
               "erase 5 subjects in one tick (request -> certificates)"):
        runs, merges, wall, floor, ratio = _row(out, op)[1:6]
        assert int(runs) == 1 and int(merges) == 3 and float(wall) > 0 and float(floor) > 0 and float(ratio) > 0


@pytest.mark.slow
def test_build_memory_samples_the_claim_and_every_node():
    out = _bench("build_memory", "--subjects", "300", "--subjects-per-file", "100", "--every", "0.01")
    sampled = {ln.split("|")[1].strip(): float(ln.split("|")[2].replace(",", "")) for ln in out.splitlines()
               if ln.startswith("| ") and not ln.startswith("| running")}
    assert {"claim: staging", "raw_subjects", "training_shards", "ensemble_model"} <= set(sampled), sampled
    assert all(v > 0 for v in sampled.values())


@pytest.mark.slow
def test_verify_batch_checks_every_certificate_it_filed():
    out = _bench("verify_batch", "--subjects", "200", "--requests", "5")
    row = _row(out, "5")  # requests, demo build s, process s, verify --since s, ...
    assert all(float(v) > 0 for v in row[1:4])


@pytest.mark.slow
def test_membership_audit_audits_the_erased_and_the_kept():
    out = _bench("membership_audit", "--subjects", "600", "--targets", "20", "--estimators", "logistic_regression")
    for audited in ("erased subjects", "control: members kept"):
        (line,) = [ln for ln in out.splitlines() if ln.startswith(f"| logistic_regression | {audited} |")]
        assert line.split("|")[3].strip() == "20"


@pytest.mark.slow
def test_staging_format_writes_and_reads_every_staged_file_in_both_formats():
    out = _bench("staging_format", "--subjects", "200", "--repeats", "1")
    for name in ("subjects", "events", "tickets"):
        row = _row(out, name)  # files, rows per file, then write/read ms and bytes of each format
        assert int(row[1]) > 0 and all(float(v.replace(",", "")) > 0 for v in row[2:]), row


@pytest.mark.slow
def test_build_pairs_builds_the_base_and_this_checkout_and_compares_them():
    out = _bench("build_pairs", "--base", "HEAD", "--subjects", "200", "--subjects-per-file", "100", "--pairs", "1")
    base, this, ratio = (float(v) for v in _row(out, "median of 1 pairs")[1:4])
    assert base > 0 and this > 0 and ratio == pytest.approx(this / base, rel=1e-2)
    assert float(_row(out, "raw_events")[1]) > 0  # the steps and nodes come from each build's own event log


@pytest.mark.slow
def test_provenance_records_records_and_looks_up_with_the_base_and_this_checkout():
    out = _bench("provenance_records", "--base", "HEAD", "--subjects", "2000", "--shards", "4", "--pairs", "1")
    for label in ("a build's provenance recorded (s)", "provenance_for 100 subjects (ms)", "ledger file after them (MiB)"):
        base, this, ratio = (float(v) for v in _row(out, label)[1:4])
        assert base > 0 and this > 0 and ratio == pytest.approx(this / base, rel=1e-2)
    assert "The base's ledger opened by this checkout (ledger version" in out


@pytest.mark.slow
def test_sealing_cost_builds_each_variant_in_a_process_of_its_own_and_compares_them():
    out = _bench("sealing_cost", "--subjects", "300", "--subjects-per-file", "150", "--repeats", "1", "--erasures", "1")
    plain, sealed, ratio = (float(v) for v in _row(out, "pair 1 (back to back)")[1:4])
    assert plain > 0 and sealed > 0 and ratio == pytest.approx(sealed / plain, rel=1e-2)
    cells = _row(out, "seal (AES-256-GCM, one per distinct subject and value)")
    assert int(cells[1].replace(",", "")) > 300  # every declared cell of the three tables sealed, in memory
    assert "data keys held" in out and "peak RSS of a variant's process: plain" in out  # each child's own result


@pytest.mark.slow
def test_instance_storage_erases_on_both_storages_of_one_home():
    out = _bench("instance_storage", "--subjects", "300", "--subjects-per-file", "100", "-n", "1", "--batch", "2", "--passes", "1")
    one = _row(out, "one subject, median of every erasure")  # Dagster's classes, the project's, ratio
    assert float(one[1]) > 0 and float(one[2]) > 0
    assert _row(out, "2 subjects in one tick, median of the passes")


@pytest.mark.slow
def test_erasure_pairs_erases_the_same_subjects_with_the_base_and_this_checkout():
    out = _bench("erasure_pairs", "--base", "HEAD", "--subjects", "300", "--subjects-per-file", "100", "-n", "1", "--batch", "2",
                 "--pairs", "1")
    for what in ("one subject, median of the copy's singles", "2 subjects in one tick"):
        base, this, ratio = (float(v) for v in _row(out, f"{what}: median of 1 pairs")[1:4])
        assert base > 0 and this > 0 and ratio == pytest.approx(this / base, rel=1e-2)


def test_the_demos_subject_ids_are_the_generators_without_generating_the_rest():
    from erasure_pipeline.app.demo import generate, subject_ids

    assert subject_ids(50, 3) == generate(50, 3)["subjects"]["subject_id"].tolist()
