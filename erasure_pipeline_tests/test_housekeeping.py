import os
import time

from click.testing import CliRunner

from erasure_pipeline.app.cli import main
from erasure_pipeline.app.housekeeping import prune_compute_logs


def _log(path, age_days):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("step output")
    t = time.time() - age_days * 86_400
    os.utime(path, (t, t))


def test_prune_compute_logs_keeps_recent_and_removes_empty_dirs(tmp_path):
    _log(tmp_path / "storage" / "run-a" / "compute_logs" / "x.err", 40)
    _log(tmp_path / "storage" / "run-b" / "compute_logs" / "y.out", 1)
    assert prune_compute_logs(tmp_path / "storage", 30, dry_run=True).files == 1
    assert (tmp_path / "storage" / "run-a" / "compute_logs" / "x.err").exists()
    pruned = prune_compute_logs(tmp_path / "storage", 30)
    assert pruned.files == 1 and pruned.bytes == len("step output") and pruned.directories == 2
    assert not (tmp_path / "storage" / "run-a").exists() and (tmp_path / "storage" / "run-b" / "compute_logs" / "y.out").exists()
    assert prune_compute_logs(tmp_path / "missing", 1).files == 0


def test_housekeeping_cli_prunes_the_instance_compute_logs(empty_home):
    base = empty_home / "dagster" / "storage"
    _log(base / "old-run" / "compute_logs" / "step.err", 10)
    out = CliRunner().invoke(main, ["housekeeping", "--compute-log-days", "7"])
    assert out.exit_code == 0, out.output
    assert "deleted 1 compute-log files" in out.output and not (base / "old-run").exists()
