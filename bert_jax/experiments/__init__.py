"""The paper's ablation grids in one command: `bert-jax experiment GRID --scale mini|paper|smoke --workdir DIR`.

grids.py (variants and scales) -> data.py (mini-scale data) -> runner.py (pretrain, fine-tune, collect) ->
tables.py (json/csv/md beside the paper's numbers in paper.py) and plots.py (PNG); main.py is the CLI.
"""
