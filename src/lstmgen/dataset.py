"""Encode a corpus once into a compact token-id file, then serve (x, y) windows from it by
memory map. Memory stays flat whatever the corpus size.

The token file is flat ids (uint8/uint16/uint32, by vocabulary size). The first ``n_train``
ids are the training split, the rest validation. ``meta.json`` beside it records the layout.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from lstmgen import atomic
from lstmgen.corpus import is_path_like, iter_corpus_text, resolve_files
from lstmgen.errors import LstmgenError
from lstmgen.tokenizers import UnknownTokensWarning, tokenizer_class

TOKENS_FILE = "tokens.bin"
META_FILE = "meta.json"


def dtype_for_vocab(vocab_size: int) -> np.dtype:
    """The smallest unsigned dtype that holds every id."""
    for dt in (np.uint8, np.uint16, np.uint32):
        if vocab_size <= np.iinfo(dt).max + 1:
            return np.dtype(dt)
    raise LstmgenError(f"vocabulary of {vocab_size} tokens is too large")


@dataclass
class TokenFileMeta:
    """What ``meta.json`` records about an encoded corpus."""

    dtype: str
    n_tokens: int
    n_train: int
    n_train_chars: int
    n_val_chars: int
    sources: list[str] = field(default_factory=list)
    unknown_mapped: int = 0
    encode_seconds: float = 0.0

    @property
    def n_val(self) -> int:
        return self.n_tokens - self.n_train


@dataclass
class EncodedCorpus:
    """A token file on disk with its layout; ``train``/``val`` are read-only memory maps."""

    directory: Path
    meta: TokenFileMeta

    @classmethod
    def open(cls, directory: str | os.PathLike) -> EncodedCorpus:
        directory = Path(directory)
        try:
            meta = TokenFileMeta(**atomic.read_json(directory / META_FILE))
        except (OSError, TypeError, ValueError) as e:
            raise LstmgenError(
                f"the encoded corpus in {directory} is missing or damaged ({e})",
                hint="train again without --resume to re-encode it",
            ) from None
        expected = meta.n_tokens * np.dtype(meta.dtype).itemsize
        path = directory / TOKENS_FILE
        if not path.is_file() or path.stat().st_size != expected:
            raise LstmgenError(
                f"{path} is missing or has the wrong size",
                hint="train again without --resume to re-encode the corpus",
            )
        return cls(directory, meta)

    def _memmap(self) -> np.ndarray:
        if self.meta.n_tokens == 0:
            return np.zeros(0, dtype=self.meta.dtype)
        return np.memmap(self.directory / TOKENS_FILE, dtype=self.meta.dtype, mode="r")

    @property
    def train(self) -> np.ndarray:
        return self._memmap()[: self.meta.n_train]

    def train_reader(self) -> TokenReader:
        """The training split for :class:`WindowDataset`, read with ``pread``."""
        return TokenReader(self.directory / TOKENS_FILE, self.meta.dtype, self.meta.n_train)

    @property
    def val(self) -> np.ndarray:
        return self._memmap()[self.meta.n_train :]


def _source_names(source) -> list[str]:
    if source is None:
        return []
    if is_path_like(source):
        items = [source] if isinstance(source, (str, os.PathLike)) else source
        return [os.fspath(s) for s in items]
    return [f"<{type(source).__name__}>"]


def _spool(source, path: Path, read_options: dict) -> Path:
    """Write a one-shot iterable of strings to a file, so it can be read twice."""
    with open(path, "w", encoding="utf-8", newline="") as f:
        for chunk in iter_corpus_text(source, **read_options):
            f.write(chunk)
    return path


def encode_corpus(
    source,
    directory: str | os.PathLike,
    *,
    tokenizer="char",
    tokenizer_options: dict | None = None,
    val_source=None,
    val_fraction: float = 0.05,
    encoding_errors: str = "strict",
    normalize_newlines: bool = True,
    verbose: bool = True,
):
    """Fit a tokenizer in one streaming pass and encode the corpus into ``directory``.

    ``tokenizer`` is a kind ("char", ...) to fit, or an already fitted tokenizer (fine-tuning
    keeps its vocabulary; unseen characters are mapped and counted). Validation is
    ``val_source`` when given, else the last ``val_fraction`` of the tokens.

    Returns ``(tokenizer, EncodedCorpus)``.

    Example:
        >>> import tempfile
        >>> tok, enc = encode_corpus(iter(["to be or not to be\\n"] * 50), tempfile.mkdtemp(),
        ...                          verbose=False)
        >>> tok.vocab_size, enc.meta.n_tokens, enc.meta.n_train
        (8, 950, 903)
    """
    if not 0.0 <= val_fraction < 1.0:
        raise LstmgenError(
            f"val_fraction must be in [0, 1), got {val_fraction}", hint="e.g. 0.05"
        )
    for named in (source, val_source):
        if named is not None and is_path_like(named):
            resolve_files(named)  # fail on a missing path before anything is written
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    read_options = dict(encoding_errors=encoding_errors, normalize_newlines=normalize_newlines)
    started = time.perf_counter()
    sources = _source_names(source)
    spooled: list[Path] = []
    if not is_path_like(source):
        source = _spool(source, directory / "corpus.spool.txt", read_options)
        spooled.append(source)
    if val_source is not None and not is_path_like(val_source):
        val_source = _spool(val_source, directory / "val.spool.txt", read_options)
        spooled.append(val_source)
    try:
        if isinstance(tokenizer, str):
            cls = tokenizer_class(tokenizer)
            if verbose:
                print(f"building the {tokenizer} vocabulary ...", flush=True)
            tokenizer = cls.fit(iter_corpus_text(source, **read_options),
                                **(tokenizer_options or {}))
        dtype = dtype_for_vocab(tokenizer.vocab_size)
        with atomic.atomic_path(directory / TOKENS_FILE) as tmp, open(tmp, "wb") as out:
            n_train, train_chars, unknown = _encode_into(
                out, source, tokenizer, dtype, read_options, verbose
            )
            if val_source is not None:
                n_val, val_chars, val_unknown = _encode_into(
                    out, val_source, tokenizer, dtype, read_options, verbose
                )
                unknown += val_unknown
            else:
                n_val = int(math.floor(n_train * val_fraction))
                n_train -= n_val
                val_chars = 0
        meta = TokenFileMeta(
            dtype=dtype.name,
            n_tokens=n_train + n_val,
            n_train=n_train,
            n_train_chars=train_chars,
            n_val_chars=val_chars,
            sources=sources,
            unknown_mapped=unknown,
            encode_seconds=round(time.perf_counter() - started, 3),
        )
        corpus = EncodedCorpus(directory, meta)
        if val_source is None:
            # The split point is a token index; count the characters on each side of it.
            meta.n_val_chars = _count_chars(tokenizer, corpus.val)
            meta.n_train_chars = train_chars - meta.n_val_chars
        atomic.write_json(directory / META_FILE, asdict(meta))
    finally:
        for path in spooled:
            path.unlink(missing_ok=True)
    if meta.n_tokens == 0:
        raise LstmgenError("the corpus is empty", hint="pass files that contain text")
    if unknown:
        warnings.warn(
            f"{unknown} token(s) of the corpus are outside the saved vocabulary and were "
            "mapped to known ones",
            UnknownTokensWarning,
            stacklevel=2,
        )
    return tokenizer, corpus


def _encode_into(out, source, tokenizer, dtype, read_options, verbose):
    n_tokens = n_chars = unknown = 0
    started = time.perf_counter()
    last_report = started
    for chunk in iter_corpus_text(source, **read_options):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UnknownTokensWarning)
            ids = tokenizer.encode(chunk)
        if caught:
            unknown += tokenizer.count_unknown(chunk)
        out.write(np.ascontiguousarray(ids, dtype=dtype))  # buffer protocol: no copy
        n_tokens += len(ids)
        n_chars += len(chunk)
        now = time.perf_counter()
        if verbose and now - last_report > 5:
            rate = n_chars / (now - started) / 1e6
            print(f"  encoded {n_chars / 1e6:,.1f}M characters ({rate:.1f}M/s)", flush=True)
            last_report = now
    return n_tokens, n_chars, unknown


def _count_chars(tokenizer, ids: np.ndarray, block: int = 1 << 22) -> int:
    if getattr(tokenizer, "chars_per_token_is_one", False):
        return int(ids.size)
    return sum(
        tokenizer.count_chars(np.asarray(ids[i : i + block])) for i in range(0, ids.size, block)
    )


class TokenReader:
    """Token ids ``[0, length)`` of a token file, read window by window with ``os.pread``.

    Reads go through the page cache but map nothing into the process, so its resident
    memory stays the same for a 100 MB corpus and a 50 GB one (a memory map's touched pages
    count as the process's own).

    Example:
        >>> import tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "t.bin")
        >>> np.arange(100, dtype=np.uint16).tofile(path)
        >>> TokenReader(path, "uint16", 100)[np.array([[3, 4, 5], [90, 91, 92]])].tolist()
        [[3, 4, 5], [90, 91, 92]]
    """

    def __init__(self, path: str | os.PathLike, dtype: str, length: int):
        self.path = os.fspath(path)
        self.dtype = np.dtype(dtype)
        self.length = length
        self._fd = None

    def __len__(self) -> int:
        return self.length

    def __getstate__(self):  # picklable for worker processes: reopen there
        return {**self.__dict__, "_fd": None}

    def __getitem__(self, offsets: np.ndarray) -> np.ndarray:
        """``offsets`` is a (rows, width) array of consecutive positions per row."""
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        size = self.dtype.itemsize
        width = offsets.shape[1]
        rows = [np.frombuffer(os.pread(self._fd, width * size, int(first) * size), self.dtype)
                for first in offsets[:, 0]]
        return np.stack(rows)

    def __del__(self):
        if self._fd is not None:
            os.close(self._fd)


class WindowOrder:
    """Which window each batch row reads, as a pure function of (seed, epoch, batch index).

    The training split is cut into ``n_windows`` non-overlapping windows of ``seq_len + 1``
    tokens, starting at a random shift in each epoch. By default windows are visited in a
    random affine permutation ``i -> (a*i + c) mod n`` — O(1) memory, so an epoch over a 50 GB
    corpus costs no more RAM than one over a book, and a resumed run reads exactly the batches
    it would have. With ``lanes=True`` (training with the state carried, see
    :mod:`lstmgen.carried_state`) the split is cut into ``batch_size`` contiguous lanes instead
    and row ``i`` of batch ``b`` reads window ``b`` of lane ``i``: each row continues the text
    where the same row of the previous batch stopped, and :meth:`keep` says which rows carry
    their state into the window and which start from zeros.

    Example:
        >>> order = WindowOrder(n_tokens=1001, seq_len=10, batch_size=4, seed=0, lanes=True)
        >>> order.batches_per_epoch, order.starts(0, 1) - order.starts(0, 0)
        (25, array([10, 10, 10, 10]))
    """

    def __init__(self, n_tokens: int, seq_len: int, batch_size: int, seed: int,
                 lanes: bool = False):
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.seed = seed
        self.lanes = lanes
        self.n_windows = (n_tokens - 1) // seq_len
        self.batches_per_epoch = self.n_windows // batch_size
        used = (self.batches_per_epoch * batch_size if lanes else self.n_windows) * seq_len
        self.slack = (n_tokens - 1) - used

    def _epoch_params(self, epoch: int) -> tuple[int, int, int]:
        rng = np.random.default_rng([self.seed, epoch])
        n = self.n_windows
        shift = int(rng.integers(0, self.slack + 1))
        while True:
            a = int(rng.integers(1, n)) if n > 1 else 1
            if math.gcd(a, n) == 1:
                break
        c = int(rng.integers(0, n))
        return shift, a, c

    def starts(self, epoch: int, batch: int) -> np.ndarray:
        """Start offsets (into the split) of the windows of one global batch."""
        shift, a, c = self._epoch_params(epoch)
        if self.lanes:
            lane_length = self.batches_per_epoch * self.seq_len
            lanes = np.arange(self.batch_size, dtype=np.int64)
            return shift + lanes * lane_length + batch * self.seq_len
        rows = np.arange(batch * self.batch_size, (batch + 1) * self.batch_size, dtype=np.int64)
        windows = (a * rows + c) % self.n_windows
        return shift + windows * self.seq_len

    def keep(self, epoch: int, batch: int, reset: float) -> np.ndarray:
        """Which rows of a lane batch carry their state on (1.0) and which start it from
        zeros (0.0): each row restarts with probability ``reset``, and every row at the start
        of an epoch. Shape ``(batch_size, 1)``, float32.

        Example:
            >>> order = WindowOrder(n_tokens=10_001, seq_len=10, batch_size=8, seed=0, lanes=True)
            >>> order.keep(0, 0, reset=0.1).ravel().tolist()
            [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
            >>> round(float(np.mean([order.keep(0, b, reset=0.25) for b in range(1, 100)])), 2)
            0.76
        """
        if batch == 0:
            return np.zeros((self.batch_size, 1), np.float32)
        rng = np.random.default_rng([self.seed, epoch, batch, 1])
        return (rng.random((self.batch_size, 1)) >= reset).astype(np.float32)


def _keras_pydataset():
    import keras

    return keras.utils.PyDataset


class WindowDataset(_keras_pydataset()):
    """A ``keras.utils.PyDataset`` of ``(x, y)`` batches for one epoch, read from disk.

    ``x[i, t]`` is token ``s_i + t`` and ``y[i, t]`` token ``s_i + t + 1``: every position
    predicts its next token. ``first_batch`` skips batches already trained (exact resume);
    ``shard=(index, count)`` gives this process its slice of every global batch; ``lanes``
    reads contiguous lanes (see :class:`WindowOrder`), and then ``x`` is ``(tokens, keep)``,
    with ``keep`` the rows that carry their state on (``state_reset``: the share that do not).

    Example:
        >>> tokens = np.arange(1000, dtype=np.uint16)
        >>> ds = WindowDataset(tokens, seq_len=8, batch_size=4, seed=0, epoch=0)
        >>> x, y = ds[0]
        >>> x.shape, bool((y[:, :-1] == x[:, 1:]).all())
        ((4, 8), True)
    """

    def __init__(
        self,
        tokens: np.ndarray | TokenReader,
        *,
        seq_len: int,
        batch_size: int,
        seed: int,
        epoch: int,
        first_batch: int = 0,
        num_batches: int | None = None,
        shard: tuple[int, int] = (0, 1),
        lanes: bool = False,
        state_reset: float = 0.0,
    ):
        super().__init__(workers=1, use_multiprocessing=False)
        self.state_reset = state_reset
        self.tokens = tokens
        self.order = WindowOrder(len(tokens), seq_len, batch_size, seed, lanes=lanes)
        self.epoch = epoch
        self.first_batch = first_batch
        total = self.order.batches_per_epoch
        self.num_batches_ = max(0, (num_batches if num_batches is not None else total)
                                - first_batch)
        index, count = shard
        if batch_size % count:
            raise LstmgenError(
                f"batch size {batch_size} does not split evenly over {count} processes",
                hint="use a batch size divisible by the number of processes",
            )
        per = batch_size // count
        self.rows = slice(index * per, (index + 1) * per)

    def __len__(self) -> int:
        return self.num_batches_

    def __getitem__(self, index: int):
        if index >= self.num_batches_:
            raise IndexError(index)
        batch = self.first_batch + index
        starts = self.order.starts(self.epoch, batch)[self.rows]
        offsets = starts[:, None] + np.arange(self.order.seq_len + 1)[None, :]
        window = np.asarray(self.tokens[offsets], dtype=np.int32)
        if self.order.lanes:
            keep = self.order.keep(self.epoch, batch, self.state_reset)[self.rows]
            return (window[:, :-1], keep), window[:, 1:]
        return window[:, :-1], window[:, 1:]
