"""lstmgen vs the classic Keras tutorial approach to character-level text generation.

The tutorial (keras.io "Character-level text generation with LSTM") cuts the text into
40-character windows every 3 characters, trains on one next-character target per window
with one-hot targets (categorical cross-entropy), and generates by calling
``model.predict`` on the last 40 characters for every new character. Here both use
Embedding 128 -> LSTM 256 -> Dense(vocabulary), on tiny-shakespeare, on the JAX backend:

- training: targets (predicted characters) per second;
- generation: characters per second, one stream;
- the tutorial's preprocessing memory per byte of corpus (lstmgen's is the token file,
  1 byte per character, read by memory map).

    python bench/bench_tutorial.py           # a few seconds per measurement
    python bench/bench_tutorial.py --quick
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import header, load, median_time, tiny_shakespeare  # noqa: E402

os.environ.setdefault("KERAS_BACKEND", "jax")
MAXLEN, STEP, EMBED, UNITS = 40, 3, 128, 256


def tutorial_preprocess(text: str, chars: list[str]):
    """Exactly the tutorial's data preparation (with integer inputs for the Embedding)."""
    import numpy as np

    char_indices = {c: i for i, c in enumerate(chars)}
    sentences, next_chars = [], []
    for i in range(0, len(text) - MAXLEN, STEP):
        sentences.append(text[i : i + MAXLEN])
        next_chars.append(text[i + MAXLEN])
    x = np.zeros((len(sentences), MAXLEN), dtype="int32")
    y = np.zeros((len(sentences), len(chars)), dtype="bool")
    for i, sentence in enumerate(sentences):
        for t, char in enumerate(sentence):
            x[i, t] = char_indices[char]
        y[i, char_indices[next_chars[i]]] = 1
    return sentences, x, y


def tutorial_model(vocab: int):
    import keras

    model = keras.Sequential([
        keras.Input((MAXLEN,), dtype="int32"),
        keras.layers.Embedding(vocab, EMBED),
        keras.layers.LSTM(UNITS),
        keras.layers.Dense(vocab, activation="softmax"),
    ])
    model.compile(loss="categorical_crossentropy",
                  optimizer=keras.optimizers.RMSprop(learning_rate=0.01))
    return model


def tutorial_generate(model, seed_text: str, chars: list[str], length: int) -> str:
    """The tutorial's loop: one ``model.predict`` over the last 40 characters per character."""
    import numpy as np

    index = {c: i for i, c in enumerate(chars)}
    rng = np.random.default_rng(0)
    sentence, generated = seed_text[-MAXLEN:], ""
    for _ in range(length):
        x_pred = np.array([[index[c] for c in sentence]], dtype="int32")
        preds = model.predict(x_pred, verbose=0)[0].astype("float64")
        preds = np.exp(np.log(preds + 1e-12) / 1.0)
        next_char = chars[rng.choice(len(chars), p=preds / preds.sum())]
        sentence, generated = sentence[1:] + next_char, generated + next_char
    return generated


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps and characters")
    args = parser.parse_args()
    repeats = 3 if args.quick else 5
    tutorial_chars = 20 if args.quick else 50

    header("bench_tutorial: lstmgen vs the keras.io tutorial approach")
    import keras
    import numpy as np

    from lstmgen.generation import Generator
    from lstmgen.model import LanguageModel, ModelConfig
    from lstmgen.tokenizers import CharTokenizer

    path = tiny_shakespeare()
    text = path.read_text(encoding="utf-8")
    corpus_bytes = path.stat().st_size
    tok = CharTokenizer.fit([text])
    chars, vocab = tok.chars, tok.vocab_size

    # -- preprocessing memory -------------------------------------------------------------
    tracemalloc.start()
    started = time.perf_counter()
    sentences, x, y = tutorial_preprocess(text, chars)
    prep_seconds = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    onehot_x = x.size * vocab  # the original tutorial also one-hot encodes the inputs (bool)
    print(f"tutorial preprocessing of {corpus_bytes:,} bytes: {len(sentences):,} windows, "
          f"{prep_seconds:.1f} s, peak {peak / 2**20:,.0f} MiB traced = "
          f"{peak / corpus_bytes:.0f} bytes per corpus byte "
          f"(with the original one-hot inputs: +{onehot_x / corpus_bytes:.0f} bytes/byte); "
          "lstmgen: 1 byte per character on disk, read by memmap", flush=True)
    del sentences

    # -- training throughput ------------------------------------------------------------------
    tut = tutorial_model(vocab)
    rng = np.random.default_rng(0)
    rows = rng.integers(0, len(x), 128)
    tut_batch = (x[rows], y[rows].astype("float32"))
    tut_step = median_time(lambda: tut.train_on_batch(*tut_batch), repeats, warmup=2)
    tut_rate = 128 / tut_step

    lm = LanguageModel(ModelConfig(embedding_dim=EMBED, units=UNITS), vocab)
    lm.training_model.compile(
        optimizer=keras.optimizers.Adam(3e-3, clipnorm=5.0),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    ids = tok.encode(text)
    starts = rng.integers(0, len(ids) - 130, 64)
    windows = np.stack([ids[s : s + 129] for s in starts])
    lm_step = median_time(lambda: lm.training_model.train_on_batch(windows[:, :-1],
                                                                   windows[:, 1:]),
                          repeats, warmup=2)
    lm_rate = 64 * 128 / lm_step
    print("\ntraining (targets = predicted characters)")
    print(f"  tutorial: batch 128 x 1 target,   {tut_step * 1e3:7.1f} ms/step, "
          f"{tut_rate:10,.0f} targets/s")
    print(f"  lstmgen:  batch 64 x 128 targets, {lm_step * 1e3:7.1f} ms/step, "
          f"{lm_rate:10,.0f} targets/s", flush=True)

    # -- generation ---------------------------------------------------------------------------
    seed_text = text[:MAXLEN]
    tutorial_generate(tut, seed_text, chars, 3)  # warm-up (compiles predict)
    started = time.perf_counter()
    tutorial_generate(tut, seed_text, chars, tutorial_chars)
    tut_gen = tutorial_chars / (time.perf_counter() - started)
    gen = Generator.from_model(lm, tok)
    gen.generate(seed_text, 64, seed=0)  # warm-up (compiles)
    length = 2048
    lm_gen = length / median_time(lambda: gen.generate(seed_text, length, seed=0), repeats)
    print("\ngeneration, one stream")
    print(f"  tutorial: {tut_gen:10,.1f} chars/s (model.predict per character)")
    print(f"  lstmgen:  {lm_gen:10,.1f} chars/s (carried state, compiled loop)")

    print("\nratios, lstmgen / tutorial:")
    print(f"  training targets/s   {lm_rate / tut_rate:8.1f}x")
    print(f"  generation chars/s   {lm_gen / tut_gen:8.1f}x")
    print(f"  preprocessing memory {peak / corpus_bytes:8.0f}x less (bytes per corpus byte: "
          f"{peak / corpus_bytes:.0f} vs 1)")
    print(f"\nend: {load()}")


if __name__ == "__main__":
    main()
