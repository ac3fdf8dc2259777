"""The HTTP server lifts the soft open-files limit, so ~1,000 sessions do not hit a shell's 1024."""

from __future__ import annotations

import resource

import pytest

from homeskillet.ingress.http_server import raise_fd_limit

NOFILE = resource.RLIMIT_NOFILE


@pytest.fixture
def restore_limit():  # type: ignore[no-untyped-def]
    before = resource.getrlimit(NOFILE)
    yield before
    resource.setrlimit(NOFILE, before)


def test_a_low_soft_limit_is_lifted_to_the_hard_limit(restore_limit: tuple[int, int]) -> None:
    _, hard = restore_limit
    if hard != resource.RLIM_INFINITY and hard <= 256:
        pytest.skip(f"the hard open-files limit here is {hard}: nothing above 256 to lift to")
    resource.setrlimit(NOFILE, (256, hard))
    expected = hard if hard != resource.RLIM_INFINITY else 1 << 16
    assert raise_fd_limit() == expected
    assert resource.getrlimit(NOFILE) == (expected, hard)


def test_a_soft_limit_already_at_the_hard_limit_is_left_alone(restore_limit: tuple[int, int]) -> None:
    _, hard = restore_limit
    if hard == resource.RLIM_INFINITY:
        pytest.skip("the hard open-files limit here is unlimited; the first test covers that case")
    resource.setrlimit(NOFILE, (hard, hard))
    assert raise_fd_limit() == hard
    assert resource.getrlimit(NOFILE) == (hard, hard)
