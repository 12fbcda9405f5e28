"""One module (or small package) per command: plain functions that take a config dataclass and return a result.

No job imports another; what two of them share lives a floor below, in ``rnnlm_cli.scoring``. The one exception is
``demo``, whose work is to run the others on the bundled corpus.
"""
