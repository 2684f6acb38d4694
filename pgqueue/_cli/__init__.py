"""The ``pgqueue`` command, one module per command group; ``main`` registers them all in
one list. Empty on purpose: importing ``common`` does not load every command."""
