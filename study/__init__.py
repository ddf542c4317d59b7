"""Studies: search spaces, sweeps on Ray Tune recorded in Optuna, and reading them back.

One concern per module, each importing only those listed above it:

    records       the record schema (pure: names, TrialRecord, aggregation, ranking)
    records_sql   the fast SQL read of Optuna's tables (reader's fast path)
    redaction     masking passwords in storage URLs and in texts that quote them
    storage       storage URLs: default, redaction, connectivity check, opening for writes
    space         search-space loading and validation; grids; typed trial configs of points
    reader        the one way to read a study: names, not-found, settings, counts, records
    points        which points a sweep runs (grid, random, TPE)
    lease         one live driver per study (a lease row with heartbeat and expiry)
    opening       creating or resuming a study; closing a dead driver's trials
    progress      the sweep's progress line
    driver_state  what the searcher and the recorder share
    searcher      the Tune searcher (one trial config per point)
    storage_writer  the sweep's single background writer
    recorder      the Tune callback that records every trial in Optuna
    ray_cluster   starting or joining Ray, quietly
    runner        run_sweep(space, SweepOptions): the Python API of `proxstudy run`
    status, export  what `proxstudy status` / `list` / `export` compute
    cli           the `proxstudy` command, a thin layer over the above
"""
