"""rnnlm: recurrent neural network language models from the command line.

The library is usable without the CLI: each command's work is a function in ``rnnlm_cli.jobs`` (``tokenize``,
``train``, ``evaluate``, ``tune``, ``rescore``, ``sample``, ``fill``, ``info``) taking a settings dataclass from
``rnnlm_cli.config``; ``rnnlm_cli.data`` reads datasets and ``rnnlm_cli.checkpoint`` checkpoints.
"""

__version__ = "0.1.0"
