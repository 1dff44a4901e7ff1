"""``hivlp-milvus data``: fetch real image-caption data sets and write manifests ``load_source`` reads."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``data`` subcommand (one sub-subcommand per data set)."""
    parser = subparsers.add_parser(
        "data",
        help="fetch a real image-caption data set (the emoji corpus) and write its manifests",
        description="Fetch a real image-caption data set and write split manifests that "
        "`hivlp-milvus train/eval/ingest` and load_source() read. See docs/data.md.",
    )
    sets = parser.add_subparsers(dest="dataset", metavar="DATASET", required=True)
    emoji = sets.add_parser(
        "emoji",
        help="Apple, Google and Twitter emoji drawings with names and keywords (npm, ~240 MB once)",
        description="Fetch emoji-datasource-{apple,google,twitter}@16.0.0 and emojilib@4.0.3 with "
        "`npm pack` (pinned, integrity-checked, cached), then write DIR/{train,val,test,heldout}: train "
        "on the apple and google drawings, val/test on the twitter drawings of seen emoji, heldout on "
        "the twitter drawings of a fixed 10% of emoji never trained on. Offline: put the four .tgz "
        "files in the --tarballs directory.",
    )
    emoji.add_argument("dir", type=Path, metavar="DIR", help="output directory (new, empty or an earlier emoji set)")
    # Import-light on purpose: `hivlp-milvus --help` builds every parser, so the choices are literal.
    emoji.add_argument(
        "--vendors",
        nargs="+",
        choices=("apple", "google", "twitter"),
        default=["apple", "google", "twitter"],
        help="drawing styles to use; the test vendor must be one of them (default: all three)",
    )
    emoji.add_argument(
        "--test-vendor",
        choices=("apple", "google", "twitter"),
        default="twitter",
        help="the style never trained on (val/test/heldout images; default: twitter)",
    )
    emoji.add_argument("--skin-tones", action="store_true", help="add every skin-tone variant as its own emoji")
    emoji.add_argument(
        "--tarballs",
        type=Path,
        default=None,
        metavar="DIR",
        help="tarball cache (default: ~/.cache/hivlp-milvus/npm); tarballs found here are used, fetched ones kept",
    )
    emoji.add_argument("--seed", type=int, default=0, help="fixes the held-out and validation emoji")
    emoji.set_defaults(func=run_emoji)


def run_emoji(args: argparse.Namespace) -> int:
    """Write the emoji data set; errors (no npm, no registry) surface as ``DataError``."""
    from hivlp_milvus.data import emoji

    print(
        f"emoji data set -> {args.dir} (npm packages: {emoji.EMOJILIB.spec}, "
        + ", ".join(emoji.DATASOURCES[v].spec for v in dict.fromkeys(args.vendors))
        + ")",
        flush=True,
    )
    dataset = emoji.write_dataset(
        args.dir,
        vendors=args.vendors,
        test_vendor=args.test_vendor,
        skin_tones=args.skin_tones,
        tarballs=args.tarballs,
        seed=args.seed,
    )
    print(dataset.summary())
    print(f"read it with load_source({str(dataset.root)!r}, split='test'), or train on it:")
    print(f"  hivlp-milvus train --config emoji data.train={dataset.root} data.val={dataset.root}")
    return 0
