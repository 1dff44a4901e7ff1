"""``IngestReport``: what one ingest run did, printed as a table and serialisable as JSON."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from hivlp_milvus.data.record import Skipped

# What :meth:`IngestReport.merge` adds up (the wall times and the source's skips are the driver's).
_SUMMED = (
    "inserted",
    "updated",
    "rows_written",
    "skipped_existing",
    "dropped_captions",
    "failed",
    "encode_seconds",
    "write_seconds",
)


@dataclass
class IngestReport:
    """What one :func:`ingest` run did.

    Attributes:
        inserted: rows that did not exist before this run and were written.
        updated: rows that already existed (same key and modality) and were overwritten.
        skipped_existing: rows neither encoded nor written because they existed (``skip_existing``).
        failed: records/rows that could not be used (undecodable image, empty caption, malformed
            vector, ...), each with the reason; the rest of the run went on.
        source_skipped: rows the data source itself could not read (its ``SourceReport``).
        dropped_captions: blank captions dropped from records that were kept (no row, no error).
        rows_written: ``inserted + updated``.
        seconds: wall time of reading, encoding and writing (the basis of ``rows_per_s``).
        setup_seconds: wall time before that: connecting, opening or creating the collection,
            checking (and, for Ray, saving) the model.
        encode_seconds: time spent building and encoding rows; summed over workers with Ray.
        write_seconds: time spent in Milvus calls; summed over writers with Ray. With pipelining,
            ``encode_seconds + write_seconds`` exceeds ``seconds`` by the overlap.
        collection: the collection written to.
        distributed: whether the Ray Data path ran.
    """

    inserted: int = 0
    updated: int = 0
    skipped_existing: int = 0
    failed: list[Skipped] = field(default_factory=list)
    source_skipped: list[Skipped] = field(default_factory=list)
    dropped_captions: int = 0
    rows_written: int = 0
    seconds: float = 0.0
    setup_seconds: float = 0.0
    encode_seconds: float = 0.0
    write_seconds: float = 0.0
    collection: str = ""
    distributed: bool = False

    @property
    def rows_per_s(self) -> float:
        """Rows written per second of wall time."""
        return self.rows_written / self.seconds if self.seconds > 0 else 0.0

    @property
    def overlap(self) -> float:
        """Fraction of the shorter side (encode or write) hidden behind the other; 0 = sequential."""
        shorter = min(self.encode_seconds, self.write_seconds)
        if shorter <= 0:
            return 0.0
        hidden = self.encode_seconds + self.write_seconds - self.seconds
        return float(min(max(hidden / shorter, 0.0), 1.0))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of every field (``failed`` / ``source_skipped`` as dicts)."""
        d = asdict(self)
        d.update({k: round(v, 4) for k, v in d.items() if isinstance(v, float)}, rows_per_s=round(self.rows_per_s, 2))
        return d

    def __str__(self) -> str:
        lines = [
            f"ingest into {self.collection!r}" + (" (Ray Data)" if self.distributed else ""),
            f"  {'inserted':<20}{self.inserted:>12,}",
            f"  {'updated':<20}{self.updated:>12,}",
            f"  {'skipped (existing)':<20}{self.skipped_existing:>12,}",
            f"  {'failed':<20}{len(self.failed):>12,}",
            f"  {'source skipped':<20}{len(self.source_skipped):>12,}",
            f"  {'blank captions':<20}{self.dropped_captions:>12,}",
            f"  {'rows written':<20}{self.rows_written:>12,}  in {self.seconds:.2f} s"
            f" ({self.rows_per_s:,.0f} rows/s; setup {self.setup_seconds:.2f} s)",
            f"  {'encode / write':<20}{self.encode_seconds:>10.2f} s / {self.write_seconds:.2f} s"
            f"  (overlap {self.overlap:.0%})",
        ]
        problems = [("failed", s) for s in self.failed] + [("source", s) for s in self.source_skipped]
        lines += [f"  {kind} {s.key}: {s.reason}" for kind, s in problems[:10]]
        if len(problems) > 10:
            lines.append(f"  ... and {len(problems) - 10} more (see report.failed / report.source_skipped)")
        return "\n".join(lines)

    def merge(self, other: IngestReport) -> None:
        """Add the counts of ``other``: the part of the run one Ray write task did."""
        for name in _SUMMED:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def add_source_report(self, source: Any) -> None:
        """Copy what the data source skipped and the blank captions it dropped."""
        src = getattr(source, "report", None)
        self.source_skipped = list(getattr(src, "skipped", []))
        self.dropped_captions += int(getattr(src, "dropped_captions", 0))
