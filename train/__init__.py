"""finetune-phi's training recipe: `python -m train` (see train/__main__.py)."""
