"""``hivlp-milvus search``: one hierarchical (or single-stage) search from the command line."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("search", help="search a HiVLP collection with a text or an image")
    p.add_argument("query", help="the query text, or an image path with --image")
    p.add_argument("--image", action="store_true", help="treat QUERY as the path of an image")
    p.add_argument("--model", required=True, help="checkpoint directory (HiVLP.from_pretrained)")
    p.add_argument("--uri", default=os.environ.get("HIVLP_MILVUS_URI", "./hivlp.db"))
    p.add_argument("--token", default=os.environ.get("HIVLP_MILVUS_TOKEN"))
    p.add_argument("--collection", default="hivlp")
    p.add_argument("--limit", type=int, default=10)
    p.add_argument("--coarse-limit", type=int, default=None, help="shortlist size (default: the profile's)")
    p.add_argument("--level", choices=["hierarchical", "low", "high"], default="hierarchical")
    p.add_argument("--modality", choices=["image", "text", "all"], default=None)
    p.add_argument("--filter", default=None, help="Milvus expression with {name} placeholders")
    p.add_argument("--param", action="append", default=[], metavar="NAME=JSON", help="a filter parameter")
    p.add_argument("--json", action="store_true", help="print the hits as JSON")
    p.set_defaults(func=run)


def _params(pairs: list[str]) -> dict[str, Any]:
    from hivlp_milvus.errors import FilterError

    out: dict[str, Any] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        if not sep:
            raise FilterError(f"--param takes NAME=JSON (e.g. n=2 or color='\"red\"'), got {pair!r}")
        try:
            out[name] = json.loads(raw)
        except json.JSONDecodeError:
            out[name] = raw  # a bare word is a string
    return out


def run(args: argparse.Namespace) -> int:
    from hivlp_milvus.collection import HierarchicalCollection
    from hivlp_milvus.model import HiVLP

    model = HiVLP.from_pretrained(args.model)
    collection = HierarchicalCollection.open(args.collection, uri=args.uri, token=args.token, model=model)
    query: Any = Path(args.query) if args.image else args.query
    common = {
        "limit": args.limit,
        "filter": args.filter,
        "filter_params": _params(args.param),
        "modality": args.modality,
    }
    if args.level == "hierarchical":
        results = collection.hierarchical_search(query, coarse_limit=args.coarse_limit, **common)
    else:
        results = collection.search(query, level=args.level, **common)
    hits = results[0]
    if args.json:
        print(json.dumps({"hits": hits, "timings": results.timings}, indent=2, default=str))
        return 0
    for rank, hit in enumerate(hits, start=1):
        entity = hit.get("entity", {})
        print(f"{rank:>3}  {hit['distance']:.4f}  [{entity.get('modality', '?')}] {entity.get('reference', hit['id'])}")
    timing = "  ".join(f"{k}={1000 * v:.1f}ms" for k, v in results.timings.items())
    print(f"({len(hits)} hits; {timing})")
    return 0
