"""One module per command: ``NAME`` and ``command``, a thin function that parses, calls, renders."""
