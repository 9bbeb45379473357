"""The TPU plan, proven without a TPU: compile the real programs for a cluster file's slice.

``libtpu`` (the ``tpu-compile`` extra) describes any TPU slice on any machine
(``jax.experimental.topologies``); the pretraining step is lowered with abstract inputs carrying
``NamedSharding``s over a mesh of that slice's compile-only devices and compiled ahead of time,
so XLA reports the per-chip memory, FLOPs and collectives of the program a real slice would run.
No weights are materialised and nothing executes.

- ``libtpu.py``: the one place that loads libtpu for compiling (its environment, the install hint)
  and turns a topology into compile-only devices;
- ``chips.py``: what each TPU generation's data sheet states (HBM, bf16 peak, interconnect);
- ``hlo.py``: the collectives of a compiled program, parsed from its HLO text;
- ``estimate.py``: step time and tokens/s from FLOPs and collective bytes (an estimate);
- ``train.py``: the pretraining step as the job builds it, compiled for a slice; the batch search;
- ``ray_side.py``: the Ray Train ``ScalingConfig`` a cluster file leads to vs the compiled mesh;
- ``shapes.py`` / ``inference.py``: the shapes Serve, the batch-embedding job and generation run
  (the project's batching policy) and those programs compiled for one chip of a TPU host;
- ``table.py``: the model x v4 slice plan table, one compile per cell in its own process.

``python -m jobs.check_cluster --compile`` runs it (docs/cluster.md).
"""
