"""Sweeps, Tune only: search (Optuna TPE) and scheduling (ASHA) in `tune.py`, why trials stop
(`stopping.py`), base configs (`presets.py`), end-of-sweep reports (`reports.py`) and the sweep
scripts' command line (`cli.py`). Each trial trains through `trm.launch` (one TorchTrainer) and is
tracked through `trm.tracking.runs` (a child run of the sweep's parent run)."""
