"""finetune-phi's deploy side: models the recipe registered in MLflow, served and deployed.

Layering: deploy meets training only through the MLflow model it logged (and the tokenizer
artifacts logged beside it) and the neutral `common` package (payload contract, generation,
Azure workspace and environments). Inside, one room per concern, each saying in its `__init__`
what it owns and may import (tests/test_layers.py holds them to it): registry/ (finding and
loading the model), scoring/ (Azure's score.py: imports nothing from this package), serve/ (the
local server), azure/ (managed online endpoints), evaluate/ (evaluation and promotion).
`__main__.py` hands each (target, action) to the function that owns it.
"""

from common.quiet import quiet_known_noise

quiet_known_noise()  # before torch, torchao and azure-core are imported: they speak on import
