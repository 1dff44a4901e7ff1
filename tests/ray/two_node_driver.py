"""Ingest driver for ``test_two_node.py``, run as a subprocess (one process joins one Ray cluster).

Joins the two-node cluster at ``--address``, reads which node ran each Ray Train worker of the
finished training (Ray's State API keeps dead actors), then ingests synthetic records through
the Ray Data path (``distributed=True``) into a Milvus server with the exported model, and prints
one JSON line: ``{"nodes": {node_id: label}, "train_workers": [{node_id, pid}], "report": {...}}``.
"""

from __future__ import annotations

import argparse
import json

import ray
from ray.util.state import list_actors

from hivlp_milvus.data import synthetic
from hivlp_milvus.ingest import ingest


def main() -> None:
    parser = argparse.ArgumentParser()
    for flag in ("--address", "--uri", "--collection", "--model"):
        parser.add_argument(flag, required=True)
    parser.add_argument("--token", default="")
    parser.add_argument("--images", type=int, required=True)
    parser.add_argument("--captions", type=int, required=True)
    parser.add_argument("--seed", type=int, required=True)
    args = parser.parse_args()

    ray.init(address=args.address, logging_level="WARNING")
    nodes = {
        n["NodeID"]: ",".join(sorted(k for k in n["Resources"] if k.startswith("node_")))
        for n in ray.nodes()
        if n["Alive"]
    }
    # The address again: without it the State API looks for "the" Ray instance on this machine and
    # refuses when it finds several (the test session's, other people's).
    actors = list_actors(address=args.address, filters=[("class_name", "=", "RayTrainWorker")], detail=True, limit=1000)
    workers = [{"node_id": a.node_id, "pid": a.pid} for a in actors]
    records = synthetic.generate(args.images, seed=args.seed, image_size=32, captions_per_image=args.captions)
    report = ingest(
        records,
        uri=args.uri,
        token=args.token or None,
        collection_name=args.collection,
        model=args.model,  # a directory every node can read: the encoder actors load it themselves
        distributed=True,
        batch_size=16,
        write_batch_rows=20,
        progress=False,
    )
    print(json.dumps({"nodes": nodes, "train_workers": workers, "report": report.to_dict()}), flush=True)


if __name__ == "__main__":
    main()
