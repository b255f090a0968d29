"""The paper's ablation tables as one sweep (trm.sweep.paper): every row of Table 1 (TRM; w/ ACT; separate
f_H, f_L; no EMA; 4 layers n=3; self-attention; T=2, n=2; 1-step gradient; HRM) and Table 2 (TRM y, z;
multi-scale z; single z), each with K training seeds, trained for the preset's whole budget (no ASHA),
read at its final evaluation: mean +- std per row beside the paper's number. The table is printed, is the
sweep parent's MLflow description, and is logged with a bar chart (paper_table.md, paper_table.png).

    python sweeps/paper_tables.py --table 2 --seeds 2        # smoke: CPU, minutes
    python sweeps/paper_tables.py --table all --seeds 3      # both tables (the TRM row once)
    python sweeps/paper_tables.py --table 1 --preset sudoku-extreme --gpus-per-worker 1 --address auto

--table 1|2|all (default all); --seeds K (default 3); every trial of rows x seeds runs (--num-samples).
The default preset is smoke (hidden 64, 400 steps on generated Sudoku with 45-55 givens): it does not
reproduce the paper's gaps, and the report names each pair of rows whose order differs from the paper's.
The paper's rows are Sudoku-Extreme at hidden 512 for 60000 epochs (`--preset sudoku-extreme`, GPUs).
"""

import sys

from trm.sweep.paper import main

if __name__ == "__main__":
    sys.exit(main(doc=__doc__))
