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

import os
import sys

from fluent_speech_commands_prepare import prepare_fluent_speech_commands
from speechbrain.utils.distributed import run_on_main

from speechbrain_petl.data.pipelines import classification_datasets
from speechbrain_petl.training.brain import ClassificationBrain
from speechbrain_petl.training.recipe import finish_run, setup_experiment, start_record


def main(argv):
    """Prepares the data, trains and tests, as the yaml in ``argv`` says."""
    hparams, run_opts = setup_experiment(argv, script=__file__)

    # Data: the manifests (train/valid/test csv), then datasets whose label
    # encoder is fitted on the training labels
    run_on_main(
        prepare_fluent_speech_commands,
        kwargs={
            "data_folder": hparams["data_folder"],
            "save_folder": hparams["save_folder"],
            "max_bad_fraction": hparams["max_bad_fraction"],
            "skip_prep": hparams["skip_prep"],
            "few_shot": hparams["few_shot"],
            "few_shot_sampling": hparams["few_shot_sampling"],
            "few_shot_seed": hparams["few_shot_seed"],
        },
    )
    datasets = classification_datasets(
        {"train": hparams["train_csv"], "valid": hparams["valid_csv"], "test": hparams["test_csv"]},
        label_encoder=hparams["label_encoder"],
        label_encoder_file=os.path.join(hparams["save_folder"], "label_encoder.txt"),
        n_classes=hparams["n_classes"],
        max_audio_samples=hparams.get("max_audio_samples"),
    )

    # Training: only the PETL modules and the head reach the optimizer
    brain = ClassificationBrain(
        modules=hparams["modules"],
        opt_class=hparams["opt_class"],
        hparams=hparams,
        run_opts=run_opts,
        checkpointer=hparams["checkpointer"],
        label_encoder=hparams["label_encoder"],
        train_logger=hparams["train_logger"],
        augmentation=hparams.get("augmentation"),
        lr_scheduler=hparams["lr_scheduler"],
        test_stats_file=hparams["test_stats_file"],
        test_predictions_file=hparams["test_predictions_file"],
    )
    start_record(hparams["output_folder"], hparams["modules"], hparams["dataset"], hparams["method"])
    brain.fit(
        hparams["epoch_counter"],
        datasets["train"],
        datasets["valid"],
        train_loader_kwargs=hparams["train_dataloader_options"],
        valid_loader_kwargs=hparams["test_dataloader_options"],
    )

    # Test the best checkpoint (validation accuracy), then keep it as a ~1 MB
    # inference folder: <output_folder>/inference
    brain.evaluate(datasets["test"], max_key="acc", test_loader_kwargs=hparams["test_dataloader_options"])
    finish_run(
        brain,
        hparams["output_folder"],
        hparams["label_encoder"],
        max_audio_samples=hparams.get("max_audio_samples"),
    )
    return brain


if __name__ == "__main__":
    main(sys.argv[1:])
