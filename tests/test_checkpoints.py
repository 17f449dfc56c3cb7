"""The checkpointer never loads a checkpoint whose writing was interrupted."""

import logging

import pytest
import torch

from speechbrain_petl.training.checkpoints import FILES_RECORD, PENDING, CheckpointError, Checkpointer


class Exploding(torch.nn.Module):
    """A recoverable whose saving dies halfway, like a killed process."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(3))
        self.explode = False

    def state_dict(self, *args, **kwargs):
        if self.explode:
            raise KeyboardInterrupt("killed while saving")
        return super().state_dict(*args, **kwargs)


def test_interrupted_save_is_ignored_then_cleaned(tmp_path):
    layer, exploding = torch.nn.Linear(2, 2), Exploding()
    checkpointer = Checkpointer(tmp_path, {"layer": layer, "zz_exploding": exploding})
    good = checkpointer.save_checkpoint(meta={"step": 1})

    exploding.explode = True
    try:
        checkpointer.save_checkpoint(meta={"step": 2})
    except KeyboardInterrupt:
        pass
    unfinished = [p for p in tmp_path.iterdir() if (p / PENDING).exists()]
    assert len(unfinished) == 1 and (unfinished[0] / "layer.ckpt").exists()

    assert checkpointer.find_checkpoint().path == good.path  # never the broken one
    assert checkpointer.recover_if_possible().meta["step"] == 1

    exploding.explode = False
    checkpointer.save_checkpoint(meta={"step": 3})
    assert not unfinished[0].exists()


def _model_and_checkpointer(folder):
    backbone, classifier = torch.nn.Linear(3, 3), torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(list(backbone.parameters()) + list(classifier.parameters()))
    sum(m(torch.ones(1, 3)).sum() for m in (backbone,)).backward()
    optimizer.step()
    recoverables = {"backbone": backbone, "classifier": classifier, "optimizer": optimizer}
    return recoverables, Checkpointer(folder, recoverables)


DAMAGES = {
    "backbone.ckpt": lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),  # truncated
    "classifier.ckpt": lambda p: p.write_bytes(b"garbage, not a torch file at all"),
    "optimizer.ckpt": lambda p: p.write_bytes(b""),  # empty
}


@pytest.mark.parametrize("name", sorted(DAMAGES))
def test_damaged_file_falls_back_to_the_older_checkpoint_with_a_warning(tmp_path, caplog, name):
    recoverables, checkpointer = _model_and_checkpointer(tmp_path)
    old = checkpointer.save_checkpoint(meta={"step": 1})
    saved = {k: v.clone() for k, v in recoverables["backbone"].state_dict().items()}
    with torch.no_grad():
        recoverables["backbone"].weight.add_(1.0)
    new = checkpointer.save_checkpoint(meta={"step": 2})
    DAMAGES[name](new.path / name)
    with torch.no_grad():
        recoverables["backbone"].weight.zero_()
    with caplog.at_level(logging.WARNING):
        loaded = checkpointer.recover_if_possible()
    assert loaded.path == old.path and loaded.meta["step"] == 1
    assert str(new.path) in caplog.text and name in caplog.text and "falling back" in caplog.text
    torch.testing.assert_close(recoverables["backbone"].state_dict(), saved)


@pytest.mark.parametrize("name", sorted(DAMAGES))
def test_damaged_only_checkpoint_is_a_clear_error(tmp_path, name):
    _, checkpointer = _model_and_checkpointer(tmp_path)
    ckpt = checkpointer.save_checkpoint()
    DAMAGES[name](ckpt.path / name)
    with pytest.raises(CheckpointError) as err:
        checkpointer.recover_if_possible()
    message = str(err.value)
    assert str(ckpt.path) in message and name in message and "weights_only" not in message


@pytest.mark.parametrize("name", sorted(DAMAGES))
def test_unloadable_file_without_a_record_names_it_and_never_advises_weights_only(tmp_path, name):
    """A checkpoint from before the files record: the load error itself names
    the checkpoint and the file, offers the older intact checkpoint, and
    hides torch's advice to disable weights_only."""
    _, checkpointer = _model_and_checkpointer(tmp_path)
    old = checkpointer.save_checkpoint(meta={"step": 1})
    new = checkpointer.save_checkpoint(meta={"step": 2})
    (new.path / FILES_RECORD).unlink()
    DAMAGES[name](new.path / name)
    if name == "optimizer.ckpt":  # an empty file is told even without a record: fallback
        assert checkpointer.recover_if_possible().path == old.path
        return
    with pytest.raises(CheckpointError) as err:
        checkpointer.recover_if_possible()
    message = str(err.value)
    assert f"Cannot load {name} of checkpoint {new.path}" in message
    assert old.path.name in message and "weights_only" not in message
    assert err.value.__suppress_context__  # torch's own message (and advice) is not shown
