"""One process of a data-parallel test run (started by test_distributed.py).

Usage: python distributed_worker.py CORPUS OUT DUMP DEVICES [COORDINATOR NUM_PROCESSES ID]
Trains a tiny model (LSTMGEN_TEST_MODE: "plain", "carry" with the state carried, "words" a
word model with the adaptive softmax and tied embeddings, "time" a 25-s budget that sizes the
schedule instead of 12 steps), then writes this process's final
weights and the window starts it read.
"""

import os
import sys

import numpy as np


def main() -> None:
    corpus, out, dump, devices = sys.argv[1:5]
    coordinator, num_processes, process_id = (sys.argv[5:8] + [None] * 3)[:3]
    import lstmgen
    from lstmgen.dataset import WindowDataset
    from lstmgen.distributed import DistributedConfig

    seen = {}  # (epoch, batch) -> window starts; Keras reads batch 0 twice to learn shapes
    original = WindowDataset.__getitem__

    def recording(self, index):
        x, y = original(self, index)
        batch = self.first_batch + index
        seen[self.epoch, batch] = self.order.starts(self.epoch, batch)[self.rows].tolist()
        return x, y

    WindowDataset.__getitem__ = recording
    from lstmgen import training
    from lstmgen.distributed import local

    live = {}  # this process's own replica of the weights when training ends
    fit = training.Trainer.fit

    def recording_fit(self):
        result = fit(self)
        live["weights"] = [np.asarray(local(v.value)) for v in self.lm.training_model.weights]
        return result

    training.Trainer.fit = recording_fit
    distributed = DistributedConfig(
        devices=int(devices), coordinator=coordinator,
        num_processes=int(num_processes) if num_processes else None,
        process_id=int(process_id) if process_id else None)
    mode = os.environ.get("LSTMGEN_TEST_MODE", "plain")
    if mode == "words":
        settings = dict(tokenizer="word", tokenizer_options={"vocab_size": 3000},
                        model=lstmgen.ModelConfig(units=16, embedding_dim=16, softmax="adaptive",
                                                  cutoffs=[500, 1500], tie_embeddings=True))
    else:
        settings = dict(model=lstmgen.ModelConfig(units=16, embedding_dim=8),
                        carry_state=mode == "carry")
    limit = (dict(max_time=25.0, warmup_steps=5, eval_every=40, checkpoint_every=40)
             if mode == "time" else dict(max_steps=12, eval_every=6, checkpoint_every=4))
    model = lstmgen.train(corpus, out=out, batch_size=8, seq_len=16, sample_length=0, seed=3,
                          verbose=0, distributed=distributed, **limit, **settings)
    # The trained replica ("time"), or the weights of the best checkpoint as loaded back.
    weights = live["weights"] if mode == "time" else model.lm.training_model.get_weights()
    np.savez(dump, weights=np.concatenate([np.asarray(w).ravel() for w in weights]),
             seen=np.asarray([s for starts in seen.values() for s in starts]))


if __name__ == "__main__":
    main()
