"""hivlp-milvus benchmarks: search (is the hierarchy worth it, at what scale), ingest, training, report.

Run them with ``hivlp-milvus bench search|ingest|serve|train|all|report`` (or ``make bench``) from
the repository root. Each benchmark writes JSON under ``benchmarks/results/`` and PNG plots under
``benchmarks/plots/``; ``benchmarks/report.py`` regenerates ``BENCHMARKS.md`` from the JSON.
Built Milvus Lite databases, embeddings and the benchmark model are cached in
``benchmarks/.cache/`` (not committed).

The search benchmark is split by job: ``search`` (the sweep and its driver), ``vectors`` (the
fitted generator), ``galleries`` (the cached Lite databases), ``baseline`` (faiss, no database),
``metrics``, ``profiler`` and ``search_plots``; ``engine`` reuses their public names. This package is
not installed with ``pip install``: ``hivlp-milvus bench`` runs it from a source checkout.
"""

from __future__ import annotations
