"""The documentation's results, written from the JSON records (never typed by hand): the
benchmark tables between the `benchmarks` markers of docs/benchmarks.md, the evidence
experiment's between the `evidence` markers of docs/evidence.md, and the fine-tuning
example's between the `finetune` markers of docs/guides/finetune.md. `tests/test_docs.py`
checks that the pages hold exactly this."""

from __future__ import annotations

import math
import os
import re
from typing import Any

from _plan import BENCHMARKS


def begin_marker(section: str) -> str:
    return f"<!-- generated from bench/results by bench/suite.py: {section} -->"


END_MARKER = "<!-- end of generated section -->"


def number(value: float) -> str:
    """Three significant figures, with k/M/G for large values."""
    if not math.isfinite(value):
        return str(value)
    for scale, suffix in ((1e9, " G"), (1e6, " M"), (1e3, " k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.3g}"


def target_cell(result: dict[str, Any]) -> str:
    if "target" not in result:
        return ""
    at_least = result["higher_is_better"]
    met = result["ratio"] >= result["target"] if at_least else result["ratio"] <= result["target"]
    return f"{'>=' if at_least else '<='} {result['target']:g}: {'met' if met else 'not met'}"


def machine_line(record: dict[str, Any]) -> str:
    m = record["machine"]
    return (
        f"{record['date'][:10]}, commit {record['commit']}, {m['cpu']}, {m['cores']} cores, "
        f"{m['memory_gib']} GiB; {record['mode']} mode, {record['seconds']:.0f} s"
    )


def benchmark_tables(records: list[dict[str, Any]]) -> str:
    by_name = {r["benchmark"]: r for r in records}
    parts = []
    for benchmark in BENCHMARKS:
        record = by_name.get(benchmark.name)
        if record is None:
            continue
        command = " ".join(["python", benchmark.script, *record["command"]])
        lines = [
            f"**{benchmark.title}** (`{command}`; {machine_line(record)}; "
            f"[chart](results/{benchmark.name}.png))",
            "",
            "| result | value | baseline | ratio | target |",
            "| --- | --- | --- | --- | --- |",
        ]
        for r in record["results"]:
            lines.append(
                f"| {r['name']} | {number(r['value'])} {r['unit']} | {r['baseline']}: "
                f"{number(r['baseline_value'])} {r['unit']} | {r['ratio']:.3g} | "
                f"{target_cell(r)} |"
            )
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def mean_sd(figure: dict[str, Any]) -> str:
    """A summary's mean and standard deviation, as the results pages print them."""
    return f"{figure['mean']:.3f} +- {figure['stdev']:.3f}"


def evidence_table(evidence: dict[str, Any]) -> str:
    summary = evidence["summary"]
    runs = evidence["runs"]

    rows = [
        "| model | parameters | held-out loss | steps/s (slowest-fastest seed) |",
        "| --- | --- | --- | --- |",
    ]
    for model in ("baseline", "engram", "wide"):
        mine = [run for run in runs if run["model"] == model]
        if f"{model}_final_loss" in summary and mine:
            rates = [run["steps_per_s"] for run in mine]
            rows.append(
                f"| {model} | {mine[0]['parameters'] / 1e6:.2f} M | "
                f"{mean_sd(summary[f'{model}_final_loss'])} | {min(rates):.1f}-{max(rates):.1f} |"
            )
        if model == "engram" and "engram_zeroed_final_loss" in summary:
            zeroed = mean_sd(summary["engram_zeroed_final_loss"])
            rows.append(f"| engram, Engram's output zeroed | | {zeroed} | |")
    text = [
        f"Held-out loss (cross-entropy, nats per token) after {evidence['steps']} steps, mean "
        f"+- standard deviation over {evidence['seeds']} seeds; {evidence['train_tokens']} "
        f"tokens to train on, {evidence['held_out_tokens']} held out ({evidence['date']}, "
        f"commit {evidence['commit']}, {evidence['machine']}, "
        f"{evidence['seconds'] / 60:.0f} minutes):",
        "",
        *rows,
    ]
    for key, against in (("gain_over_baseline", "baseline"), ("gain_over_wide", "wide")):
        if key in summary:
            text += [
                "",
                f"Engram's gain over {against} (their loss minus Engram's, per seed): "
                + mean_sd(summary[key]),
            ]
    return "\n".join(text)


def finetune_table(result: dict[str, Any]) -> str:
    summary = result["summary"]

    rows = [
        "| fine-tuned | domain before | domain after | general before | general after |",
        "| --- | --- | --- | --- | --- |",
    ]
    names = {
        "tables": "the tables",
        "tables+dense": "the tables and the dense Engram weights",
        "frozen": "the dense Engram weights, tables frozen (today's baseline)",
    }
    for variant, name in names.items():
        cells = [
            mean_sd(summary[f"{variant}_{part}"])
            for part in ("domain_before", "domain_after", "general_before", "general_after")
        ]
        rows.append(f"| {name} | {' | '.join(cells)} |")
    shipping = result["shipping"]
    return "\n".join(
        [
            f"Held-out loss (cross-entropy, nats per token) on the domain "
            f"(`{result['domain']}`) and on the general held-out files, before and after "
            f"{result['steps']} fine-tuning steps "
            f"of {result['batch']} windows, mean +- standard deviation over {result['seeds']} "
            f"seeds; {result['engram_rows']} Engram rows; the released model pretrained "
            f"{result['pretrain_steps']} steps ({result['date']}, commit {result['commit']}, "
            f"{result['machine']}, {result['seconds'] / 60:.0f} minutes):",
            "",
            *rows,
            "",
            f"Shipping: {shipping['reads_during_the_swap']} reads while the new version was "
            f"imported and swapped in, {shipping['reads_of_neither_version']} of them neither "
            "the old version nor the new.",
        ]
    )


def replace_section(page: str, section: str, body: str) -> str:
    pattern = re.compile(re.escape(begin_marker(section)) + r"\n.*?" + re.escape(END_MARKER), re.S)
    if not pattern.search(page):
        raise ValueError(f"the page has no {section!r} section markers")
    return pattern.sub(lambda _: f"{begin_marker(section)}\n{body}\n{END_MARKER}", page)


def regenerate(
    docs_dir: str | os.PathLike[str],
    records: list[dict[str, Any]],
    evidence: dict[str, Any] | None = None,
    finetune: dict[str, Any] | None = None,
) -> dict[str, str]:
    """Each results page of `docs_dir` (by its path there) with its generated sections
    rewritten."""

    def page(name: str) -> str:
        with open(os.path.join(docs_dir, name)) as f:
            return f.read()

    pages = {
        "benchmarks.md": replace_section(
            page("benchmarks.md"), "benchmarks", benchmark_tables(records)
        )
    }
    if evidence is not None:
        pages["evidence.md"] = replace_section(
            page("evidence.md"), "evidence", evidence_table(evidence)
        )
    if finetune is not None:
        name = os.path.join("guides", "finetune.md")
        pages[name] = replace_section(page(name), "finetune", finetune_table(finetune))
    return pages
