"""The names users choose methods by: backbones, their precision and influence solvers.

One place on the ground floor, so that checking a name (``validation``),
offering it (the CLI, the plugin's forms) and running it (``core``) read the
same tuple and no module has to import the stage that runs it just to know
its name.
"""

from __future__ import annotations

# Built-in feature extractors (core/backbones.py); a torch module works too.
BACKBONES = ("efficientnet_lite0", "efficientnet_lite2", "resnet18")

# How a backbone runs (core/backbones.py): float32 (exact), bfloat16 where the
# hardware has it, or "auto" (bf16 only where the quality grid allowed it).
PRECISIONS = ("fp32", "bf16", "auto")

# Influence solvers. "linear" is the linear head's closed form
# (core/linear_influence.py); the others are pyDVL's (core/influence.py), kept
# as the reference and for a fine-tuned last block.
PYDVL_METHODS = ("direct", "cg", "lissa", "arnoldi", "nystroem", "ekfac")
METHODS = ("linear",) + PYDVL_METHODS

# With train_last_block the parameters are too many to form the Hessian, so
# only pyDVL's iterative and low-rank solvers apply.
BLOCK_METHODS = ("cg", "lissa", "arnoldi", "nystroem")
BLOCK_DEFAULT_METHOD = "nystroem"  # cheap self-influence from a low-rank sketch
