"""The worker wing: ``worker`` is the composition root; see docs/architecture.md for one
line per module. Empty on purpose: importing one module of the wing loads only that one."""
