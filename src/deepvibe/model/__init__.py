"""The hybrid VAE, its loss and inference (uses nothing else of deepvibe but errors)."""

import os

# Training allocates weight gradients and (batch x tracks) activations afresh at every step;
# with transparent huge pages PyTorch's CPU allocator maps them in 2 MiB pages, which made a
# fresh 40 MB tensor 5x cheaper here (docs/BENCHMARKS.md, Training throughput). Set it to 0
# before importing deepvibe to opt out.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
