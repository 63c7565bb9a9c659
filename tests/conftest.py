"""Suite-wide settings."""

import os

import torch

# The suite runs tiny models, where thread start-up costs more than it saves; one thread also keeps
# runs on a shared 2-core CI machine predictable.
torch.set_num_threads(1)
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a model hub
