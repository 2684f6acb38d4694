"""pgqueue's benchmark against PgQueuer: ``bin/bench --help``.

Not tests: these measure speed, never assert it. Every figure is measured for pgqueue and for
the peer in the same run, on fresh databases cloned from one migrated template, and printed
as median [min-max] of ``--runs`` runs with the command that reproduces it.
"""
