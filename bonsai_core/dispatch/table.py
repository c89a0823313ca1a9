"""The measured per-GPU selection table: which backend (and which backend-internal variant) was
fastest for a layer shape and a token bucket on this GPU model and software version.

Entries come from two places, read-only on the hot path:

* the table shipped with the package for GPUs the project measured
  (``bonsai_core/tuned/<device tag>.json``);
* ``dispatch.json`` in the user's per-GPU cache folder (:mod:`.cache`), written only by the
  explicit tuning command (:mod:`.tune`); its entries win over the shipped ones.

Format: ``{"version": 1, "device": tag, "entries": {key: {"winner": name, "ms": {name: ms}}}}``
with ``key = "<namespace>|N<n>|K<k>|b<bits>|<dtype>|M<bucket>"``. Namespaces: ``backend`` (exact
backends), ``backend-fp8`` (FP8 allowed), and backend-internal ones (``dequant``, ``fp8``).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import torch

from ..atomic import atomic_path
from ..escape import escaping_logger
from .cache import DISPATCH_TABLE, cache_dir, device_tag, read_json

log = escaping_logger(__name__)

TABLE_VERSION = 1
SHIPPED_DIR = Path(__file__).resolve().parent.parent / "tuned"


def m_bucket(m: int) -> int:
    """Token counts are grouped by the next power of two (at least 1): a 512^2 and a 1024^2
    image land in different buckets, batch 4 of 512^2 shares one with 1024^2 batch 1."""
    return 1 << max(0, (int(m) - 1).bit_length())


def entry_key(namespace: str, n: int, k: int, bits: int, dtype: torch.dtype, m: int) -> str:
    return f"{namespace}|N{n}|K{k}|b{bits}|{str(dtype).removeprefix('torch.')}|M{m_bucket(m)}"


class MeasuredTable:
    """One GPU's entries: the user's measured ones over the shipped ones."""

    def __init__(self, path: Path, device: str, shipped: Path | None = None) -> None:
        self.path = path
        self.device = device
        self.shipped_path = shipped
        self._lock = threading.Lock()
        self._entries: dict[str, dict[str, Any]] = {}
        self._shipped: dict[str, dict[str, Any]] = {}
        for src, dst in ((shipped, self._shipped), (path, self._entries)):
            data = read_json(src) if src is not None else None
            if isinstance(data, dict) and data.get("version") == TABLE_VERSION and isinstance(data.get("entries"), dict):
                dst.update({k: v for k, v in data["entries"].items() if isinstance(v, dict) and isinstance(v.get("winner"), str)})

    def lookup(self, key: str) -> dict[str, Any] | None:
        return self._entries.get(key) or self._shipped.get(key)

    def entries(self) -> dict[str, dict[str, Any]]:
        return {**self._shipped, **self._entries}

    def __len__(self) -> int:
        return len(self.entries())

    def record(self, key: str, winner: str, ms: dict[str, float]) -> None:
        """Remember a measured winner and persist the user table atomically (tuning command only)."""
        with self._lock:
            self._entries[key] = {"winner": winner, "ms": {k: round(v, 4) for k, v in ms.items()}}
            payload = {"version": TABLE_VERSION, "device": self.device, "entries": self._entries}
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with atomic_path(self.path) as tmp:
                    tmp.write_text(json.dumps(payload, indent=1, sort_keys=True), encoding="utf-8")
            except OSError as e:  # a read-only cache must not break anything
                log.warning("could not save the dispatch table %s: %s", self.path, e)


_tables: dict[str, MeasuredTable] = {}
_by_device: dict[str, MeasuredTable] = {}
_tables_lock = threading.Lock()


def shipped_table_path(tag: str) -> Path:
    return SHIPPED_DIR / f"{tag}.json"


def get_table(device: torch.device) -> MeasuredTable:
    """The table for ``device``'s GPU model and software versions (one per process)."""
    # called for every linear of every step: skip device_tag() (device properties, a regex)
    fast = _by_device.get(str(device))
    if fast is not None:
        return fast
    tag = device_tag(device)
    with _tables_lock:
        table = _tables.get(tag)
        if table is None:
            shipped = shipped_table_path(tag)
            table = MeasuredTable(cache_dir(device, create=False) / DISPATCH_TABLE, tag, shipped if shipped.is_file() else None)
            _tables[tag] = table
            if device.type == "cuda":
                if len(table):
                    log.info("low-bit backend table for %s: %d measured entries", tag, len(table))
                else:
                    log.info(
                        "no measured low-bit backend table for %s: using the static rules (fast on any CUDA GPU); "
                        "`python custom_nodes/<pack>/bonsai.py tune` measures this GPU once",
                        tag,
                    )
        _by_device[str(device)] = table
        return table


def reset_tables() -> None:
    """Forget loaded tables (tests; after changing ``BONSAI_CACHE_DIR`` or tuning)."""
    with _tables_lock:
        _tables.clear()
        _by_device.clear()
