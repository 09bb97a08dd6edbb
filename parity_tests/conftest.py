import pytest

from conftest import gpu_pair_available


@pytest.fixture(params=["cpu", pytest.param("gpu", marks=pytest.mark.gpu)])
def device(request):
    """Every parity case runs on the CPU; the GPU copy runs where JAX and torch both
    see a GPU and is skipped with the reason otherwise."""
    if request.param == "gpu":
        ok, why = gpu_pair_available()
        if not ok:
            pytest.skip(f"GPU parity: {why}")
    return request.param
