# A killed run's stale lock is cleared when that is safe (src/stale_lock.py says how).
from normrepro import stale_lock

try:
    # Only the main process: cluster jobs and subprocesses re-read this Snakefile while it runs.
    NORMREPRO_FLOCK = (
        stale_lock.clear_stale_lock() if workflow.is_main_process else None
    )
except stale_lock.StaleLockError as err:
    raise WorkflowError(str(err)) from None
