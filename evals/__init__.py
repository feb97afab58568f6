"""Offline eval runs: datasets (JSONL), checks, a runner over the compiled graph, metrics and reports.

    hybrid-chat eval run --dataset smoke,routing --model gemma,gemini,auto --concurrency 2 --out DIR
    hybrid-chat eval compare DIR_A DIR_B

See docs/evals.md. Modules: `dataset` (format, validation), `checks`, `runner`, `results`
(results.jsonl, resume), `metrics`, `report` (Markdown, plots, compare), `cli`.
"""
