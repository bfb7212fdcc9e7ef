import os
import tempfile

import numpy as np
import pytest

# Tests never read or write the user's tuning database (a tuned kernel would change what they test).
os.environ["SPARSEC_TUNING_DB"] = tempfile.mkdtemp(prefix="sparsec-test-tuning-")
# Each pytest-xdist worker gets its share of the cores: TVM's pool would otherwise take all of them
# in every worker, two workers' threads competing for each core.
os.environ.setdefault("TVM_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))))

from sparsec.backends import ort

RTOL, ATOL = 1e-3, 1e-4


def assert_matches_ort(compiled, model, feeds, rtol=RTOL, atol=ATOL):
    """The differential check: sparsec's outputs equal ORT's on the original model."""
    ours = compiled.run(feeds)
    reference = ort.run(model, feeds)
    assert len(ours) == len(reference)
    for got, want in zip(ours, reference):
        assert got.shape == want.shape and got.dtype == want.dtype
        np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)
    return ours


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def cuda_source(compiled) -> str:
    """The CUDA C of a model compiled for target "cuda" (its device module's source)."""
    executable = compiled._runner.executable
    host = executable.mod if hasattr(executable, "mod") else executable
    return "".join(device.inspect_source("cuda") for lib in host.imports for device in lib.imports if device.kind == "cuda")
