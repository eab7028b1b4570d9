"""The measuring tools behind the results tables in docs/: each study's catalogue of rows (data), how a row runs
(scripts/train.py and scripts/evaluate.py as resumable subprocesses) and how its table is written. The scripts
cifar_study.py, preset_table.py, digits_table.py, precision_table.py, benchmark*.py, bench_autoattack.py and
fading_gaussian.py are flags plus a call into these modules.

  jobs.py         subprocess runs of the repository's scripts, logs, small file writes, a flagfile's flags
  cost.py         FLOP counts and forward-pass equivalents per training image (the GPU projection)
  claims.py       standard errors and the claim verdicts of the real-CIFAR-10 study
  cifar.py        the real-CIFAR-10 study: its rows, the papers' numbers, running a row, loading its results
  cifar_report.py the study's Markdown (rows, claims, Co-SSAT) and figures
  presets.py      every 32x32x3 preset trained briefly on real images: rows, one row's run, the table
  digits.py       the digits tables of docs/results.md: rows, evaluation columns, the tables
  benchmark.py    steady-state seconds per training step of each method (scripts/benchmark.py)
  torch_reference.py  the same PGD step in plain PyTorch (imports torch; scripts/benchmark_torch.py)
  precision.py    XLA vs not and float16 per defense on a small digits net (scripts/precision_table.py)
  autoattack_timing.py  AutoAttack's cascade timed with and without compaction (scripts/bench_autoattack.py)
  fading.py       scripts/fading_gaussian.py's option checks and output files

Importing `tfadv.studies` imports nothing else; TensorFlow, matplotlib and torch are imported where needed.
"""
