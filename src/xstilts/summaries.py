"""A finished evaluation as people and metrics.json read it: its summary per language, and a Markdown table."""

from __future__ import annotations


def evaluation_summary(result: dict) -> dict:
    """An evaluation node's result as metrics.json keeps it: split, primary metric, its average and score per
    language, every metric per language (`scores`), n."""
    languages = result["languages"]
    return {"split": result["split"], "metric": result["metric"], "average": result["average"],
            **{lang: value["score"] for lang, value in languages.items()},
            "scores": {lang: value["scores"] for lang, value in languages.items()},
            "n": {lang: value["n"] for lang, value in languages.items()}}


def format_table(evaluation: dict) -> str:
    """Per-language scores of each evaluation task as a Markdown table: one row per metric, the primary first."""
    lines = []
    for task, split, result in ((t, s, r) for t, splits in evaluation.items() for s, r in splits.items()):
        languages = list(result["scores"])
        lines.append(f"| {task} ({split}) | " + " | ".join(languages) + " | avg |")
        lines.append("|---" * (len(languages) + 2) + "|")
        for metric in result["scores"][languages[0]]:
            values = [result["scores"][language][metric] for language in languages]
            lines.append(f"| {metric} | " + " | ".join(f"{100 * v:.1f}" for v in values)
                         + f" | {100 * sum(values) / len(values):.1f} |")
    return "\n".join(lines)
