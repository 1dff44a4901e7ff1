"""What ``make demo`` leaves behind, at a tiny size and in seconds: for tests of the commands that follow it.

``hivlp_work/data/test`` (synthetic scenes, the quickstart's manifest layout), ``hivlp_work/model``
(a random-init ``micro`` HiVLP by default, saved with ``save_pretrained``) and ``hivlp_work/hivlp.db``
(Milvus Lite) holding collection ``quickstart`` with the test scenes,
under a root directory the test makes the current directory. The real quickstart trains its model
with Ray Train (minutes, ``tests/ray/test_quickstart.py``); the commands that follow only need the
same layout and a real model, not a trained one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

N_RECORDS = 16  # one image row and five caption rows each: 96 rows


@dataclass
class DemoLayout:
    root: Path
    model_dir: Path
    uri: str
    collection: str
    model: Any
    records: list


def build_demo_layout(root: Path, n_records: int = N_RECORDS, config: Any = "micro") -> DemoLayout:
    """The layout under ``root``; ``config`` (a config name or ``HiVLPConfig``) builds the random-init model."""
    import hivlp_milvus
    from hivlp_milvus.data import load_source, synthetic
    from hivlp_milvus.model import create_model

    work = root / "hivlp_work"
    work.mkdir(parents=True, exist_ok=True)
    # The quickstart's data layout (hivlp_work/data/<split>/manifest.jsonl + images/), test split only.
    synthetic.write_splits(work / "data", {"test": n_records}, seed=0)
    records = list(load_source(work / "data", split="test"))
    model = create_model(config, texts=[c for r in records for c in r.captions], seed=0)
    model.eval()  # as a checkpoint loaded with from_pretrained is
    model.save_pretrained(work / "model")
    uri = str(work / "hivlp.db")
    hivlp_milvus.ingest(records, uri=uri, collection_name="quickstart", model=model, progress=False)
    return DemoLayout(root, work / "model", uri, "quickstart", model, records)
