"""Checkpoints: msgpack files (no pickle) keyed by parameter path, checksummed, written atomically.

A checkpoint file is ``msgpack({"format": FORMAT, "sha256": ..., "body": bytes})`` where the
body is ``msgpack({"meta": "<json>", "trees": {name: {path: array}}})`` and ``sha256`` is the
hash of the body: one flipped bit anywhere in the body is found on read. Paths name what a leaf
is (``blocks/0/query/kernel``, ``opt_state/1/0/mu/embed/embedding``), so a reader fills any
tree with the same paths, whatever order a library version flattens it in; PRNG key arrays are
stored as their raw key data. Arrays of per-seed trees carry a leading seeds axis [K, ...].

Files in ``RUN_DIR/checkpoints/``: ``last.msgpack`` (everything needed to resume) and
``best.msgpack`` (for each seed, the parameters at its lowest validation loss). A new file is
written to a temporary name, synced and read back before it replaces the old one, so the last
good checkpoint is never lost to an interrupted write.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import jax
import numpy as np
from flax import serialization

from formal_lm.errors import FormalLMError, Problem

FORMAT = "formal_lm/checkpoint/2"
OLD_FORMATS = ("formal_lm.training/1",)


def _key_name(k) -> str:
    for attr in ("key", "idx", "name"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def path_of(path) -> str:
    """A tree path as ``a/0/b`` (a variable's trailing ``.value`` left out)."""
    names = [_key_name(k) for k in path]
    if names and names[-1] == "value" and isinstance(path[-1], jax.tree_util.GetAttrKey):
        names = names[:-1]
    return "/".join(names)


def _to_numpy(x):
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    return np.asarray(jax.device_get(x))


def flatten(tree) -> dict[str, np.ndarray]:
    """{path: numpy array} of a pytree's leaves."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    out = {path_of(p): _to_numpy(x) for p, x in leaves}
    if len(out) != len(leaves):
        raise ValueError("two leaves of the tree share a path")
    return out


def _key_impl(t):
    """The PRNG implementation of a key array, or of an abstract one (``jax.eval_shape``)."""
    if isinstance(t, jax.ShapeDtypeStruct):
        return getattr(t.dtype, "_impl", None)  # None: jax's default implementation
    return jax.random.key_impl(t)


def restore(template, arrays: dict[str, np.ndarray], *, source: str = "checkpoint"):
    """``template``'s tree filled with ``arrays`` by path (shapes checked; keys re-wrapped)."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(template)
    want = {path_of(p) for p, _ in leaves}
    missing, extra = sorted(want - set(arrays)), sorted(set(arrays) - want)
    if missing or extra:
        raise FormalLMError(Problem(
            f"{source} does not fit the model: missing {missing[:4]}, unexpected {extra[:4]}",
            "load it with the config it was written with (was the model config changed?)"))
    out = []
    for p, t in leaves:
        name, v = path_of(p), arrays[path_of(p)]
        dtype = getattr(t, "dtype", None)
        if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
            out.append(jax.random.wrap_key_data(np.asarray(v), impl=_key_impl(t)))
            continue
        shape = tuple(getattr(t, "shape", np.shape(t)))
        if shape != tuple(np.shape(v)):
            raise FormalLMError(Problem(f"{source}: array {name!r} has shape {np.shape(v)}, "
                                        f"expected {shape}", "was the config changed?"))
        out.append(jax.numpy.asarray(v, dtype=dtype))
    return jax.tree.unflatten(treedef, out)


def _sync_dir(path: Path) -> None:
    try:  # make a rename durable
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def write_atomic(path: Path, data: bytes, verify=None) -> None:
    """Writes ``data`` to ``path`` so that a reader sees the old or the new file, never a part.

    ``verify(tmp_path)``, when given, reads the temporary file back before it replaces ``path``.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    if verify is not None:
        verify(tmp)
    os.replace(tmp, path)
    _sync_dir(path.parent)


def clean_temporary(folder: Path) -> list[Path]:
    """Removes temporary files that interrupted writes left in ``folder``; returns them."""
    gone = []
    for p in Path(folder).glob(".*.tmp*"):
        p.unlink(missing_ok=True)
        gone.append(p)
    return gone


def save(path: Path, meta: dict, trees: dict) -> None:
    """Writes a checkpoint of ``trees`` ({name: pytree}) and ``meta`` (JSON) to ``path``."""
    save_arrays(path, meta, {k: flatten(v) for k, v in trees.items()})


def save_arrays(path: Path, meta: dict, trees: dict[str, dict[str, np.ndarray]]) -> None:
    """:func:`save` of trees already flattened to {name: {path: array}}."""
    body = serialization.msgpack_serialize({"meta": json.dumps(meta), "trees": trees})
    data = serialization.msgpack_serialize(
        {"format": FORMAT, "sha256": hashlib.sha256(body).hexdigest(), "body": body})
    write_atomic(path, data, verify=read)


def _corrupt(path: Path, what: str) -> FormalLMError:
    return FormalLMError(Problem(
        f"checkpoint {path} is damaged ({what})",
        "delete it and resume: the run restarts from the other checkpoint in its folder, or "
        "from the beginning when there is none"))


def read(path: str | Path) -> tuple[dict, dict[str, dict[str, np.ndarray]]]:
    """(meta, {tree name: {path: array}}) of a checkpoint file, its checksum verified."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise FormalLMError(Problem(f"cannot read checkpoint {path}: {e.strerror}",
                                    "check the path and its permissions")) from None
    try:
        outer = serialization.msgpack_restore(raw)
    except Exception:  # msgpack raises several unrelated types on damaged input
        raise _corrupt(path, "not a msgpack file") from None
    fmt = outer.get("format") if isinstance(outer, dict) else None
    if fmt in OLD_FORMATS:
        raise FormalLMError(Problem(
            f"checkpoint {path} has the old format {fmt!r} (arrays keyed by leaf index)",
            "retrain the run with this version of formal_lm (old checkpoints cannot be "
            "mapped to parameter paths safely)"))
    if fmt != FORMAT or not isinstance(outer.get("body"), bytes):
        raise _corrupt(path, "not a formal_lm checkpoint")
    if hashlib.sha256(outer["body"]).hexdigest() != outer.get("sha256"):
        raise _corrupt(path, "checksum mismatch")
    try:
        inner = serialization.msgpack_restore(outer["body"])
        meta = json.loads(inner["meta"])
        trees = {k: {p: np.asarray(a) for p, a in t.items()} for k, t in inner["trees"].items()}
    except Exception:  # a valid checksum over a wrong structure: written by something else
        raise _corrupt(path, "unexpected structure") from None
    return meta, trees
