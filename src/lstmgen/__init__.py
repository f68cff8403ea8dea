"""lstmgen: train LSTM language models with Keras 3 on corpora of any size, streamed from
disk, and generate text from them.

Example:
    >>> import lstmgen
    >>> model = lstmgen.train("books/", out="runs/books", epochs=3)       # doctest: +SKIP
    >>> print(lstmgen.load("runs/books").generate("It was a dark", length=400)[0])  # doctest: +SKIP
"""

import os

# JAX is lstmgen's default Keras backend; an explicit KERAS_BACKEND still wins.
os.environ.setdefault("KERAS_BACKEND", "jax")

__version__ = "0.1.0"

from lstmgen.errors import LstmgenError  # noqa: E402
from lstmgen.model import ModelConfig  # noqa: E402
from lstmgen.run import Run, TrainedModel, load  # noqa: E402
from lstmgen.sampling import Sampling  # noqa: E402


def __getattr__(name):
    # Training pulls in Keras; import it only when asked for.
    if name in ("train", "TrainConfig"):
        from lstmgen import training

        return getattr(training, name)
    if name == "evaluate_corpus":
        from lstmgen.evaluation import evaluate_corpus

        return evaluate_corpus
    raise AttributeError(f"module 'lstmgen' has no attribute {name!r}")


__all__ = ["LstmgenError", "ModelConfig", "Run", "Sampling", "TrainConfig", "TrainedModel",
           "load", "train", "__version__"]
