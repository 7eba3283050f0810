"""The path guard: nothing that resolves outside the upload base is ever read."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.errors import ApiError
from sidecar.ocr.uploads import read_upload

SECRET = b"OUTSIDE-SECRET"
MAX = 1024 * 1024


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """root/base (the upload base), root/base2 (a sibling prefix), root/outside, with links."""
    root = tmp_path_factory.mktemp("guard")
    base = root / "base"
    (base / "tenant" / "deep").mkdir(parents=True)
    (base / "doc.pdf").write_bytes(b"%PDF-inside")
    (base / "tenant" / "deep" / "scan.png").write_bytes(b"inside-png")
    (root / "base2").mkdir()
    (root / "base2" / "doc.pdf").write_bytes(SECRET)
    (root / "outside").mkdir()
    (root / "outside" / "secret.txt").write_bytes(SECRET)
    (root / "secret.txt").write_bytes(SECRET)
    os.symlink(root / "outside", base / "link_out_dir")
    os.symlink(root / "secret.txt", base / "link_out_file")
    os.symlink(base / "doc.pdf", base / "tenant" / "link_in_file")
    os.symlink("../..", base / "tenant" / "deep" / "up2")
    os.symlink("loop_b", base / "loop_a")
    os.symlink("loop_a", base / "loop_b")
    os.link(root / "secret.txt", base / "hard_link_out")
    os.mkfifo(base / "fifo")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(base / "sock"))  # opening a socket file fails with ENXIO
    return root


def status_of(base: Path, user_path: str) -> int | bytes:
    try:
        return read_upload(base, user_path, MAX)
    except ApiError as error:
        return error.status


@pytest.mark.parametrize(
    ("user_path", "expected"),
    [
        ("doc.pdf", b"%PDF-inside"),
        ("./tenant/../doc.pdf", b"%PDF-inside"),
        ("tenant/deep/scan.png", b"inside-png"),
        ("tenant/link_in_file", b"%PDF-inside"),
        ("../secret.txt", 403),
        ("../base2/doc.pdf", 403),
        ("tenant/../../outside/secret.txt", 403),
        ("link_out_dir/secret.txt", 403),
        ("link_out_file", 403),
        # abspath() folds "up2/.." lexically before realpath(): this names tenant/deep/secret.txt
        ("tenant/deep/up2/../secret.txt", 404),
        ("tenant/deep/up2/doc.pdf", b"%PDF-inside"),
        ("doc.pdf\x00.png", 403),
        ("%2e%2e/secret.txt", 403),
        ("%252e%252e%252fsecret.txt", 403),
        ("..%2fbase2%2fdoc.pdf", 403),
        ("/etc/passwd", 403),
        ("missing.pdf", 404),
        ("tenant", 404),
        ("fifo", 404),
        ("hard_link_out", 403),
        ("doc\ud800.pdf", 403),  # a lone surrogate: no filesystem name; realpath() raises
        ("sock", 404),
        ("a" * 300, 403),
        ("tenant/" + "d" * 300 + "/x.pdf", 403),
        ("loop_a", 403),
        (".", 404),
        ("", 403),
    ],
)
def test_corpus(corpus: Path, user_path: str, expected: int | bytes) -> None:
    assert status_of(corpus / "base", user_path) == expected


@pytest.mark.skipif(os.geteuid() != 0, reason="creating a device node needs root")
def test_a_device_node_in_the_base_is_refused(corpus: Path) -> None:
    # /dev/zero's numbers: were it opened and read, the read would never end (the size cap aside).
    os.mknod(corpus / "base" / "zero", stat.S_IFCHR | 0o666, os.makedev(1, 5))
    assert status_of(corpus / "base", "zero") == 404


def test_absolute_paths_inside_the_base_are_accepted(corpus: Path) -> None:
    base = corpus / "base"
    assert status_of(base, str(base / "doc.pdf")) == b"%PDF-inside"
    assert status_of(base, str(corpus / "base2" / "doc.pdf")) == 403  # sibling prefix


def test_size_limit(corpus: Path) -> None:
    base = corpus / "base"
    with pytest.raises(ApiError) as caught:
        read_upload(base, "doc.pdf", max_bytes=4)
    assert caught.value.code == "payload_too_large"


def test_details_never_name_the_resolved_path(corpus: Path) -> None:
    for user_path in ("../secret.txt", "missing.pdf", "fifo", "link_out_file"):
        with pytest.raises(ApiError) as caught:
            read_upload(corpus / "base", user_path, MAX)
        assert str(corpus) not in caught.value.detail


SEGMENTS = st.sampled_from(
    [
        "..",
        ".",
        "",
        "base",
        "base2",
        "tenant",
        "deep",
        "up2",
        "doc.pdf",
        "secret.txt",
        "outside",
        "link_out_dir",
        "link_out_file",
        "link_in_file",
        "scan.png",
        "%2e%2e",
        "%2f",
        "..%2f",
        "%252e",
        "loop_a",
    ]
)


@settings(
    max_examples=400,
    # the corpus fixture is read-only; "too slow" is a wall-clock check (see tests/conftest.py)
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(segments=st.lists(SEGMENTS, min_size=1, max_size=7), absolute=st.booleans())
def test_no_generated_path_escapes(corpus: Path, segments: list[str], absolute: bool) -> None:
    base = corpus / "base"
    user_path = "/".join(segments)
    if absolute:
        user_path = str(corpus) + "/" + user_path
    try:
        data = read_upload(base, user_path, MAX)
    except ApiError as error:
        assert error.code in {"path_forbidden", "document_not_found"}
        return
    # Accepted: what was read came from inside, and the path really resolves inside.
    assert data != SECRET
    real = os.path.realpath(os.path.join(base, user_path))
    assert os.path.commonpath([os.path.realpath(base), real]) == os.path.realpath(base)
