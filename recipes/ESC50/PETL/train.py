#!/usr/bin/env python3
"""Recipe: parameter-efficient transfer learning of a frozen AST on ESC-50
(50 environmental sound classes, 5 folds).

One yaml per PETL method (``hparams/<method>_esc50.yaml``); one run is one
fold, chosen with ``--fold`` (1..5) under the ``protocol`` of the yaml:
``rotation`` (the paper's: train 3 folds, validate on 1, test on 1) or
``official`` (train 4 folds, test 1; no validation fold exists, so the test
fold is also the validation set and the reported accuracy is optimistic).

To run this recipe:

    python train.py hparams/conformer_esc50.yaml --data_folder=/path/to/ESC-50-master --fold=1

Authors
 * speechbrain-petl contributors 2026
"""

import sys

from esc50_prepare import prepare_esc50
from speechbrain.utils.distributed import run_on_main

from speechbrain_petl.recipe import preparation_kwargs, setup_experiment, train_and_test


def main(argv):
    """Prepares the fold, trains and tests, as the yaml in ``argv`` says."""
    hparams, run_opts = setup_experiment(argv, script=__file__)
    run_on_main(prepare_esc50, kwargs=preparation_kwargs(hparams, "fold", "protocol"))
    return train_and_test(hparams, run_opts)


if __name__ == "__main__":
    main(sys.argv[1:])
