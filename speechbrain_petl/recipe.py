"""What every classification recipe's ``train.py`` does after preparing its
data: build the datasets, train with checkpoints, test the best checkpoint.

A recipe's ``train.py`` is SpeechBrain's usual prologue (parse arguments,
load the yaml, create the experiment folder), its dataset's preparation under
``run_on_main``, and one call to :func:`train_and_test`.
"""

from speechbrain_petl.brain import ClassificationBrain
from speechbrain_petl.data.pipelines import classification_datasets


def train_and_test(hparams, run_opts):
    """Builds the datasets from the prepared manifests, trains (resuming from
    the latest checkpoint if any), then tests the best checkpoint by
    validation accuracy. Returns the Brain."""
    datasets = classification_datasets(hparams)
    brain = ClassificationBrain(
        modules=hparams["modules"],
        opt_class=hparams["opt_class"],
        hparams=hparams,
        run_opts=run_opts,
        checkpointer=hparams["checkpointer"],
    )
    brain.fit(
        hparams["epoch_counter"],
        datasets["train"],
        datasets["valid"],
        train_loader_kwargs=hparams["train_dataloader_options"],
        valid_loader_kwargs=hparams["test_dataloader_options"],
    )
    brain.evaluate(
        datasets["test"],
        max_key="acc",
        test_loader_kwargs=hparams["test_dataloader_options"],
    )
    return brain
