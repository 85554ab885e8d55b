"""The results table of `promptmesh compare` and `promptmesh benchmark`: one column list, one renderer."""
from __future__ import annotations

TABLE_COLUMNS = [  # (header, section of eval.json, key, scale, format)
    ("L1 (cm)", "depth", "l1_m", 100, "{:.2f}"),
    ("RMSE (cm)", "depth", "rmse_m", 100, "{:.2f}"),
    ("AbsRel", "depth", "absrel", 1, "{:.4f}"),
    ("δ0.5", "depth", "delta_0.5", 1, "{:.3f}"),
    ("Coverage", "depth", "coverage", 1, "{:.3f}"),
    ("Acc (cm)", "culled", "accuracy_m", 100, "{:.2f}"),
    ("Comp (cm)", "culled", "completeness_m", 100, "{:.2f}"),
    ("Prec", "culled", "precision", 1, "{:.3f}"),
    ("Recall", "culled", "recall", 1, "{:.3f}"),
    ("F", "culled", "fscore", 1, "{:.3f}"),
    ("F unculled", "unculled", "fscore", 1, "{:.3f}"),
]


def cells(values: dict, cols: list[tuple]) -> list[str]:
    """One row's formatted cells: values[section][key] * scale, or "–" where the row has no such number."""
    return [c[4].format(values[c[1]][c[2]] * c[3]) if c[2] in values.get(c[1], {}) else "–" for c in cols]


def results_table(rows: list[tuple[tuple[str, ...], dict]], cols: list[tuple], lead: tuple[str, ...]) -> list[str]:
    """Markdown lines of a table: the `lead` columns (e.g. model, or scene and model), then `cols`; one line per
    (lead cells, eval-like dict) of `rows`."""
    lines = ["| " + " | ".join([*lead, *(c[0] for c in cols)]) + " |", "|" + "---|" * (len(lead) + len(cols))]
    return lines + ["| " + " | ".join([*key, *cells(values, cols)]) + " |" for key, values in rows]
