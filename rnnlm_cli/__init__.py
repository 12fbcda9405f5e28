"""rnnlm: recurrent neural network language models from the command line.

The library is usable without the CLI: see ``rnnlm_cli.data`` (datasets), ``rnnlm_cli.train``,
``rnnlm_cli.evaluate``, ``rnnlm_cli.generate`` and ``rnnlm_cli.checkpoint``.
"""

__version__ = "0.1.0"
