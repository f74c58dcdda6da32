"""``rw_eval.json`` as Markdown: the tables docs/results.md quotes, written by the report.

    python -m benchmarks.quality.rw_eval_table [results/rw_eval.json]   # print them

``benchmarks.quality.rw_eval_report`` writes the same text to ``results/rw_eval.md`` after every finished
run, so the committed tables always match the committed JSON. The tables:

- per variant: validation loss (all domains) at the group's last iteration, median [min, max]
  over seeds; its paired difference to uniform, same form; the verdict; the weights' ESS and, on
  the noisy corpus, the random-token / duplicated documents' share of the total weight;
- per domain: each domain's median paired difference, ``*`` where its own verdict is lower or
  higher (beyond uniform's seed spread for that domain);
- documents as units minus rows (the same linupper run with sample units), paired by seed;
- the scale point: small_cpu's difference to uniform per seed beside tiny_cpu's (the clean group,
  same flags, same seeds).
"""

from __future__ import annotations

import json
import sys
from typing import List, Optional

GROUP_TITLES = {"clean": "clean, seq 128", "noisy": "noisy, seq 128",
                "noisy1024": "noisy, seq 1024", "scale": "scale: small_cpu, clean"}
MEAN_DOMAINS = "mean of domains"
FLAG_PREFIX = "--sample-reweight-"


def _num(x: Optional[float], spec: str) -> str:
    return "–" if x is None else format(x, spec).replace("-", "−")


def _percent(x: Optional[float]) -> str:
    return "–" if x is None else f"{x * 100:.1f} %"


def _spread(e: dict, spec: str) -> str:
    """``median [min, max]`` of a spread entry; the median alone for one seed."""
    if not e.get("n"):
        return ""
    if e["n"] == 1:
        return _num(e["median"], spec)
    return f"{_num(e['median'], spec)} [{_num(e['min'], spec)}, {_num(e['max'], spec)}]"


def _flags(flags: List[str]) -> str:
    """``--sample-reweight-strategy robust --sample-reweight-r 1.0`` -> ``strategy robust r 1.0``
    (in a code span)."""
    return "`" + " ".join(f.replace(FLAG_PREFIX, "") for f in flags) + "`"


def _row(cells) -> str:
    return "| " + " | ".join(cells) + " |"


def _in_plan_order(report: dict) -> List[str]:
    """Variant names by group, then by the order the plan lists them (uniform first)."""
    groups = report["settings"]["groups"]
    rank = {f"{g}-{label}": (i, j) for i, (g, spec) in enumerate(groups.items())
            for j, label in enumerate(spec["variants"])}
    return sorted(report["variants"], key=lambda v: rank.get(v, (len(groups), v)))


def variants_table(report: dict) -> str:
    lines = [_row(["group", "variant (flags without `--sample-reweight-`)", "seeds",
                   "val loss", "− uniform", "verdict", "ESS", "random / duplicated"]),
             _row(["---"] * 8)]
    shown = None
    for v in _in_plan_order(report):
        s = report["variants"][v]
        d = s.get("vs_uniform", {}).get("all", {})
        n = report["noise"].get(v)
        noise = " / ".join(_percent(n[k]["mass"]) for k in ("random", "duplicated")) if n else ""
        ess = "1" if s["label"] == "uniform" else _num(s.get("weight_ess"), ".3f")
        group = GROUP_TITLES.get(s["group"], s["group"]) if s["group"] != shown else ""
        shown = s["group"]
        lines.append(_row([group, _flags(s["flags"]), str(len(s["seeds"])),
                           _spread(s["final"]["all"], ".4f"), _spread(d, "+.4f"),
                           d.get("verdict", ""), ess, noise]))
    return "\n".join(lines)


def domains_table(report: dict) -> str:
    out = []
    variants = report["variants"]
    order = _in_plan_order(report)
    for group in dict.fromkeys(variants[v]["group"] for v in order):
        rows = {v: variants[v] for v in order
                if variants[v]["group"] == group and "vs_uniform" in variants[v]}
        if not rows:
            continue
        keys = [k for k in next(iter(rows.values()))["vs_uniform"] if k != "all"]
        out += [f"{GROUP_TITLES.get(group, group)}:", "",
                _row(["variant", *(k.replace(MEAN_DOMAINS, "mean") for k in keys)]),
                _row(["---"] * (len(keys) + 1))]
        for s in rows.values():
            cells = [s["vs_uniform"][k] for k in keys]
            out.append(_row([s["label"], *(
                _num(c["median"], "+.3f") + ("*" if c["verdict"] in ("lower", "higher") else "")
                if c.get("n") else "–" for c in cells)]))
        out.append("")
    return "\n".join(out).rstrip()


def scale_table(report: dict) -> str:
    lines = [_row(["variant", "small_cpu − uniform, per seed", "tiny_cpu (clean, same flags, "
                   "same seeds)", "small − tiny, median"]), _row(["---"] * 4)]
    for v in _in_plan_order(report):
        if v not in report["scale"]:
            continue
        e = report["scale"][v]
        small, tiny = e["small"], e.get("tiny") or {}
        per = lambda p: ", ".join(f"{sd}: {_num(x, '+.4f')}" for sd, x in p.items())  # noqa: E731
        gap = (small["median"] - tiny["median"]) if tiny.get("median") is not None else None
        lines.append(_row([_flags(report["variants"][v]["flags"]),
                           per(small["per_seed"]), per(tiny.get("per_seed", {})),
                           _num(gap, "+.4f")]))
    return "\n".join(lines)


def units_table(report: dict) -> str:
    """Documents minus rows per validation loss: median [min, max] over seeds, verdict, per seed."""
    u = report.get("units")
    if not u:
        return "No seed has both the document and the row run yet."
    lines = [_row(["validation loss", "seeds", "documents − rows", "verdict", "per seed"]),
             _row(["---"] * 5)]
    for k, e in u.items():
        lines.append(_row([k, str(e["n"]), _spread(e, "+.4f"), e["verdict"], ", ".join(
            f"{sd}: {_num(x, '+.4f')}" for sd, x in e["per_seed"].items())]))
    return "\n".join(lines)


def markdown(report: dict) -> str:
    """All three tables with the counts of runs behind them, as one Markdown text."""
    d = report["definitions"]
    return "\n".join([
        "# rw_eval: each variant against uniform",
        "",
        f"Generated by `python -m benchmarks.quality.rw_eval_report` from {len(report['runs_used'])} "
        f"finished runs ({len(report['missing'])} of the plan missing, "
        f"{len(report['unfinished'])} unfinished). Differences are paired by seed; negative = "
        "lower loss than uniform.",
        "",
        f"Verdict: {d['verdict']}.",
        "",
        "## Per variant",
        "",
        variants_table(report),
        "",
        "ESS: " + d["weight_ess"].replace("same for", "median over seeds of the median over "
                                          "post-burn-in log intervals of") + ".",
        "Random / duplicated: their documents' share of the total weight (each is 10 % of the "
        "noisy blend's rows).",
        "",
        "## Per domain (median difference to uniform; * = beyond that domain's seed spread)",
        "",
        domains_table(report),
        "",
        "## Documents as units against rows (noisy, seq 1024, linupper r 1.0, same seed)",
        "",
        units_table(report),
        "",
        "Verdict as above, with the row run's values over the same seeds as the noise.",
        "",
        "## Scale point",
        "",
        scale_table(report),
        "",
    ])


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else argv
    with open(args[0] if args else "results/rw_eval.json", encoding="utf-8") as f:
        print(markdown(json.load(f)), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
