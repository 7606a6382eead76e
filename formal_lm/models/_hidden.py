"""Hidden states and interchange patching: the helpers every model uses, and the mixin that
gives the embedding -> stacked layers -> head models (``_common._StackedLM``) both methods.

``hidden_states(ids)`` -> L + 1 arrays [B, T, D_l] (embedding output, then each layer's output);
``patched_logits(ids, layer, pos, value)`` -> logits [B, T, V] with the state of ``layer`` at
position ``pos[b]`` of row b replaced by ``value[b]``. See README.md, "Hidden states".
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from formal_lm.models._common import _is_int


def _check_layer(layer, n_layers: int) -> int:
    """``layer`` as an int in 0..n_layers (0 is the embedding output); else a ValueError."""
    if not _is_int(layer) or not 0 <= layer <= n_layers:
        raise ValueError(f"layer={layer!r}: must be an integer in 0..{n_layers} (0 is the "
                         "embedding output, l the output of layer l)")
    return int(layer)


def _hit(shape, pos) -> jax.Array:
    """bool [B, T]: True at position ``pos`` (an int or int [B]) of each row."""
    b, t = shape[:2]
    pos = jnp.broadcast_to(jnp.asarray(pos, jnp.int32).reshape(-1), (b,))
    return jnp.arange(t)[None, :] == pos[:, None]


def _overwrite(x, hit, value):
    """x [B, T, D] with row b's position where ``hit`` [B, T] replaced by value [B, D] (or [D])."""
    value = jnp.broadcast_to(jnp.asarray(value, x.dtype), (x.shape[0], x.shape[-1]))
    return jnp.where(hit[..., None], value[:, None, :], x)


class _HiddenStates:
    """``hidden_states`` / ``patched_logits`` for a ``_StackedLM`` (listed before it in the
    bases). A layer's state is its output sequence; ``_patched_sequence`` says what else a
    patched state replaces (by default nothing: the layers above and the head read it)."""

    def _patched_sequence(self, layer, x, hit, value):
        """A layer's output with position ``hit`` [B, T] overwritten by value [B, D']; a
        recurrent layer whose carry is its output overrides this to carry the value on."""
        return _overwrite(self._sequence(layer, x, None), hit, value)

    def hidden_states(self, ids: jax.Array) -> tuple[jax.Array, ...]:
        """ids int32 [B, T] -> L + 1 arrays [B, T, D_l]: the embedding output, then each
        layer's output (eval mode: dropout off). ``_head`` of the last gives ``model(ids)``."""
        x = self.drop(self.embed(ids))  # [B, T, D]
        out = [x]
        for layer in self.layers:
            x = self._sequence(layer, x, None)
            out.append(x)
        return tuple(out)

    def patched_logits(self, ids: jax.Array, layer: int, pos, value) -> jax.Array:
        """Logits [B, T, V] with the hidden state of ``layer`` (0: embedding output) at position
        ``pos`` (int or int [B]) replaced by ``value`` [B, D_l] (or [D_l]) in each row; what
        the replaced state feeds (the layers above, the head, the layer's own carry where that
        carry is its output) sees the new value."""
        layer = _check_layer(layer, len(self.layers))
        hit = _hit(ids.shape, pos)  # [B, T]
        x = self.drop(self.embed(ids))  # [B, T, D]
        if layer == 0:
            x = _overwrite(x, hit, value)
        for i, lay in enumerate(self.layers, start=1):
            x = self._patched_sequence(lay, x, hit, value) if i == layer else \
                self._sequence(lay, x, None)
        return self._head(x)  # [B, T, V]
