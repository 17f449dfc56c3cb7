#!/usr/bin/env python3
"""Recipe: parameter-efficient transfer learning of a frozen AST or Wav2Vec2
on Fluent Speech Commands (31 intents = action + object + location).

One yaml per PETL method (``hparams/<method>_fsc.yaml``, ``w2v2_*`` for
Wav2Vec2), with the official train/valid/test split.

To run this recipe:

    python train.py hparams/conformer_fsc.yaml --data_folder=/path/to/fluent_speech_commands_dataset

Authors
 * speechbrain-petl contributors 2026
"""

import sys

from fluent_speech_commands_prepare import prepare_fluent_speech_commands
from speechbrain.utils.distributed import run_on_main

from speechbrain_petl.recipe import preparation_kwargs, setup_experiment, train_and_test


def main(argv):
    """Prepares the data, trains and tests, as the yaml in ``argv`` says."""
    hparams, run_opts = setup_experiment(argv, script=__file__)
    run_on_main(prepare_fluent_speech_commands, kwargs=preparation_kwargs(hparams))
    return train_and_test(hparams, run_opts)


if __name__ == "__main__":
    main(sys.argv[1:])
