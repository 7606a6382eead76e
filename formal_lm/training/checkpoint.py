"""Checkpoints as msgpack (no pickle), written atomically.

A checkpoint file is ``flax.serialization.msgpack_serialize`` of a dict::

    {"format": "formal_lm.training/1",
     "meta": "<json>",                # config, seeds, step, vocab size, best steps/losses ...
     "trees": {name: {"0": leaf, "1": leaf, ...}}}   # flattened pytrees of numpy arrays

Trees are stored as their leaves in ``jax.tree.leaves`` order; the reader rebuilds the tree
structure from the config (a freshly built model and optimizer), so no Python objects are
stored. PRNG key arrays are stored as their raw key data.

Files in ``RUN_DIR/checkpoints/``: ``last.msgpack`` (everything needed to resume) and
``best.msgpack`` (for each seed, the parameters at its lowest validation loss so far).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import jax
import numpy as np
from flax import serialization

from formal_lm.errors import FormalLMError, Problem

FORMAT = "formal_lm.training/1"


def _to_numpy(x):
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    return np.asarray(jax.device_get(x))


def flatten(tree) -> dict[str, np.ndarray]:
    return {str(i): _to_numpy(x) for i, x in enumerate(jax.tree.leaves(tree))}


def unflatten(template, leaves: dict[str, np.ndarray]):
    """``template``'s tree structure filled with stored leaves (shapes and dtypes checked)."""
    flat, treedef = jax.tree.flatten(template)
    if len(flat) != len(leaves):
        raise FormalLMError(Problem(f"checkpoint holds {len(leaves)} arrays, the model expects "
                                    f"{len(flat)}", "was the config changed since it was saved?"))
    out = []
    for i, t in enumerate(flat):
        v = leaves[str(i)]
        dtype, shape = getattr(t, "dtype", None), tuple(getattr(t, "shape", np.shape(t)))
        if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
            v = jax.random.wrap_key_data(v, impl=jax.random.key_impl(t))
            out.append(v)
            continue
        if shape != tuple(v.shape):
            raise FormalLMError(Problem(f"checkpoint array {i} has shape {v.shape}, expected "
                                        f"{shape}", "was the config changed?"))
        out.append(jax.numpy.asarray(v))
    return jax.tree.unflatten(treedef, out)


def write_atomic(path: Path, data: bytes) -> None:
    """Writes ``data`` to ``path`` so that a reader sees the old or the new file, never a part."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def save(path: Path, meta: dict, trees: dict) -> None:
    payload = {"format": FORMAT, "meta": json.dumps(meta),
               "trees": {k: flatten(v) for k, v in trees.items()}}
    write_atomic(path, serialization.msgpack_serialize(payload))


def read(path: str | Path) -> tuple[dict, dict[str, dict[str, np.ndarray]]]:
    """(meta, {tree name: flat leaves}) of a checkpoint file."""
    path = Path(path)
    try:
        payload = serialization.msgpack_restore(path.read_bytes())
    except OSError as e:
        raise FormalLMError(Problem(f"cannot read checkpoint {path}: {e}")) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise FormalLMError(Problem(f"{path} is not a formal_lm training checkpoint"))
    return json.loads(payload["meta"]), payload["trees"]
