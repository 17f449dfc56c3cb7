"""The checkpointer never loads a checkpoint whose writing was interrupted."""

import torch

from speechbrain_petl.checkpoints import PENDING, Checkpointer


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
