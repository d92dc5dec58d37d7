from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from interlock.server.background import background_server
from interlock.v1 import interlock_pb2_grpc as pb_grpc
from tests.support.fixtures import box_agent, discrete_agent, loaded


@pytest.fixture
def server_config(tmp_path):
    return loaded([discrete_agent(), box_agent()], base_dir=tmp_path)


@pytest.fixture
def server(server_config):
    """A real Interlock server on 127.0.0.1 (port 0); no metrics HTTP port (see ``metrics_server``)."""
    with background_server(server_config) as srv:
        yield srv


@pytest.fixture
def metrics_server(server_config):
    """Like ``server``, with Prometheus metrics served on a free loopback port."""
    with background_server(server_config, metrics_port=0) as srv:
        yield srv


@pytest.fixture
def channel(server):
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        yield ch


@pytest.fixture
def stub(channel):
    return pb_grpc.GuardStub(channel)


HIGHWAY = Path(__file__).resolve().parents[1] / "examples" / "highway"


@pytest.fixture(scope="module")
def highway_on_path() -> Iterator[Path]:
    """examples/highway on sys.path for a module's tests (``pytestmark = pytest.mark.usefixtures(...)``):
    its plugins are modules of that folder, and Interlock does not put a config's folder on sys.path
    (the example's README says to)."""
    sys.path.insert(0, str(HIGHWAY))
    yield HIGHWAY
    sys.path.remove(str(HIGHWAY))
