"""s3:// URLs: normalised once, so that "inside a root" is a prefix test on whole segments."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.documents.sections import resolve_url, resolved_roots, split_roots
from service.errors import PathOutsideRootsError
from volumes.urls import join_url, normalise_url, url_under
from workers.confine import confined
from workers.errors import PathEscapeError, SpecError
from workers.storage import run_base


def test_urls_are_normalised_and_dot_dot_refused() -> None:
    assert normalise_url("s3://lab//em/./v.zarr/") == "s3://lab/em/v.zarr"
    assert join_url("s3://lab/em", "a//b") == "s3://lab/em/a/b"
    for bad in ("s3://lab/em/../x", "s3:///em", "s3://../em", "file:///em"):
        with pytest.raises(ValueError):
            normalise_url(bad)


def test_inside_a_root_is_whole_segments() -> None:
    assert url_under("s3://lab/em/v.zarr", "s3://lab/em") and url_under("s3://lab/em", "s3://lab/em")
    assert not url_under("s3://lab/em2/v.zarr", "s3://lab/em")
    assert not url_under("s3://lab2/em/v.zarr", "s3://lab/em")


def test_roots_keep_the_url_colon_and_confine_urls() -> None:
    assert split_roots("/data:s3://lab/em::/scratch") == ["/data", "s3://lab/em", "/scratch"]
    roots = resolved_roots(["/data", "s3://lab//em/"])
    assert roots == [Path("/data").resolve(), "s3://lab/em"]
    assert resolve_url("s3://lab/em/./v.zarr", roots, "input.path") == "s3://lab/em/v.zarr"
    for bad in ("s3://lab/em/../other/v.zarr", "s3://lab/emx/v.zarr"):
        with pytest.raises(PathOutsideRootsError) as err:
            resolve_url(bad, roots, "input.path")
        assert err.value.field == "input.path"
    assert confined("s3://lab/em/v.zarr", ["s3://lab/em"]) is not None
    with pytest.raises(PathEscapeError):
        confined("s3://lab/other/v.zarr", ["/data", "s3://lab/em"])


def test_the_run_folder_of_a_url_output_is_under_the_scratch_dir(tmp_path: Path) -> None:
    assert run_base("/data/out.zarr", {}) == Path("/data/out.zarr")
    env = {"PYTC_SCRATCH_DIR": str(tmp_path)}
    assert run_base("s3://lab/em/out.zarr", env) == tmp_path.resolve() / "s3" / "lab" / "em" / "out.zarr"
    with pytest.raises(SpecError, match="PYTC_SCRATCH_DIR"):
        run_base("s3://lab/em/out.zarr", {})
