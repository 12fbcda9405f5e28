"""The command-line interface: parses options, calls one library function, renders the result."""
