"""The sections of benchmarks/gpu_check.py: each takes the Check and returns its result (JSON)."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from gpu_check_runs import (
    find_data,
    parity_configs,
    run_cuda_tests,
    scratch,
    tiny_jpeg_tree,
    two_trainers_one_gpu,
)
from gpu_check_timing import COMPILED, EAGER, TRAINER, Cell, time_cell, time_pipeline

from normrepro import config, data, gpu_hours, grid, pack_policy, switch_policy

REPO = Path(__file__).resolve().parents[1]
BIG_STUDIES = ("wrn_table", "nf_grid", "nf_final")  # the grid's models other than ResNet-20
PACK_K = 5  # the GPU-hour table's packed column: runtime.pack 5 (the seeds of a cell)


def full_params() -> dict:
    """The effective full-scale params of params.yaml (validated: the preflight made sure that
    jsonschema, which the trainer needs too, is there)."""
    return config.load_params(REPO / "params.yaml", {"scale": "full"})


def splits(check):
    """Synthetic CIFAR-shaped images on the device, enough for every timed epoch."""
    if not hasattr(check, "splits"):
        s = check.sizes
        n = max(s["steps"] * max(s["batches"]), s["pipeline_images"], 256 * s["big_steps"])
        cfg = {"name": "synthetic", "train_subset": n, "test_subset": 10, "val_size": 0,
               "image_size": s["image_size"]}  # fmt: skip
        check.splits = data.load_splits(cfg, check.device)
    return check.splits


def resnet20_cell(check, norm: str, batch: int) -> Cell:
    norm_kw = (("groups", 8),) if norm == "gn" else ()
    return Cell("resnet20", norm, batch, tuple(sorted(check.sizes["model_kw"].items())), norm_kw)


def resnet20(check) -> list[dict]:
    s, out = check.sizes, []
    for norm in s["norms"]:
        for batch in s["batches"]:
            cell = resnet20_cell(check, norm, batch)
            res = time_cell(cell, EAGER, splits(check), check.device, s["steps"], s["rounds"],
                            s["warmup"])  # fmt: skip
            out.append({"model": "resnet20", "norm": norm, "batch": batch, "variants": res})
            check.say(f"  {cell.label}: " + ", ".join(
                f"{n} {v['step_s']['median'] * 1e3:.2f} ms" for n, v in res.items()))  # fmt: skip
    return out


def big_cells(check) -> list[Cell]:
    """Each distinct (model, norm, batch) of the grid's other studies, as the grid builds it."""
    params, cap = full_params(), check.sizes["big_batch_cap"]
    tiny = params.get("smoke", {}).get("model_kw", {}) if cap else {}
    cells = {}
    for name in BIG_STUDIES:
        for cfg in grid.study_runs(params, name):
            model_kw = {**cfg["model_kw"], **tiny.get(cfg["model"], {})}
            batch = min(cfg["batch_size"], cap) if cap else cfg["batch_size"]
            cell = Cell(cfg["model"], cfg["norm"], batch, tuple(sorted(model_kw.items())),
                        tuple(sorted(cfg["norm_kw"].items())), cfg["augment"], cfg["normalize"])  # fmt: skip
            cells.setdefault((cell.model, cell.norm, cell.batch), cell)
    return list(cells.values())


def big_models(check) -> list[dict]:
    s, out = check.sizes, []
    for cell in big_cells(check):
        res = time_cell(cell, [TRAINER], splits(check), check.device, s["big_steps"],
                        s["big_rounds"], 1)[TRAINER.name]  # fmt: skip
        out.append({"model": cell.model, "norm": cell.norm, "batch": cell.batch, **res})
        check.say(f"  {cell.label}: {res['step_s']['median'] * 1e3:.1f} ms/step, "
                  f"{res['images_per_s']:.0f} images/s")  # fmt: skip
    return out


def pipeline(check) -> list[dict]:
    s = check.sizes
    out = [{"batch": b, **time_pipeline(splits(check), check.device, b, s["pipeline_images"],
                                        s["rounds"])} for b in s["batches"]]  # fmt: skip
    for r in out:
        check.say(f"  batch {r['batch']}: {r['median']:.0f} images/s")
    return out


def parity(check) -> dict:
    from gpu_check_runs import parity as run_parity

    s, args = check.sizes, check.args
    work = scratch(check.out, args.keep_runs)
    if check.mode == "cpu" and not args.data_root:
        root = tiny_jpeg_tree(work / "jpeg")  # the same imagefolder path, made to size
    else:
        root = find_data(args.data_root, args.data_tarball)
    if root is None:
        raise FileNotFoundError(
            "no CIFAR-10 JPEG tree: give --data-tarball ../shared/data/cifar10-jpeg-10k.tar.gz "
            "or --data-root, or put it at data/cifar10-jpeg"
        )
    cfgs = parity_configs(full_params(), root, s["parity_epochs"], s["parity_batch"],
                          s["parity_seeds"], s["model_kw"], {})  # fmt: skip
    result = run_parity(cfgs, work, check.mode, check.say)
    result["data_root"] = str(root)
    sm = result["summary"]
    check.say(f"  bf16 - fp32: {sm['mean'] * 100:+.2f} points (range {sm['low'] * 100:+.2f} .. "
              f"{sm['high'] * 100:+.2f}, {sm['n']} pairs)")  # fmt: skip
    return result


def slots(check) -> dict:
    s = check.sizes
    res = two_trainers_one_gpu(scratch(check.out, check.args.keep_runs), check.mode == "cuda",
                               s["slot_epochs"], s["slot_images"])  # fmt: skip
    if not res["ok"]:
        raise AssertionError(f"the second trainer did not wait for the first: {res}")
    return res


def cuda_tests(check) -> dict:
    res = run_cuda_tests(check.out)
    check.say(f"  {res['summary']}")
    if res["exit_code"] not in (0,):
        raise AssertionError(f"pytest exited {res['exit_code']}: {res['summary']}")
    return res


def compile_cells(check) -> list[tuple[str, int]]:
    """(norm, batch) in the order they are worth the budget: batch 2 (where CUDA graphs should
    gain most), then the largest, then the rest; the CPU mode does one (the code path)."""
    s = check.sizes
    if check.mode == "cpu":
        return [(s["norms"][0], s["batches"][0])]
    order = [s["batches"][0], s["batches"][-1], *s["batches"][1:-1]]
    return [(norm, b) for b in order for norm in s["norms"]]


def compiled(check) -> dict:
    """torch.compile (default, reduce-overhead) beside eager in the trainer's setting: each
    compiled variant timed in rounds interleaved with its own eager baseline, cell by cell while
    the budget lasts (skipped when the longest compile so far would not fit). A mode that fails
    (a CUDA-graph limitation, say) is recorded and the others go on."""
    s, out, skipped, failed = check.sizes, [], [], []
    longest = s["compile_est_s"]
    backend = "eager" if check.mode == "cpu" else None  # CPU: dynamo only, no C compiler
    for norm, batch in compile_cells(check):
        cell, variants = resnet20_cell(check, norm, batch), {}
        for v in COMPILED:
            if check.mode == "cuda" and check.elapsed() + longest > check.args.budget_s:
                skipped.append({"norm": norm, "batch": batch, "variant": v.name})
                continue
            torch._dynamo.reset()  # compiles afresh, static at this batch size, as train.py does
            try:
                res = time_cell(cell, [TRAINER, v], splits(check), check.device, s["steps"],
                                s["rounds"], s["warmup"], backend)  # fmt: skip
            except Exception as err:  # noqa: BLE001 - recorded, and the next mode goes on
                failed.append({"norm": norm, "batch": batch, "variant": v.name,
                               "error": f"{type(err).__name__}: {err}"[:500]})  # fmt: skip
                check.say(f"  {cell.label} {v.name}: failed ({failed[-1]['error'][:200]})")
                continue
            longest = max(longest, res[v.name]["warmup_s"])
            variants.setdefault(TRAINER.name, res[TRAINER.name])
            variants[v.name] = res[v.name]
            check.say(f"  {cell.label} {v.name}: {res[v.name]['ratio_to'][TRAINER.name]['median']:.2f}x "
                      f"eager (compiling and warm-up {res[v.name]['warmup_s']:.0f} s)")  # fmt: skip
        if len(variants) > 1:
            out.append({"model": "resnet20", "norm": norm, "batch": batch, "variants": variants})
    return {"cells": out, "skipped_for_time": skipped, "failed": failed,
            "backend": "eager (dynamo only)" if check.mode == "cpu" else "inductor"}  # fmt: skip


def ok(result: dict, name: str):
    """A section's result, when it ran to the end."""
    entry = result["sections"].get(name, {})
    return entry.get("result") if entry.get("status") == "ok" else None


def step_times(result: dict) -> gpu_hours.StepTimes:
    """The trainer-setting step times measured, keyed as gpu_hours looks them up."""
    times = gpu_hours.StepTimes()
    for cell in ok(result, "resnet20") or []:
        for v in (TRAINER, *[x for x in EAGER if x.k > 1]):
            r = cell["variants"][v.name]
            times.add("resnet20", cell["norm"], cell["batch"], v.k, r["step_s"]["median"])
    for r in ok(result, "big_models") or []:
        times.add(r["model"], r["norm"], r["batch"], 1, r["step_s"]["median"])
    return times


def gpu_hours_section(check) -> dict:
    hours = gpu_hours.grid_hours(full_params(), step_times(check.result), PACK_K)
    a = hours["all"]
    check.say(f"  all studies: {a['hours']:.1f} GPU-h unpacked, {a['packed_hours']:.1f} packed "
              f"(K = {PACK_K}); {a['unmeasured']} runs unmeasured")  # fmt: skip
    return {"studies": hours, "pack": PACK_K}


# gpu_check.SECTIONS's names -> the functions, in the order they run
SECTIONS = {
    "resnet20": resnet20,
    "big_models": big_models,
    "pipeline": pipeline,
    "parity": parity,
    "slots": slots,
    "cuda_tests": cuda_tests,
    "compile": compiled,
    "gpu_hours": gpu_hours_section,
}


def measured_for_policies(result: dict) -> tuple[list[dict], dict]:
    """(pack ratio records for pack_policy, the switch measurement for switch_policy)."""
    ratios, speed = [], {"cl": [], "bf16": [], "cl_bf16": []}
    for cell in ok(result, "resnet20") or []:
        v = cell["variants"]
        for name in speed:
            speed[name].append(v[name]["ratio_to"]["fp32"]["median"])
        for p in (x for x in EAGER if x.k > 1):
            r = v[p.name]["ratio_to"][TRAINER.name]
            ratios.append({"norm": cell["norm"], "batch": cell["batch"], "k": p.k,
                           "median": round(r["median"], 3), "low": round(r["low"], 3),
                           "high": round(r["high"], 3), "rounds": result["sizes"]["rounds"]})  # fmt: skip
    comp = [c["variants"]["compile"]["ratio_to"][TRAINER.name]["median"]
            for c in (ok(result, "compile") or {}).get("cells", [])]  # fmt: skip
    par = ok(result, "parity")
    measured = {"speed": speed, "compile": comp,
                "parity": par["summary"] if par else None}  # fmt: skip
    return ratios, measured


def decisions(result: dict) -> dict:
    """What auto would choose on this device from this measurement (nothing is written)."""
    ratios, measured = measured_for_policies(result)
    out = {"pack": {str(b): {"k": k, "ratio": round(r, 3)}
                    for b, (k, r) in pack_policy.choose(ratios).items()}}  # fmt: skip
    if measured["speed"]["cl_bf16"]:
        switches, why = switch_policy.decide(measured)
        out["switches"], out["why"] = switches, why
    return out


def write_policies(result: dict) -> list[str]:
    """Record a CUDA check's measurements where auto reads them, with the check's provenance."""
    if result["mode"] != "cuda":
        raise ValueError(f"a {result['mode']}-mode check is no GPU measurement: nothing written")
    ratios, measured = measured_for_policies(result)
    env, lines = result["env"], []
    source = f"{result['command']} ({result['date']})"
    if ratios:
        path = pack_policy.record("cuda", ratios, source, env["device_name"], torch=env["torch"],
                                  cuda=env["cuda"], model="resnet20")  # fmt: skip
        lines.append(f"wrote {path}: {pack_policy.describe('cuda')}")
    if measured["speed"]["cl_bf16"]:
        path = switch_policy.record(copy.deepcopy(measured), source, env["device_name"],
                                    torch=env["torch"], cuda=env["cuda"])  # fmt: skip
        lines.append(f"wrote {path}: CUDA switches {switch_policy.cuda_switches()}")
    return lines
