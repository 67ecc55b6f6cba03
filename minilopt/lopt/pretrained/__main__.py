"""`python -m minilopt.lopt.pretrained RUN_DIR --out DIR`: export θ from a meta-training run."""
from . import main

main()
