import os
import subprocess
import sys

import numpy as np
import pytest

from lstmgen.dataset import EncodedCorpus, WindowDataset, WindowOrder, encode_corpus
from lstmgen.errors import LstmgenError
from lstmgen.tokenizers import CharTokenizer


def test_encode_writes_compact_ids_that_decode_to_the_corpus(tmp_path, shakespeare):
    tok, enc = encode_corpus(shakespeare, tmp_path, val_fraction=0.1, verbose=False)
    text = shakespeare.read_text(encoding="utf-8")
    assert enc.meta.dtype == "uint8"
    assert enc.meta.n_tokens == len(text)
    assert enc.meta.n_train == len(text) - len(text) // 10
    assert (tmp_path / "tokens.bin").stat().st_size == len(text)
    assert tok.decode(enc.train) + tok.decode(enc.val) == text
    assert enc.meta.n_train_chars + enc.meta.n_val_chars == len(text)
    reopened = EncodedCorpus.open(tmp_path)
    assert reopened.meta == enc.meta


def test_large_vocabulary_uses_uint16(tmp_path):
    text = "".join(chr(0x4E00 + i) for i in range(300)) + "\n"
    tok, enc = encode_corpus(iter([text]), tmp_path, verbose=False)
    assert tok.vocab_size == 301
    assert enc.meta.dtype == "uint16"
    assert tok.decode(np.concatenate([enc.train, enc.val])) == text


def test_separate_validation_corpus(tmp_path, small_text):
    val = tmp_path / "val.txt"
    val.write_text("ZZZ unseen? Q\n", encoding="utf-8")
    with pytest.warns(UserWarning, match="outside the saved vocabulary"):
        tok, enc = encode_corpus(small_text, tmp_path / "d", val_source=val, verbose=False)
    assert enc.meta.n_val == len("ZZZ unseen? Q\n")
    assert enc.meta.n_train == len(small_text.read_text(encoding="utf-8"))


def test_iterable_source_is_spooled_and_removed(tmp_path):
    tok, enc = encode_corpus((f"line {i}\n" for i in range(1000)), tmp_path, verbose=False)
    assert enc.meta.n_tokens == sum(len(f"line {i}\n") for i in range(1000))
    assert not list(tmp_path.glob("*.spool.txt"))


def test_fitted_tokenizer_is_kept_and_unknowns_counted(tmp_path):
    tok = CharTokenizer.fit(["abc \n"])
    with pytest.warns(UserWarning, match="outside the saved vocabulary"):
        same, enc = encode_corpus(iter(["abcé xyz\n"]), tmp_path, tokenizer=tok,
                                  val_fraction=0, verbose=False)
    assert same is tok
    assert enc.meta.unknown_mapped == 4  # é, x, y, z


def test_empty_corpus_is_an_error(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(LstmgenError, match="empty"):
        encode_corpus(empty, tmp_path / "d", verbose=False)


def test_damaged_token_file_is_reported(tmp_path, small_text):
    encode_corpus(small_text, tmp_path, verbose=False)
    with open(tmp_path / "tokens.bin", "ab") as f:
        f.write(b"xx")
    with pytest.raises(LstmgenError, match="wrong size"):
        EncodedCorpus.open(tmp_path)


def test_windows_are_shifted_pairs_covering_the_split():
    tokens = np.arange(10_000, dtype=np.uint32) % 251
    positions = np.arange(10_000)
    seq, batch = 16, 8
    ds = WindowDataset(positions, seq_len=seq, batch_size=batch, seed=3, epoch=0)
    covered = np.zeros(10_000, bool)
    starts = []
    for i in range(len(ds)):
        x, y = ds[i]
        assert x.shape == y.shape == (batch, seq)
        assert (y == x + 1).all()  # every position predicts the next token
        covered[x.ravel()] = True
        starts.extend(x[:, 0].tolist())
    assert len(starts) == len(set(starts))  # no window twice in an epoch
    order = WindowOrder(len(tokens), seq, batch, 3)
    dropped = order.n_windows - len(ds) * batch
    assert dropped < batch
    assert covered.sum() >= 10_000 - (dropped + 1) * seq - order.slack - 1


def test_epochs_differ_and_order_is_reproducible():
    positions = np.arange(5_000)
    a = WindowDataset(positions, seq_len=10, batch_size=4, seed=1, epoch=0)
    b = WindowDataset(positions, seq_len=10, batch_size=4, seed=1, epoch=0)
    c = WindowDataset(positions, seq_len=10, batch_size=4, seed=1, epoch=1)
    assert (a[5][0] == b[5][0]).all()
    assert not (a[5][0] == c[5][0]).all()


def test_first_batch_skips_exactly_the_trained_batches():
    positions = np.arange(5_000)
    full = WindowDataset(positions, seq_len=10, batch_size=4, seed=1, epoch=2)
    rest = WindowDataset(positions, seq_len=10, batch_size=4, seed=1, epoch=2, first_batch=7)
    assert len(rest) == len(full) - 7
    assert (rest[0][0] == full[7][0]).all()


def test_shards_split_each_global_batch():
    positions = np.arange(5_000)
    whole = WindowDataset(positions, seq_len=10, batch_size=4, seed=1, epoch=0)
    parts = [WindowDataset(positions, seq_len=10, batch_size=4, seed=1, epoch=0,
                           shard=(i, 2)) for i in range(2)]
    joined = np.concatenate([parts[0][3][0], parts[1][3][0]])
    assert (joined == whole[3][0]).all()


def test_lanes_continue_each_row_where_the_previous_batch_stopped():
    positions = np.arange(5_003)
    ds = WindowDataset(positions, seq_len=10, batch_size=4, seed=1, epoch=0, lanes=True)
    assert len(ds) == 5_002 // (10 * 4)
    batches = [(x, y) for (x, _), y in (ds[i] for i in range(len(ds)))]
    for (x0, y0), (x1, _) in zip(batches, batches[1:]):
        assert (y0 == x0 + 1).all()
        assert (x1[:, 0] == y0[:, -1]).all()  # row i goes on with the next window of lane i
    read = np.concatenate([x.ravel() for x, _ in batches])
    assert len(np.unique(read)) == read.size == len(ds) * 4 * 10  # each token once per epoch
    lane_starts = batches[0][0][:, 0]
    assert (np.diff(lane_starts) == len(ds) * 10).all()
    firsts = {int(WindowDataset(np.arange(5_039), seq_len=10, batch_size=4, seed=1, epoch=e,
                                lanes=True)[0][0][0][0, 0]) for e in range(6)}
    assert len(firsts) > 1 and max(firsts) <= 5_038 - 4 * 10 * 125  # epochs shift the lanes
    halves = [WindowDataset(positions, seq_len=10, batch_size=4, seed=1, epoch=0, lanes=True,
                            shard=(i, 2), first_batch=3)[0][0] for i in range(2)]
    for k in range(2):  # tokens and keep mask alike: each process gets its rows
        assert (np.concatenate([h[k] for h in halves]) == ds[3][0][k]).all()


def test_lanes_restart_a_share_of_rows_from_a_fresh_state():
    positions = np.arange(200_000)
    args = dict(seq_len=10, batch_size=16, seed=3, epoch=2, lanes=True)
    ds = WindowDataset(positions, state_reset=0.2, **args)
    keeps = np.stack([ds[i][0][1] for i in range(len(ds))])
    assert keeps.shape == (len(ds), 16, 1) and set(np.unique(keeps)) == {0.0, 1.0}
    assert not keeps[0].any()  # every lane starts the epoch from zeros
    assert 0.17 < 1 - keeps[1:].mean() < 0.23  # then each window restarts 20% of the rows
    # a pure function of (seed, epoch, batch): a resumed dataset draws the same mask
    resumed = WindowDataset(positions, state_reset=0.2, first_batch=50, **args)
    assert (resumed[0][0][1] == keeps[50]).all()
    never = WindowDataset(positions, state_reset=0.0, **args)
    assert all(never[i][0][1].all() for i in range(1, 20))


def test_reader_windows_equal_memory_map_windows(tmp_path, small_text):
    _, enc = encode_corpus(small_text, tmp_path, verbose=False)
    args = dict(seq_len=32, batch_size=8, seed=4, epoch=1)
    mapped = WindowDataset(enc.train, **args)
    read = WindowDataset(enc.train_reader(), **args)
    assert len(mapped) == len(read) > 10
    for i in (0, 5, len(read) - 1):
        for a, b in zip(mapped[i], read[i]):
            np.testing.assert_array_equal(a, b)


PEAK_ANON = """
import sys, threading
import lstmgen

peak, done = [0], threading.Event()

def anon():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("RssAnon"))

def sample():
    while not done.wait(0.01):
        peak[0] = max(peak[0], anon())

threading.Thread(target=sample, daemon=True).start()
lstmgen.train(sys.argv[1], out=sys.argv[2], model=lstmgen.ModelConfig(units=32, embedding_dim=8),
              batch_size=8, seq_len=32, max_steps=5, sample_length=0, val_tokens=20_000,
              verbose=0)
done.set()
print(max(peak[0], anon()))
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux /proc")
def test_memory_stays_flat_when_the_corpus_grows_tenfold(tmp_path):
    """Encoding and training read the corpus in chunks and by memory map: a corpus 10x
    larger (3 MB vs 30 MB of text) must not raise the peak anonymous memory by more than a
    fraction of what holding it would cost (its text alone is 30 MB, its ids 120 MB)."""
    rng = np.random.default_rng(0)
    words = np.array(["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "and",
                      "runs", "far", "away", "again", "\n"])
    peaks = {}
    for megabytes in (3, 30):
        path = tmp_path / f"corpus{megabytes}.txt"
        with open(path, "w", encoding="utf-8") as f:
            while f.tell() < megabytes * 10**6:
                f.write(" ".join(rng.choice(words, 100_000)) + "\n")
        result = subprocess.run([sys.executable, "-c", PEAK_ANON, str(path),
                                 str(tmp_path / f"run{megabytes}")],
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        peaks[megabytes] = int(result.stdout.split()[-1])
    assert peaks[30] - peaks[3] < 24 * 2**20, peaks
