"""``pytc`` in-process: spec errors exit 2 naming the field, before any cluster starts or file is written."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
import zarr

from service.cli import data_roots, main


def write_job(job_file: Path, **output: object) -> Path:
    doc = {
        "kind": "inference",
        "input": {"path": "em.zarr", "dataset": "raw"},
        "model": {"torchscript": "net.pt"},
        "window": {"patch_size": [5, 9, 9]},
        "output": {"path": "out.zarr", **output},
    }
    job_file.write_text(yaml.safe_dump(doc))
    return job_file


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.fixture
def root(tmp_path: Path) -> Path:
    zarr.open_group(str(tmp_path / "em.zarr"), mode="w").create_array("raw", shape=(8, 16, 16), dtype="uint8")
    return tmp_path


@pytest.fixture(autouse=True)
def no_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a spec error must not start a cluster")

    monkeypatch.setattr("service.cli.run.LazyCluster.client", refuse)
    monkeypatch.delenv("PYTC_SCHEDULER", raising=False)


def test_invalid_spec_exits_2_naming_the_field(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    job = write_job(root / "job.yaml", activation=["sigmoid", "none"])
    before = tree(root)
    assert main(["run", str(job), "--data-root", str(root)]) == 2
    assert "error: output.activation: " in capsys.readouterr().err
    assert tree(root) == before


def test_every_problem_is_listed(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    job = write_job(root / "job.yaml", formt="zarr3", dtype="int4")
    assert main(["run", str(job), "--data-root", str(root)]) == 2
    err = capsys.readouterr().err
    assert "error: output.formt: unknown field; did you mean 'format'?" in err
    assert "error: output.dtype: " in err


def test_path_outside_the_roots_exits_2(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    job = write_job(root / "job.yaml", path="../elsewhere.zarr")
    assert main(["run", str(job), "--data-root", str(root)]) == 2
    assert "error: output.path: " in capsys.readouterr().err
    assert not (root.parent / "elsewhere.zarr").exists()


def test_missing_input_dataset_exits_2(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    job = write_job(root / "job.yaml")
    job.write_text(job.read_text().replace("dataset: raw", "dataset: mito"))
    assert main(["run", str(job), "--data-root", str(root)]) == 2
    assert "error: input.dataset: " in capsys.readouterr().err


def test_data_roots_from_the_environment(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    job = write_job(root / "job.yaml", overwrite="no")
    monkeypatch.setenv("PYTC_DATA_ROOTS", f"{root}:/nonexistent")
    assert main(["run", str(job)]) == 2
    assert data_roots(None, {"PYTC_DATA_ROOTS": "/a::/b"}) == [Path("/a"), Path("/b")]
    assert data_roots([Path("/c")], {"PYTC_DATA_ROOTS": "/a"}) == [Path("/c")]
    assert data_roots(None, {}) == [Path.cwd()]


def test_yaml_error_exits_2_naming_the_line(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    job = root / "job.yaml"
    job.write_text("kind: inference\ninput: {path: [\n")
    assert main(["run", str(job), "--data-root", str(root)]) == 2
    assert f"error: {job}:" in capsys.readouterr().err


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert main(["frobnicate"]) == 2
    assert main(["synth", "out.zarr", "--shape", "1", "2"]) == 2


def test_synth_refuses_to_replace_without_overwrite(root: Path) -> None:
    assert main(["synth", str(root / "em.zarr"), "--shape", "4", "8", "8"]) == 2


def test_synth_writes_a_volume(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "s.zarr"
    assert (
        main(["synth", str(out), "--shape", "8", "32", "32", "--seed", "3", "--chunks", "8", "16", "16"]) == 0
    )
    assert capsys.readouterr().out.strip() == str(out)
    assert zarr.open_array(str(out / "raw" / "0"), mode="r").shape == (8, 32, 32)


@pytest.mark.parametrize(
    ("forks", "threads", "env", "kind"),
    [
        (True, 2, "1", "ProcessPool"),
        (True, 1, "1", "ThreadPool"),  # one task at a time: no process to fork
        (True, 2, "0", "ThreadPool"),  # PYTC_FORK_TASKS=0
        (False, 2, "1", "ThreadPool"),  # not a segmentation job (a pyramid after an inference)
    ],
)
def test_where_the_one_workers_tasks_run(
    monkeypatch: pytest.MonkeyPatch, forks: bool, threads: int, env: str, kind: str
) -> None:
    """``pytc run``'s local pool: a segmentation job's tasks in forked processes on Linux with
    ``--threads`` > 1, else on threads; none with a scheduler or several workers."""
    import sys

    from service.cli.run import LazyCluster

    if not sys.platform.startswith("linux") and kind == "ProcessPool":
        kind = "ThreadPool"
    monkeypatch.setenv("PYTC_FORK_TASKS", env)
    with LazyCluster(None, 1, threads, forks=forks) as cluster:
        assert type(cluster.local_pool()).__name__ == kind
        assert cluster.local_pool() is cluster.local_pool()
    with LazyCluster("tcp://127.0.0.1:1", 1, threads, forks=forks) as cluster:
        assert cluster.local_pool() is None
    with LazyCluster(None, 2, threads, forks=forks) as cluster:
        assert cluster.local_pool() is None
