"""benchmarks/gpu_check.py's result as markdown (OUT/gpu_check.md): one table per section."""

from __future__ import annotations

from normrepro import gpu_hours

VARIANT_TITLES = {
    "fp32": "fp32",
    "cl": "channels_last",
    "bf16": "bf16",
    "cl_bf16": "cl + bf16 (trainer)",
    "pack2": "packed K=2",
    "pack5": "packed K=5",
    "compile": "compile default",
    "compile_ro": "compile reduce-overhead",
}


def _ms(s: dict | None) -> str:
    return f"{s['median'] * 1e3:.2f} ({s['low'] * 1e3:.2f}-{s['high'] * 1e3:.2f})" if s else "-"


def _x(s: dict | None) -> str:
    return f"{s['median']:.2f}x ({s['low']:.2f}-{s['high']:.2f})" if s else "-"


def header(r: dict) -> list[str]:
    env = r.get("env", {})
    lines = [
        f"# GPU check: {env.get('device_name')} ({r['mode']} mode)",
        "",
        f"{r['date']} | torch {env.get('torch')} | CUDA {env.get('cuda')} | cuDNN "
        f"{env.get('cudnn')} | git {str(env.get('git_rev'))[:10]} | {r.get('elapsed_s')} s | "
        f"`{r['command']}`",
    ]
    if r["mode"] == "cpu":
        lines += ["", "**CPU mode: tiny sizes that test the code paths; no number here is a "
                  "GPU measurement.**"]  # fmt: skip
    lines += ["", "| section | status | seconds | note |", "|---|---|---|---|"]
    for name, e in r["sections"].items():
        lines.append(f"| {name} | {e['status']} | {e.get('seconds', '-')} | {e.get('why', '')} |")
    return lines


def variant_tables(cells: list[dict], title: str, base: str) -> list[str]:
    """Step time per variant, and images/s ratios to `base`, one row per (norm, batch)."""
    names = list(dict.fromkeys(n for c in cells for n in c["variants"]))
    lines = ["", f"## {title}", "", "Step time, ms: median (lowest-highest round); a pack's step "
             "trains K runs.", "", "| norm | batch | " + " | ".join(VARIANT_TITLES[n] for n in names)
             + " |", "|---|---|" + "---|" * len(names)]  # fmt: skip
    for c in cells:
        lines.append(f"| {c['norm']} | {c['batch']} | "
                     + " | ".join(_ms(c["variants"].get(n, {}).get("step_s")) for n in names)
                     + " |")  # fmt: skip
    others = [n for n in names if n != base]
    lines += ["", f"Images/s (all runs of a pack) over {VARIANT_TITLES[base]}'s, per round: "
              "median (range).", "", "| norm | batch | " + " | ".join(VARIANT_TITLES[n] for n in others)
              + " |", "|---|---|" + "---|" * len(others)]  # fmt: skip
    for c in cells:
        lines.append(f"| {c['norm']} | {c['batch']} | "
                     + " | ".join(_x(c["variants"].get(n, {}).get("ratio_to", {}).get(base))
                                  for n in others) + " |")  # fmt: skip
    return lines


def big_models(rows: list[dict]) -> list[str]:
    lines = ["", "## Other models, trainer setting (channels_last + bf16)", "",
             "| model | norm | batch | ms/step | images/s |", "|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        lines.append(f"| {r['model']} | {r['norm']} | {r['batch']} | {_ms(r['step_s'])} | "
                     f"{r['images_per_s']:.0f} |")  # fmt: skip
    return lines


def pipeline(rows: list[dict]) -> list[str]:
    lines = ["", "## Input pipeline alone (crop + flip + normalize, resident uint8)", "",
             "| batch | images/s (median) | range |", "|---|---|---|"]  # fmt: skip
    for r in rows:
        lines.append(f"| {r['batch']} | {r['median']:.0f} | {r['low']:.0f}-{r['high']:.0f} |")
    return lines


def parity(p: dict) -> list[str]:
    s = p["summary"]
    lines = ["", f"## bf16 parity: ResNet-20, {p['epochs']} epochs, batch {p['batch']}, "
             f"{p['data_root']}", "", "| norm | seed | fp32 test acc | bf16 test acc | bf16 - fp32 |",
             "|---|---|---|---|---|"]  # fmt: skip
    for r in p["rows"]:
        lines.append(f"| {r['norm']} | {r['seed']} | {r['fp32'] * 100:.2f} % | "
                     f"{r['bf16'] * 100:.2f} % | {r['diff'] * 100:+.2f} |")  # fmt: skip
    lines += ["", f"Mean bf16 - fp32: {s['mean'] * 100:+.2f} points (range {s['low'] * 100:+.2f} "
              f"to {s['high'] * 100:+.2f}, sd {s['sd'] * 100:.2f}, {s['n']} pairs)."]  # fmt: skip
    return lines


def markdown(r: dict) -> list[str]:
    lines = header(r)
    ok = {n: e["result"] for n, e in r["sections"].items() if e["status"] == "ok"}
    if ok.get("resnet20"):
        lines += variant_tables(ok["resnet20"], "ResNet-20 (eager)", "fp32")
    if ok.get("compile", {}).get("cells"):
        lines += variant_tables(ok["compile"]["cells"], "ResNet-20, torch.compile "
                                f"({ok['compile']['backend']})", "cl_bf16")  # fmt: skip
    for what in ("skipped_for_time", "failed"):
        if ok.get("compile", {}).get(what):
            lines += ["", f"compile {what.replace('_', ' ')}: {ok['compile'][what]}"]
    if ok.get("big_models"):
        lines += big_models(ok["big_models"])
    if ok.get("pipeline"):
        lines += pipeline(ok["pipeline"])
    if ok.get("parity"):
        lines += parity(ok["parity"])
    if ok.get("slots"):
        s = ok["slots"]
        lines += ["", "## GPU slots", "", f"Two trainers, one GPU ({s['gpu']}): both waited while "
                  f"it was held; the second started {s['second_started_after_first_finished_s']} s "
                  f"after the first finished (devices: {s['devices']})."]  # fmt: skip
    if ok.get("cuda_tests"):
        t = ok["cuda_tests"]
        lines += ["", "## CUDA-only tests", "", f"`{' '.join(t['nodes'])}`: {t['summary']}"]
    if ok.get("gpu_hours"):
        name = r.get("env", {}).get("device_name", "?")
        lines += ["", "## GPU-hours of the full-scale grid (measured step times)", ""]
        lines += gpu_hours.markdown(ok["gpu_hours"]["studies"], name, ok["gpu_hours"]["pack"])
    d = r.get("decisions")
    if d:
        packs = "; ".join(
            f"batch {b}: K={v['k']} ({v['ratio']:.2f}x)" for b, v in d["pack"].items()
        )
        lines += ["", "## Decisions this measurement implies", "",
                  f"- runtime.pack auto on this device: {packs or 'not measured'}"]  # fmt: skip
        lines += [f"- {w}" for w in d.get("why", [])]
    return lines
