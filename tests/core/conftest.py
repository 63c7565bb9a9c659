import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a model hub


import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(scope="module")
def one_thread():
    """Bit-identical runs for one machine configuration: the same CPU thread count throughout the
    module (``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
