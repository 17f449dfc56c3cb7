#!/usr/bin/env python3
"""Recipe: parameter-efficient transfer learning of a frozen AST or Wav2Vec2
on Google Speech Commands v2 (35 words).

One yaml per PETL method (``hparams/<method>_gsc.yaml``, ``w2v2_*`` for
Wav2Vec2). Data are prepared from the official release (validation_list.txt
and testing_list.txt; train = the rest), then the model trains with
checkpointing (resumable, also mid-epoch with ``--ckpt_interval_minutes``)
and the best checkpoint by validation accuracy is tested.

To run this recipe:

    python train.py hparams/conformer_gsc.yaml --data_folder=/path/to/speech_commands_v0.02

Authors
 * speechbrain-petl contributors 2026
"""

import sys

from speech_commands_prepare import prepare_speech_commands
from speechbrain.utils.distributed import run_on_main

from speechbrain_petl.recipe import preparation_kwargs, setup_experiment, train_and_test


def main(argv):
    """Prepares the data, trains and tests, as the yaml in ``argv`` says."""
    hparams, run_opts = setup_experiment(argv, script=__file__)
    run_on_main(prepare_speech_commands, kwargs=preparation_kwargs(hparams))
    return train_and_test(hparams, run_opts)


if __name__ == "__main__":
    main(sys.argv[1:])
