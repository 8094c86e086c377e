"""Text the `fer cache` commands print: the feature set table, provenance, verify results."""

from __future__ import annotations

import json

from fer.cache.errors import FerEnvError
from fer.cache.store import FeatureStore
from fer.cache.verify import VerifyReport


def human_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1024 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def list_table(store: FeatureStore) -> str:
    """One row per feature set: spec, modality, shape, dtype, done/total, failed, size on disk, created."""
    head = f"{store.path} ({store.format}, {store.n} clips)"
    specs = store.specs()
    if not specs:
        return head + "\nno feature sets yet"
    rows = [["SPEC", "MODALITY", "SHAPE", "DTYPE", "DONE", "FAILED", "SIZE", "CREATED"]]
    damaged = 0
    for s in specs:
        try:
            i = store.info(s)
        except FerEnvError:  # listed, not fatal: the other sets are fine
            damaged += 1
            rows.append([s, "DAMAGED", "-", "-", "-", "-", "-", "-"])
            continue
        rows.append([
            s, str(i.get("modality", "-")), "x".join(str(x) for x in i["shape"]), i["dtype"],
            f"{i['n_done']}/{i['n_rows']}", str(i["n_failed"]), human_bytes(i["bytes_on_disk"]),
            str(i.get("created") or "-"),
        ])
    note = f"\n{damaged} damaged feature set(s): see `fer cache verify {store.path}`" if damaged else ""
    return head + "\n" + _table(rows) + note


def info_text(store: FeatureStore, spec: str, *, as_json: bool = False) -> str:
    """A feature set's full provenance, as pretty JSON or aligned `key: value` lines."""
    info = store.info(spec)
    failures = store.failures(spec)
    if as_json:
        return json.dumps({**info, "failures": failures}, indent=2, sort_keys=True, default=str)
    info["bytes_on_disk"] = human_bytes(info["bytes_on_disk"])
    flat: list[tuple[str, str]] = []
    for k, v in info.items():
        if isinstance(v, dict):
            flat += [(f"{k}.{kk}", _fmt(vv)) for kk, vv in v.items()]
        else:
            flat.append((k, _fmt(v)))
    if failures:
        flat.append(("failures", str(len(failures))))
        flat += [(f"  {cid}", reason) for cid, reason in list(failures.items())[:20]]
        if len(failures) > 20:
            flat.append(("  ...", f"{len(failures) - 20} more (use --json)"))
    w = max(len(k) for k, _ in flat)
    return "\n".join(f"{k.ljust(w)} : {v}" for k, v in flat)


def _fmt(v) -> str:
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    if isinstance(v, dict):
        return json.dumps(v, sort_keys=True)
    return str(v)


def verify_text(store: FeatureStore, rep: VerifyReport) -> str:
    checked = ", ".join(rep.checked) or "no feature sets"
    lines = []
    if rep.ok:
        lines.append(f"ok: {store.path}: clip index and {checked} verified")
    else:
        lines.append(f"{len(rep.problems)} problem(s) in {store.path}:")
        lines += [f"  - {p}" for p in rep.problems]
    lines += [f"note: {n}" for n in rep.notes]
    return "\n".join(lines)
