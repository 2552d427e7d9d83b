"""The training recipe: `python -m train` (see train/recipe.py) and `python -m train.prepare`."""

import logging

# bitsandbytes warns on import, on CPUs with AVX512-BF16, that an optional CPU 4-bit kernel
# package is missing. QLoRA here needs CUDA anyway (train.model refuses it on CPU), so the
# warning only alarms users of every other command.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
