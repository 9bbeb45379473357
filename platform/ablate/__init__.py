"""The ablation sweep (issue 15): one variable at a time, equal parameter count, equal budget,
the best of each group carried into the next -- Ankh's design method as a Ray Tune job.

- ``spec``: the sweep spec (YAML preset in ``jobs/configs/ablate-*.yaml``), its validation and
  each trial's pretraining config;
- ``params``: the analytic parameter count and the free-dimension solver;
- ``sweep``: the Ray Tune driver (one experiment per group, restorable);
- ``results``: results.csv / results.md / results.json and the PNG plots.
"""
