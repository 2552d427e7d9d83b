"""The training recipe: `python -m train` (see train/recipe.py) and `python -m train.prepare`."""

from common.quiet import quiet_known_noise

quiet_known_noise()  # before torch, torchao and bitsandbytes are imported: they speak on import
