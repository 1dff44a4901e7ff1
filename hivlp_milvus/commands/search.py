"""``hivlp-milvus search``: one hierarchical (or single-stage) search from the command line."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from hivlp_milvus.commands.common import (
    add_connection_arguments,
    add_device_argument,
    add_model_argument,
    load_model,
    open_collection,
)


def register(subparsers: Any) -> None:
    """Add the ``search`` subcommand."""
    p = subparsers.add_parser(
        "search",
        help="search a HiVLP collection with a text or an image (after `make demo`: no other argument)",
        description="Embed the query with a HiVLP checkpoint and search the collection coarse-to-fine. "
        "Model, database and collection default to what `make demo` writes (hivlp_work/model, "
        "hivlp_work/hivlp.db, collection 'quickstart'), relative to the current directory.",
    )
    p.add_argument("query", help="the query text, or an image path with --image")
    p.add_argument("--image", action="store_true", help="treat QUERY as the path of an image")
    add_model_argument(p)
    add_device_argument(p)
    add_connection_arguments(p)
    p.add_argument("--limit", type=int, default=10)
    p.add_argument("--coarse-limit", type=int, default=None, help="shortlist size (default: the profile's)")
    p.add_argument("--level", choices=["hierarchical", "low", "high"], default="hierarchical")
    p.add_argument("--modality", choices=["image", "text", "all"], default=None)
    p.add_argument("--filter", default=None, help="Milvus expression with {name} placeholders")
    p.add_argument("--param", action="append", default=[], metavar="NAME=JSON", help="a filter parameter")
    p.add_argument(
        "--fusion-limit",
        type=int,
        default=None,
        metavar="M",
        help="third stage: re-score the fine stage's top M with the model's fusion block (needs a model with one)",
    )
    p.add_argument(
        "--content-root",
        default=None,
        metavar="DIR",
        help="fusion stage: read image references relative to DIR and refuse paths outside it",
    )
    p.add_argument(
        "--allow-http", action="store_true", help="fusion stage: fetch http(s):// image references (off by default)"
    )
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
    model = load_model(args.model, args.device)
    collection = open_collection(args, model)
    query: Any = Path(args.query) if args.image else args.query
    common = {
        "limit": args.limit,
        "filter": args.filter,
        "filter_params": _params(args.param),
        "modality": args.modality,
    }
    if args.level == "hierarchical":
        from hivlp_milvus.content import ContentOptions

        # Read only by the fusion stage, i.e. with --fusion-limit.
        content = ContentOptions(root=args.content_root, allow_http=args.allow_http)
        results = collection.hierarchical_search(
            query, coarse_limit=args.coarse_limit, fusion_limit=args.fusion_limit, content=content, **common
        )
    else:
        if args.fusion_limit is not None:
            from hivlp_milvus.errors import QueryError

            raise QueryError(f"--fusion-limit needs --level hierarchical (the funnel), got --level {args.level}")
        results = collection.search(query, level=args.level, **common)
    hits = results[0]
    if args.json:
        skipped = results.fusion_skipped
        print(json.dumps({"hits": hits, "timings": results.timings, "fusion_skipped": skipped}, indent=2, default=str))
        return 0
    for rank, hit in enumerate(hits, start=1):
        entity = hit.get("entity", {})
        what = f"[{entity.get('modality', '?')}] {entity.get('reference', hit['id'])}"
        if "fusion_score" in hit:  # the fusion stage ran: its score orders the hits, the fine one is kept
            fused = "   n/a " if hit["fusion_score"] is None else f"{hit['fusion_score']:+7.3f}"
            print(f"{rank:>3}  fusion {fused}  fine {hit['distance']:.4f}  {what}")
        else:
            print(f"{rank:>3}  {hit['distance']:.4f}  {what}")
    for skip in results.fusion_skipped:
        print(f"  not fused (kept its fine rank): id {skip['id']}: {skip['reason']}")
    timing = "  ".join(f"{k}={1000 * v:.1f}ms" for k, v in results.timings.items())
    print(f"({len(hits)} hits; {timing})")
    return 0
