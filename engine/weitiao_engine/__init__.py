"""weitiao's training and inference engine: a thin layer over PyTorch, transformers and PEFT."""

import os

# OpenMP threads that spin while waiting stall badly when the cores are shared (a chat engine beside a
# training job, tests in parallel): measured 15-70x slower forwards on 2 busy cores. Passive waiting costs
# little on an idle machine. Must be set before torch loads; a user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
