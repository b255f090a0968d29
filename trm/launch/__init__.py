"""Everything that talks to Ray; the library below it (`trm.train`, `trm.evaluate`, ...) imports no Ray.

  cluster.py   connecting to Ray (local or --address), what a run needs of it (`WorkerSpec`),
               and `preflight`: every check before anything starts, cheapest first
  worker.py    the per-worker entry (`train_loop_per_worker`, handed a `WorkerRun`), the
               TorchTrainer of a run (`make_trainer`), and the loop's session on a worker (`RaySession`)
  single.py    one DDP run outside Tune (`trm train --workers N`)
  long_run.py  multi-day runs that survive preemption and driver loss, and their command line
  vote.py      the ARC augmentation vote over Ray workers

Sweeps (`trm.sweep`) build on `cluster` and `worker`: one TorchTrainer per Tune trial.
"""
