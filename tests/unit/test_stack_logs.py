"""A failed test's report carries what the stacks logged while it ran (tests/conftest.py), from these two."""

import localstack


def test_logs_since_gives_only_the_lines_written_after_the_sizes_were_taken(tmp_path, monkeypatch):
    monkeypatch.setattr(localstack, "LOG_DIRS", [tmp_path])
    gateway, worker = tmp_path / "gateway.log", tmp_path / "worker0.log"
    gateway.write_text("started\n")
    worker.write_text("ready\n")
    sizes = localstack.log_sizes()
    with gateway.open("a") as log:
        log.write("ERROR unhandled error\nTraceback (most recent call last):\n")
    (tmp_path / "worker1.log").write_text("a worker started during the test\n")

    logged = localstack.logs_since(sizes)
    assert f"== {gateway} ==\nERROR unhandled error\nTraceback (most recent call last):" in logged
    assert "a worker started during the test" in logged
    assert "started\n" not in logged and str(worker) not in logged  # nothing new there


def test_logs_since_keeps_each_files_last_lines(tmp_path, monkeypatch):
    monkeypatch.setattr(localstack, "LOG_DIRS", [tmp_path])
    log = tmp_path / "gateway.log"
    log.write_text("".join(f"line {n}\n" for n in range(500)))
    logged = localstack.logs_since({}, max_lines=3)
    assert logged.splitlines() == [f"== {log} ==", "line 497", "line 498", "line 499"]
