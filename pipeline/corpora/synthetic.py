"""Synthetic probe tasks (prefix mode: every sequence starts at t = 0).

Spec: "<task>:T=..,vocab=..,<difficulty params>,seed=0,n=4096". Common parameters:
  T      sequence length
  vocab  number of data tokens 0..vocab-1; special tokens (markers, separators, padding) come after them,
         and `vocab_size` = vocab + number of specials
  seed   dataset seed (>= 0); n: number of indexable sequences (get(i) for 0 <= i < n)
  split  train (default), valid or test: each split is generated from its own seeds

Determinism: sequences are generated in fixed blocks of BLOCK = 256 rows; block b uses a numpy Generator
seeded from (seed, b, task name) for train and (seed, b, task name, 1 or 2) for valid or test, so sequence
i depends only on (spec, i) and the splits never share a seed. `sample(batch, rng)` on train draws fresh
sequences (unlimited training data) from a Generator seeded by (seed, task name, four words drawn from the
caller's rng): the stream depends on both the spec's seed and the trainer's rng, and is reproduced exactly
when both are (a resumed trainer restores its rng). On valid and test it draws from the split's n fixed
sequences, so a held-out split is a fixed, finite set.
Targets y are -1 wherever there is nothing to predict. `chance` is the answer accuracy of the best
input-independent (but position-aware) guess, averaged over target positions.

Against the reference (github.com/akarshkumar0101/smt, src/my_datasets/synthetic.py). Everywhere: the
reference numbers its special token (where it has one) 0 and data tokens 1..n; we number data tokens
0..vocab-1 and put specials after them (a relabeling, not a change of distribution), and an unused special
(PAD at full length) only adds an embedding row. Where the reference has the task, our default is its
distribution; the tasks as they were before issue 22 stay reachable by a parameter (and have new canonical
specs, hence new ids).
- retrieval (NeedleDataset, min_pos=0, max_pos=0.5): same positions by default (needle=half); needle=any
  is our uniform variant. Left: the reference's marker and query are the same token (0), ours are MARK
  and QUERY (the sequences correspond one to one: the query is always at T-1, the marker never is, but a
  model reading ours is told by the token rather than by counting that the question has come); its
  `noise` (default 0: answers replaced by random tokens) is not implemented.
- copy (StringCopyDataset): its `reverse` argument is ignored (always reversed), so reverse=1 is our
  default and reverse=0 our in-order variant. Left: the reference fixes L = T // 2 and needs even T; ours
  takes L and any T, padding with PAD; `noise` (default 0) is not implemented.
- stack (StackDataset): the same push/pop rule, and the same defaults (4 elements, stack size 10).
  Nothing left (the reference draws a value at every step, pushed or not: no change of distribution).
- kv (AssociativeRecallDataset): layout=ref (default) is its layout (multi-token keys from their own
  vocabulary, drawn with replacement; multi-token values; the query key then its value teacher-forced).
  Left: its sequence length is set by the pairs (2*key_len*n_keys, its n_keys counting the query), ours
  by T, with PAD on the left for the remainder; it has no defaults for key_len and the vocabularies,
  ours are key_len=2, keys=vocab (our choice). layout=query is our single-token, distinct-key variant.
- modarith: a different task from anything in the reference. Its ICLDataset (the in-context "modular
  arithmetic" probe) is an in-context linear function, y = (w*x + b) mod V with w, b fixed per sequence;
  ours evaluates one left-to-right expression mod p. We keep ours and have no ICL task.
- parity (ParityDataset): its default (dense=1, query=0): T bits, running parity targeted at every
  position, no query token. query=1 (dense=0 or 1) is our variant with a QUERY token at T-1.
- The reference's RecencyPrimacyBiasDataset has no counterpart here.
"""

from __future__ import annotations

import hashlib
import zlib

import numpy as np

from pipeline.corpora.base import Corpus
from pipeline.corpora.spec import SPLITS, CorpusError, Params, split_param

BLOCK = 256
_SAMPLE_TAG = zlib.crc32(b"train-sample")

__all__ = ["BLOCK", "TASKS", "Copy", "KeyValue", "ModArith", "Parity", "Retrieval", "Stack", "SyntheticTask"]


class SyntheticTask(Corpus):
    """Base: subclasses define `kind`, `T_default`, `T_min`, `_setup(p)` and `_generate(rng, B)`."""

    mode = "prefix"
    T_default = 64
    T_min = 2
    n_special = 0

    def __init__(self, raw: dict[str, str]):
        p = Params(self.kind, raw)
        T = p.int("T", self.T_default)
        if T < self.T_min:
            raise CorpusError(f"{self.kind}: T={T} too short: need T >= {self.T_min}")
        self.seq_len = self.T = T
        self._setup(p)
        self.seed = p.int("seed", 0, lo=0)
        self.num_sequences = p.int("n", 4096, lo=1)
        self.split = split_param(p)
        self._p = p.finish()
        self.spec = f"{self.kind}:{p.canonical()}"
        self._name_code = zlib.crc32(self.kind.encode())

    # -- to implement
    def _setup(self, p: Params) -> None:
        raise NotImplementedError

    def _generate(self, rng: np.random.Generator, B: int) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    # -- interface
    def block_seed(self, b: int) -> list[int]:
        """Seed material of block b: the split's code (none for train, 1 valid, 2 test) keeps splits apart."""
        code = SPLITS.index(self.split)
        return [self.seed, b, self._name_code] + ([code] if code else [])

    def _block(self, b: int) -> tuple[np.ndarray, np.ndarray]:
        return self._generate(np.random.default_rng(self.block_seed(b)), BLOCK)

    def get(self, indices):
        idx = self._check_indices(indices)
        x = np.empty((idx.size, self.T), dtype=np.int64)
        y = np.empty((idx.size, self.T), dtype=np.int64)
        blocks = idx // BLOCK
        for b in np.unique(blocks):
            sel = blocks == b
            bx, by = self._block(int(b))
            x[sel] = bx[idx[sel] % BLOCK]
            y[sel] = by[idx[sel] % BLOCK]
        return x, y

    def sample(self, batch_size, rng):
        if self.split != "train":
            return self.get(rng.integers(0, self.num_sequences, size=int(batch_size)))
        return self._generate(self._train_rng(rng), int(batch_size))

    def _train_rng(self, rng: np.random.Generator) -> np.random.Generator:
        """The Generator of one training batch: the spec's seed and the caller's rng both decide it (the
        seed alone used to be ignored here, so two seeds gave one stream under two corpus ids). The tag
        word keeps this seed material apart from every block's (seed, b, task[, split])."""
        words = rng.integers(0, 2**32, size=4, dtype=np.uint64)
        return np.random.default_rng([self.seed, self._name_code, _SAMPLE_TAG, *(int(w) for w in words)])

    def params(self):
        return dict(kind=self.kind, **self._p)

    def _data_digest(self) -> bytes:
        x, y = self.get(np.arange(min(self.num_sequences, 8)))
        return hashlib.sha256(x.tobytes() + y.tobytes()).digest()

    def _vocab(self, p: Params, default: int, lo: int = 2) -> int:
        V = p.int("vocab", default, lo=lo)
        self.vocab = V
        self.vocab_size = V + self.n_special
        return V


def _blank(B: int, T: int) -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((B, T), dtype=np.int64), np.full((B, T), -1, dtype=np.int64)


class Retrieval(SyntheticTask):
    """Needle retrieval. `retrieval:T=64,vocab=8,needle=half`.

    Layout: x is uniform random data tokens, except MARK (= vocab) at position m, the needle value (a
    uniform data token) at m+1, and QUERY (= vocab+1) at T-1. Target: y[T-1] = needle; all other y = -1.
    vocab_size = vocab + 2. Chance = 1/vocab (the needle is uniform).
    needle=half (default, the reference's): the needle sits at n = clip(floor(T*u), 1, T-2) with u uniform
    in [0, 1/2), the marker at m = n-1, so both lie in the first half [0, T/2) and every answer needs at
    least about T/2 steps of memory; for even T, m is uniform on 0..T/2-2 except that m = 0 is twice as
    likely (the clip moves n = 0 to 1). needle=any (the task before issue 22): m uniform on 0..T-3, so the
    needle can sit right before the query.
    """

    kind = "retrieval"
    T_min = 4  # at least two possible MARK positions (needle=any)
    n_special = 2

    def _setup(self, p):
        V = self._vocab(p, 8)
        self.needle = p.str("needle", "half", choices=("half", "any"))
        self.MARK, self.QUERY = V, V + 1
        self.chance = 1.0 / V

    def _generate(self, rng, B):
        T, V = self.T, self.vocab
        x = rng.integers(0, V, size=(B, T))
        if self.needle == "half":
            at = np.clip(np.floor(T * 0.5 * rng.random(B)).astype(np.int64), 1, T - 2)
            pos = at - 1
        else:
            pos = rng.integers(0, T - 2, size=B)
        needle = rng.integers(0, V, size=B)
        r = np.arange(B)
        x[r, pos] = self.MARK
        x[r, pos + 1] = needle
        x[:, T - 1] = self.QUERY
        y = np.full((B, T), -1, dtype=np.int64)
        y[:, T - 1] = needle
        return x.astype(np.int64), y


class Copy(SyntheticTask):
    """String copy. `copy:T=64,vocab=8,L=32,reverse=1`.

    Layout: x[0:L] = string s (uniform data tokens), x[L] = SEP (= vocab), then the output o = s reversed
    (reverse=1, the default: what the reference generates) or s itself (reverse=0) fed back one step late
    (teacher forcing): x[L+1+k] = o[k]. Targets: y[L+k] = o[k] for k in 0..L-1, else -1. Positions past
    2L+1 hold PAD (= vocab+1). Needs 2L <= T (default L = T // 2). vocab_size = vocab + 2. Chance = 1/vocab.
    Reversed, the k-th answer recalls the token 2k+1 steps back (last in, first out); in order, every
    answer recalls the token L steps back.
    """

    kind = "copy"
    n_special = 2

    def _setup(self, p):
        V = self._vocab(p, 8)
        L = p.int("L", self.T // 2, lo=1)
        if 2 * L > self.T:
            raise CorpusError(f"copy: L={L} too long for T={self.T}: need 2*L <= T (lower L or raise T)")
        self.L = L
        self.reverse = p.int("reverse", 1, lo=0, hi=1)
        self.SEP, self.PAD = V, V + 1
        self.chance = 1.0 / V

    def _generate(self, rng, B):
        T, L = self.T, self.L
        s = rng.integers(0, self.vocab, size=(B, L))
        o = s[:, ::-1] if self.reverse else s
        full = np.full((B, max(T, 2 * L + 1)), self.PAD, dtype=np.int64)
        full[:, :L] = s
        full[:, L] = self.SEP
        full[:, L + 1 : 2 * L + 1] = o
        y = np.full((B, T), -1, dtype=np.int64)
        y[:, L : 2 * L] = o
        return full[:, :T].copy(), y


class Stack(SyntheticTask):
    """Stack push/pop. `stack:T=64,vocab=4,depth=10` (defaults: the reference's 4 elements, stack size 10).

    Layout: each step is a push of a data token v (x[t] = v, y[t] = -1) or a pop (x[t] = POP = vocab,
    y[t] = the popped value). The stack starts empty; an empty stack forces a push, a full one (depth
    items) forces a pop, otherwise push or pop with probability 1/2. vocab_size = vocab + 1.
    Chance = 1/vocab (pushed values are uniform and independent of the pop pattern).
    """

    kind = "stack"
    n_special = 1

    def _setup(self, p):
        V = self._vocab(p, 4)
        self.depth = p.int("depth", 10, lo=1)
        self.POP = V
        self.chance = 1.0 / V

    def _generate(self, rng, B):
        T, D = self.T, self.depth
        vals = rng.integers(0, self.vocab, size=(B, T))
        coin = rng.random((B, T)) < 0.5
        x, y = _blank(B, T)
        stack = np.zeros((B, D), dtype=np.int64)
        size = np.zeros(B, dtype=np.int64)
        r = np.arange(B)
        for t in range(T):
            push = (size == 0) | ((size < D) & coin[:, t])
            top = stack[r, np.clip(size - 1, 0, D - 1)]
            stack[r[push], size[push]] = vals[push, t]
            x[:, t] = np.where(push, vals[:, t], self.POP)
            y[:, t] = np.where(push, -1, top)
            size += np.where(push, 1, -1)
        return x, y


class KeyValue(SyntheticTask):
    """Key-value associative recall. `kv:T=64,vocab=16,layout=ref,keys=<vocab>,key_len=2,pairs=<fill T>`.

    layout=ref (default, the reference's): `pairs` stored pairs, each a key of `key_len` key symbols
    (uniform from a key vocabulary of `keys` symbols, drawn with replacement: two pairs may share a key)
    followed by its value, `key_len` uniform data tokens 0..vocab-1; then the query, a copy of one stored key
    chosen uniformly, and that pair's value fed back one step late (teacher forcing). Targets: the last query
    token and the first key_len-1 value tokens predict the value's tokens, y[T-key_len-1+j] = value[j] for
    j < key_len; all other y = -1. Key symbol j is token vocab + j; PAD = vocab + keys fills the left
    when 2*key_len*(pairs+1) < T (default pairs = T // (2*key_len) - 1 fills T up to T mod 2*key_len).
    vocab_size = vocab + keys + 1. Chance = 1/vocab. When the query's key is stored more than once the
    target is the value of the chosen pair, so even a perfect model scores below 1 on such sequences (the
    reference's rule): raise keys or key_len to make repeats rare.
    layout=query (the task before issue 22; takes `pairs` <= vocab, default min(vocab, (T-2)//2)): left PAD
    (= vocab+1) up to T - 2*pairs - 2, then `pairs` single-token pairs (key, value) with distinct keys and
    uniform values (both data tokens 0..vocab-1), then QUERY (= vocab) and a query key drawn from the
    pairs. Target: y[T-1] = that key's value; all other y = -1. vocab_size = vocab + 2. Chance = 1/vocab.
    """

    kind = "kv"
    T_min = 4

    def _setup(self, p):
        V = p.int("vocab", 16, lo=2)
        self.vocab = V
        self.layout = p.str("layout", "ref", choices=("ref", "query"))
        if self.layout == "ref":
            self.keys = p.int("keys", V, lo=1)
            K = self.key_len = p.int("key_len", 2, lo=1)
            if 4 * K > self.T:
                raise CorpusError(
                    f"kv: key_len={K} too long for T={self.T}: need 4*key_len <= T (a stored pair and the query)"
                )
            P = p.int("pairs", self.T // (2 * K) - 1, lo=1)
            if 2 * K * (P + 1) > self.T:
                raise CorpusError(f"kv: pairs={P} too many for T={self.T}: need 2*key_len*(pairs+1) <= T")
            self.PAD = V + self.keys
            self.vocab_size = V + self.keys + 1
        else:
            P = p.int("pairs", min(V, (self.T - 2) // 2), lo=1, hi=V, why=" (keys are distinct data tokens)")
            if 2 * P + 2 > self.T:
                raise CorpusError(f"kv: pairs={P} too many for T={self.T}: need 2*pairs + 2 <= T")
            self.QUERY, self.PAD = V, V + 1
            self.vocab_size = V + 2
        self.pairs = P
        self.chance = 1.0 / V

    def _generate(self, rng, B):
        if self.layout == "query":
            return self._generate_query(rng, B)
        T, V, P, K = self.T, self.vocab, self.pairs, self.key_len
        keys = V + rng.integers(0, self.keys, size=(B, P, K))
        vals = rng.integers(0, V, size=(B, P, K))
        q = rng.integers(0, P, size=B)
        r = np.arange(B)
        x = np.full((B, T), self.PAD, dtype=np.int64)
        s = T - 2 * K * (P + 1)
        x[:, s : T - 2 * K] = np.stack([keys, vals], axis=2).reshape(B, 2 * K * P)  # key, value, key, ...
        x[:, T - 2 * K : T - K] = keys[r, q]
        x[:, T - K :] = vals[r, q]
        y = np.full((B, T), -1, dtype=np.int64)
        y[:, T - K - 1 : T - 1] = vals[r, q]
        return x, y

    def _generate_query(self, rng, B):
        T, V, P = self.T, self.vocab, self.pairs
        keys = np.argsort(rng.random((B, V)), axis=1)[:, :P]
        vals = rng.integers(0, V, size=(B, P))
        q = rng.integers(0, P, size=B)
        r = np.arange(B)
        x = np.full((B, T), self.PAD, dtype=np.int64)
        s = T - 2 * P - 2
        x[:, s : s + 2 * P : 2] = keys
        x[:, s + 1 : s + 2 * P : 2] = vals
        x[:, T - 2] = self.QUERY
        x[:, T - 1] = keys[r, q]
        y = np.full((B, T), -1, dtype=np.int64)
        y[:, T - 1] = vals[r, q]
        return x, y


_OPS = "+-*"


class ModArith(SyntheticTask):
    """In-context modular arithmetic. `modarith:T=64,vocab=7,ops=+,dense=0` (vocab = the modulus p).

    Layout: k = T // 2 operands a_j (uniform 0..p-1) as `a_0 op_1 a_1 ... op_{k-1} a_{k-1} EQ`, evaluated
    left to right mod p (no precedence); op tokens PLUS = p+2, MINUS = p+3, TIMES = p+4 drawn uniformly from
    `ops` (a subset of "+-*"); EQ = p; odd T starts with one PAD = p+1. Target: y[T-1] (at EQ) = the
    result. dense=1 also targets the running result at every operand position j >= 1. vocab_size = p + 5.
    Chance: 1/p whenever the last op is + or - (e.g. ops=+ or ops=+-); with * it is the largest
    probability of the result's exact distribution (a Markov chain over Z_p), computed in `_chance`.
    """

    kind = "modarith"
    T_min = 4
    n_special = 5

    def _setup(self, p):
        V = self._vocab(p, 7)
        ops = p.str("ops", "+")
        if not ops or any(c not in _OPS for c in ops) or len(set(ops)) != len(ops):
            raise CorpusError(
                f"modarith: ops={ops!r} invalid: use distinct characters from '+-*', e.g. ops=+-"
            )
        self.ops = "".join(c for c in _OPS if c in ops)
        p.values["ops"] = self.ops
        self.dense = p.int("dense", 0, lo=0, hi=1)
        self.EQ, self.PAD = V, V + 1
        self.OP_TOK = {c: V + 2 + i for i, c in enumerate(_OPS)}
        self.k = self.T // 2
        self.chance = self._chance()

    def _chance(self) -> float:
        V = self.vocab
        if "*" not in self.ops:
            return 1.0 / V  # a uniform operand added or subtracted makes the result uniform
        a = np.arange(V)
        M = np.zeros((V, V))
        for c in self.ops:
            for r in range(V):
                res = _apply(c, np.full(V, r), a, V)
                np.add.at(M[r], res, 1.0 / (V * len(self.ops)))
        d = np.full(V, 1.0 / V)
        per_step = []
        for _ in range(1, self.k):
            d = d @ M
            per_step.append(d.max())
        if self.dense:
            return float(np.mean(per_step + [per_step[-1]]))
        return float(per_step[-1])

    def _generate(self, rng, B):
        T, V, k = self.T, self.vocab, self.k
        a = rng.integers(0, V, size=(B, k))
        opi = rng.integers(0, len(self.ops), size=(B, k))
        tok = np.array([self.OP_TOK[c] for c in self.ops])
        x, y = _blank(B, T)
        off = T % 2
        if off:
            x[:, 0] = self.PAD
        run = a[:, 0].copy()
        x[:, off] = a[:, 0]
        for j in range(1, k):
            new = np.zeros_like(run)
            for i, c in enumerate(self.ops):
                m = opi[:, j] == i
                new[m] = _apply(c, run[m], a[m, j], V)
            run = new
            x[:, off + 2 * j - 1] = tok[opi[:, j]]
            x[:, off + 2 * j] = a[:, j]
            if self.dense:
                y[:, off + 2 * j] = run
        x[:, T - 1] = self.EQ
        y[:, T - 1] = run
        return x, y


def _apply(op: str, r: np.ndarray, a: np.ndarray, p: int) -> np.ndarray:
    if op == "+":
        return (r + a) % p
    if op == "-":
        return (r - a) % p
    return (r * a) % p


class Parity(SyntheticTask):
    """Parity. `parity:T=64,dense=1,query=0` (vocab is fixed: bits 0/1).

    Default (the reference's): x = T uniform bits, y[t] = sum(x[0..t]) mod 2 at every t (running parity).
    dense=0 keeps only the last target, y[T-1] = parity of the whole sequence. query=1 (with dense=0, the
    task before issue 22) makes x[T-1] a QUERY token (= 2) after T-1 bits, so y[T-1] is the parity of those
    bits and dense=1 targets the running parity at t < T-1 as well. vocab_size = 2 + query. Chance = 0.5.
    """

    kind = "parity"

    def _setup(self, p):
        if "vocab" in p.raw:
            raise CorpusError("parity: vocab is fixed at 2 (bits): drop the vocab parameter")
        self.dense = p.int("dense", 1, lo=0, hi=1)
        self.query = p.int("query", 0, lo=0, hi=1)
        self.vocab, self.vocab_size = 2, 2 + self.query
        self.QUERY = 2 if self.query else None
        self.chance = 0.5

    def _generate(self, rng, B):
        T = self.T
        n = T - self.query
        x = np.empty((B, T), dtype=np.int64)
        x[:, :n] = rng.integers(0, 2, size=(B, n))
        if self.query:
            x[:, T - 1] = self.QUERY
        y = np.full((B, T), -1, dtype=np.int64)
        run = np.cumsum(x[:, :n], axis=1) % 2
        if self.dense:
            y[:, :n] = run
        y[:, T - 1] = run[:, -1]
        return x, y


TASKS: dict[str, type[SyntheticTask]] = {
    c.kind: c for c in (Retrieval, Copy, Stack, KeyValue, ModArith, Parity)
}
