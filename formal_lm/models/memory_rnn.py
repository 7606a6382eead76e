"""Memory-augmented RNNs: the Stack-RNN and the Tape-RNN.

After Deletang et al. 2023, "Neural Networks and the Chomsky Hierarchy" (their Stack-RNN
follows Joulin & Mikolov 2015): an Elman controller that reads one memory cell every step
and, from its new state, chooses soft actions on a differentiable memory.

Shape glossary:

  B  batch size        T  sequence length        V  vocab_size
  D  d_model           N  hidden (controller)    L  n_layers
  S  memory size (stack_size / tape_size)        W  cell width (stack_width / tape_width)
  A  number of actions (3 for the stack, 4 for the tape)

One layer, for input x_t [B, D_in] and memory M [B, S, W] (M[:, 0] is the stack top / the
cell under the tape head):

  h_t = tanh(W_x x_t + b + U h_{t-1} + R M_{t-1}[:, 0])      [B, N]
  a_t = softmax(W_a h_t + b_a)                                [B, A]
  v_t = W_v h_t + b_v                                         [B, W]
  M_t = sum_i a_t[i] * op_i(M_{t-1}, v_t)

Stack operations (push, pop, no-op), with cells beyond the bottom read as zeros:

  push: [v, M[0], ..., M[S-2]]     pop: [M[1], ..., M[S-1], 0]     no-op: M

Tape operations (circular tape of S cells, head at cell 0; the tape moves under the head).
Deletang et al.'s three write actions without their two jumps by the input length (a causal
language model does not know the length), plus a no-op:

  write-stay:  w = [v, M[1], ..., M[S-1]]     write-left:  roll(w, -1) (the head now reads w[1])
  write-right: roll(w, +1) (the head now reads w[S-1])      no-op: M (nothing written)

The layer outputs h_t. The model is embedding -> dropout -> L layers (dropout after each,
each layer with its own memory) -> linear to V; carries start at zero (an empty stack,
a blank tape). Deletang et al.'s controller is haiku's VanillaRNN (ReLU) and their tape
writes through an MLP; here the controller is tanh and the written value is linear.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from formal_lm.models._common import (_dropout, _dropout_problems, _int_problems, _ModelConfig,
                                      _StackedLM)
from formal_lm.models._hidden import _HiddenStates

STACK_ACTIONS = ("push", "pop", "no-op")
TAPE_ACTIONS = ("write-stay", "write-left", "write-right", "no-op")


@dataclasses.dataclass(frozen=True)
class StackRNNConfig(_ModelConfig):
    """Hyper-parameters of :class:`StackRNNLM`, checked when built.

    Args:
      vocab_size: number of token ids (PAD=0, BOS=1, EOS=2, symbols from 3).
      d_model: embedding width.
      hidden: controller width N.
      n_layers: number of stacked controller layers (each with its own stack).
      stack_size: number of stack cells S (deeper pushes fall off the bottom).
      stack_width: width W of a stack cell.
      dropout: rate on the embeddings and on every layer's output (train mode only).

    Example:
      >>> StackRNNConfig(vocab_size=8, stack_size=16).stack_size
      16
    """

    hidden: int = 64
    n_layers: int = 1
    stack_size: int = 30
    stack_width: int = 8
    dropout: float = 0.0

    def _problems(self) -> list[str]:
        problems = _int_problems(self, {"vocab_size": 4, "d_model": 1, "hidden": 1, "n_layers": 1,
                                        "stack_size": 1, "stack_width": 1})
        return problems + _dropout_problems(self)

    @property
    def memory_shape(self) -> tuple[int, int]:
        """(S, W) of one layer's stack."""
        return (self.stack_size, self.stack_width)


@dataclasses.dataclass(frozen=True)
class TapeRNNConfig(_ModelConfig):
    """Hyper-parameters of :class:`TapeRNNLM`, checked when built.

    Args:
      vocab_size: number of token ids (PAD=0, BOS=1, EOS=2, symbols from 3).
      d_model: embedding width.
      hidden: controller width N.
      n_layers: number of stacked controller layers (each with its own tape).
      tape_size: number of cells S of the circular tape.
      tape_width: width W of a tape cell.
      dropout: rate on the embeddings and on every layer's output (train mode only).

    Example:
      >>> TapeRNNConfig(vocab_size=8, tape_width=4).tape_width
      4
    """

    hidden: int = 64
    n_layers: int = 1
    tape_size: int = 30
    tape_width: int = 8
    dropout: float = 0.0

    def _problems(self) -> list[str]:
        problems = _int_problems(self, {"vocab_size": 4, "d_model": 1, "hidden": 1, "n_layers": 1,
                                        "tape_size": 1, "tape_width": 1})
        return problems + _dropout_problems(self)

    @property
    def memory_shape(self) -> tuple[int, int]:
        """(S, W) of one layer's tape."""
        return (self.tape_size, self.tape_width)


# --------------------------------------------------------------------------- memory updates


def stack_update(stack: jax.Array, actions: jax.Array, value: jax.Array) -> jax.Array:
    """Soft stack update: stack [B, S, W], actions [B, 3] (push, pop, no-op), value [B, W].

    Example:
      >>> s = jnp.zeros((1, 3, 1))
      >>> push, pop = jnp.array([[1.0, 0, 0]]), jnp.array([[0, 1.0, 0]])
      >>> s = stack_update(stack_update(s, push, jnp.array([[5.0]])), push, jnp.array([[7.0]]))
      >>> stack_update(s, pop, jnp.array([[9.0]]))[0, :, 0].tolist()
      [5.0, 0.0, 0.0]
    """
    pushed = jnp.concatenate([value[:, None, :], stack[:, :-1]], axis=1)  # [B, S, W]
    popped = jnp.concatenate([stack[:, 1:], jnp.zeros_like(stack[:, :1])], axis=1)
    a = actions[:, :, None, None]  # [B, 3, 1, 1]
    return a[:, 0] * pushed + a[:, 1] * popped + a[:, 2] * stack


def tape_update(tape: jax.Array, actions: jax.Array, value: jax.Array) -> jax.Array:
    """Soft tape update: tape [B, S, W], actions [B, 4] (write-stay, write-left, write-right,
    no-op), value [B, W] (written under the head, cell 0, before moving).

    Example:
      >>> t = jnp.zeros((1, 3, 1))
      >>> left = jnp.array([[0, 1.0, 0, 0]])
      >>> tape_update(t, left, jnp.array([[4.0]]))[0, :, 0].tolist()
      [0.0, 0.0, 4.0]
    """
    written = jnp.concatenate([value[:, None, :], tape[:, 1:]], axis=1)  # [B, S, W]
    a = actions[:, :, None, None]  # [B, 4, 1, 1]
    return (a[:, 0] * written + a[:, 1] * jnp.roll(written, -1, axis=1)
            + a[:, 2] * jnp.roll(written, 1, axis=1) + a[:, 3] * tape)


# --------------------------------------------------------------------------- layer


class _MemoryLayer(nnx.Module):
    """One Elman controller with its memory; ``update`` is :func:`stack_update` or
    :func:`tape_update`. Carries: ``h`` [B, N] and ``mem`` [B, S, W]."""

    carry_names = ("h", "mem")

    def __init__(self, d_in: int, cfg, n_actions: int, update, rngs: nnx.Rngs):
        n = cfg.hidden
        self.hidden, self.memory_shape, self.update = n, cfg.memory_shape, update
        width = cfg.memory_shape[1]
        self.w_in = nnx.Linear(d_in, n, rngs=rngs)  # x -> h, with bias
        self.w_rec = nnx.Linear(n, n, use_bias=False, rngs=rngs)  # h -> h
        self.w_read = nnx.Linear(width, n, use_bias=False, rngs=rngs)  # read cell -> h
        self.w_value = nnx.Linear(n, width, rngs=rngs)  # h -> pushed / written value
        self.w_action = nnx.Linear(n, n_actions, rngs=rngs)  # h -> action logits

    def zero_carry(self, b):
        return (jnp.zeros((b, self.hidden), jnp.float32),
                jnp.zeros((b, *self.memory_shape), jnp.float32))

    def _advance(self, x_proj, carry):  # x_proj [B, N] = w_in(x_t)
        h, mem = carry
        h = jnp.tanh(x_proj + self.w_rec(h) + self.w_read(mem[:, 0]))  # [B, N]
        actions = jax.nn.softmax(self.w_action(h), axis=-1)  # [B, A]
        mem = self.update(mem, actions, self.w_value(h))  # [B, S, W]
        return h, (h, mem)

    def scan(self, x):  # [B, T, D_in] -> [B, T, N]
        xs = jnp.swapaxes(self.w_in(x), 0, 1)  # [T, B, N]

        def body(carry, x_t):
            _, carry = self._advance(x_t, carry)
            return carry, carry[0]

        _, ys = jax.lax.scan(body, self.zero_carry(x.shape[0]), xs)
        return jnp.swapaxes(ys, 0, 1)

    def cell(self, x_t, carry):  # [B, D_in], ([B, N], [B, S, W])
        return self._advance(self.w_in(x_t), carry)


# --------------------------------------------------------------------------- LMs


class _MemoryLM(_HiddenStates, _StackedLM):
    """Embedding -> stacked memory layers (dropout after each) -> unembedding."""

    _actions: tuple[str, ...]
    _update = None

    def __init__(self, config, *, rngs: nnx.Rngs):
        cfg = self.config = config
        self.embed = nnx.Embed(cfg.vocab_size, cfg.d_model, rngs=rngs)
        dims = [cfg.d_model] + [cfg.hidden] * (cfg.n_layers - 1)
        update = type(self)._update
        self.layers = nnx.List([_MemoryLayer(d, cfg, len(self._actions), update, rngs)
                                for d in dims])
        self.drop = _dropout(cfg.dropout, rngs)
        self.unembed = nnx.Linear(cfg.hidden, cfg.vocab_size, rngs=rngs)

    def _head(self, x):
        return self.unembed(x).astype(jnp.float32)

    def init_state(self, batch_size: int, max_len: int | None = None) -> dict[str, jax.Array]:
        """Zero controllers and empty memories; ``max_len`` is accepted for interface parity
        and ignored. Shapes: h [L, B, N], mem [L, B, S, W]."""
        carries = [layer.zero_carry(batch_size) for layer in self.layers]
        return {"pos": jnp.zeros((), jnp.int32),
                "h": jnp.stack([c[0] for c in carries]),
                "mem": jnp.stack([c[1] for c in carries])}


class StackRNNLM(_MemoryLM):
    """Stack-RNN language model; build it with ``make("stack_rnn", ...)``.

    Decoding state: {"pos": int32 [], "h": [L, B, N], "mem": [L, B, S, W]}; O(S W + N^2)
    work per token.

    Example:
      >>> from flax import nnx
      >>> cfg = StackRNNConfig(vocab_size=6, d_model=4, hidden=8, stack_size=5, stack_width=2)
      >>> m = nnx.eval_shape(lambda: StackRNNLM(cfg, rngs=nnx.Rngs(0)))  # shapes only
      >>> {k: v.shape for k, v in m.init_state(3).items()}
      {'pos': (), 'h': (1, 3, 8), 'mem': (1, 3, 5, 2)}
    """

    _actions = STACK_ACTIONS
    _update = staticmethod(stack_update)


class TapeRNNLM(_MemoryLM):
    """Tape-RNN language model; build it with ``make("tape_rnn", ...)``.

    Decoding state: {"pos": int32 [], "h": [L, B, N], "mem": [L, B, S, W]}; O(S W + N^2)
    work per token.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> m = TapeRNNLM(TapeRNNConfig(vocab_size=6, d_model=4, hidden=8), rngs=nnx.Rngs(0))
      >>> m(jnp.array([[1, 3, 2]], dtype=jnp.int32)).shape
      (1, 3, 6)
    """

    _actions = TAPE_ACTIONS
    _update = staticmethod(tape_update)
