#!/usr/bin/env python3
"""Recipe: parameter-efficient transfer learning of a frozen Wav2Vec2 or AST
on IEMOCAP (4 emotions: neutral, happy + excited, sad, angry).

One yaml per method (``hparams/w2v2_<method>_iemocap.yaml``,
``<method>_iemocap.yaml`` for AST). One run is one of the paper's 10 folds
(``--fold=1..10``): 4 sessions train, the held-out session is split by
speaker gender into validation and test sets.

To run this recipe:

    python train.py hparams/w2v2_conformer_iemocap.yaml --data_folder=/path/to/IEMOCAP_full_release --fold=1

Authors
 * speechbrain-petl contributors 2026
"""

import sys

from iemocap_prepare import prepare_iemocap
from speechbrain.utils.distributed import run_on_main

from speechbrain_petl.recipe import preparation_kwargs, setup_experiment, train_and_test


def main(argv):
    """Prepares the fold, trains and tests, as the yaml in ``argv`` says."""
    hparams, run_opts = setup_experiment(argv, script=__file__)
    run_on_main(prepare_iemocap, kwargs=preparation_kwargs(hparams, "fold"))
    return train_and_test(hparams, run_opts)


if __name__ == "__main__":
    main(sys.argv[1:])
