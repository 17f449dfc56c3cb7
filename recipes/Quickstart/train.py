#!/usr/bin/env python3
"""One stage of the quickstart: pre-training (``hparams/pretrain.yaml``) or a
frozen-AST PETL run (``hparams/target_*.yaml``) on a synthetic task written in
ESC-50's layout, prepared by the ESC-50 preparation script (linked here, as
SpeechBrain recipes share preparation scripts) and trained with the package's
recipe API like every recipe.

``quickstart.py`` runs all stages; one stage alone:

    python train.py hparams/target_conformer.yaml --data_folder=results/quickstart/1986/data/target \\
        --backbone_source=results/quickstart/1986/pretrained_ast

Authors
 * speechbrain-petl contributors 2026
"""

import sys

from esc50_prepare import prepare_esc50
from speechbrain.utils.distributed import run_on_main

from speechbrain_petl.recipe import preparation_kwargs, setup_experiment, train_and_test


def main(argv):
    """Prepares the synthetic task's folds, trains and tests one stage."""
    hparams, run_opts = setup_experiment(argv, script=__file__)
    run_on_main(prepare_esc50, kwargs=preparation_kwargs(hparams, "fold", "protocol"))
    return train_and_test(hparams, run_opts)


if __name__ == "__main__":
    main(sys.argv[1:])
