#!/usr/bin/env python3
"""Recipe: parameter-efficient transfer learning of a frozen AST on
UrbanSound8K (10 classes, 10 folds).

One yaml per PETL method (``hparams/<method>_us8k.yaml``); one run is one
fold (``--fold=1..10``) under the yaml's ``protocol``: ``paper`` (train on 9
folds, test on 1; there is no validation set, so the test fold doubles as
validation set and the accuracy is optimistic, as in the paper) or
``validation`` (train 8, validate on 1, test on 1).

To run this recipe:

    python train.py hparams/conformer_us8k.yaml --data_folder=/path/to/UrbanSound8K --fold=1

Authors
 * speechbrain-petl contributors 2026
"""

import sys

from urbansound8k_prepare import prepare_urbansound8k
from speechbrain.utils.distributed import run_on_main

from speechbrain_petl.recipe import preparation_kwargs, setup_experiment, train_and_test


def main(argv):
    """Prepares the fold, trains and tests, as the yaml in ``argv`` says."""
    hparams, run_opts = setup_experiment(argv, script=__file__)
    run_on_main(prepare_urbansound8k, kwargs=preparation_kwargs(hparams, "fold", "protocol"))
    return train_and_test(hparams, run_opts)


if __name__ == "__main__":
    main(sys.argv[1:])
