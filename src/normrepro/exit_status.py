"""The grid's exit status: `snakemake` ends non-zero when a run it was asked for failed.

A crashed run is recorded `failed` by its job, and that job succeeds, so every other run still
trains and the study still aggregates into the report. Only at the very end, from the
Snakefile's `onsuccess:` / `onerror:` handlers, does this module read the state of the planned
runs of the studies in the invocation's DAG (what its targets need: the grid, or one study) and,
when any of them did not finish, print how many and where their logs are as the last lines,
then end the command with exit status 1, so a script or a cluster wrapper can tell.
"""

from __future__ import annotations

from pathlib import Path

from normrepro import runs


def dag_studies(dag) -> set[str]:
    """The studies whose jobs (train, aggregate) are in the DAG, jobs with nothing to do
    included: what the invocation's targets need (the grid, or one study)."""
    return {
        str(job.wildcards_dict["study"])
        for job in dag.jobs
        if "study" in (getattr(job, "wildcards_dict", None) or {})
    }


def unfinished(planned: list[dict], results: str) -> list[dict]:
    """read_state (plus `run_dir`) of each run that did not end ok or diverged."""
    out = []
    for cfg in planned:
        run = runs.run_dir(results, cfg)
        state = runs.read_state(run, cfg["config_hash"])
        if state["status"] not in runs.FINISHED:
            out.append({**state, "run_dir": str(run)})
    return out


def summary(failed: list[dict], total: int) -> str:
    """The last lines of a grid with failed runs: how many, and each one's log."""
    lines = [f"{len(failed)} of {total} runs did not finish (every other job of this command did):"]
    for state in failed:
        where = state.get("log_path") or state.get("note") or "no log"
        lines.append(f"  {state['run_dir']}: {state['status']}; log: {where}")
    lines.append(
        "Read each log and fix its cause, then rerun the same command: only these runs train "
        "again (finished runs are kept)."
    )
    return "\n".join(lines)


def end_of_grid(workflow, planned: list[dict], results: str | Path, ended_ok: bool) -> None:
    """The Snakefile's onsuccess (ended_ok) / onerror handler. `planned`: every run config of
    the grid; the DAG says which of them this invocation needed. After a successful invocation
    with a failed run: exit 1, the summary as the last lines. After a failed one (Snakemake
    exits 1 itself): the summary, before Snakemake's own last lines."""
    dag = getattr(workflow, "dag", None)
    if dag is not None:
        studies = dag_studies(dag)
        planned = [cfg for cfg in planned if cfg["study"] in studies]
    failed = unfinished(planned, str(results))
    if not failed:
        return
    from snakemake.logging import logger

    logger.error(summary(failed, len(planned)))
    if ended_ok:
        raise SystemExit(1)
