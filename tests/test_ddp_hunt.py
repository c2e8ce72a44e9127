"""Bug hunt in DDP on CPU processes (gloo): combinations the main DDP tests do not cover.

Every test here starts 2 real processes (a few seconds each)."""
import copy

import pytest
import torch
import torch.distributed as dist

from ddp_models import Boom, Regression
from test_ddp import assert_same_weights, ddp_trainer, one_process_trainer, workers_alive

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason='needs torch.distributed with gloo')


def test_accumulation_window_cut_short_by_the_epoch_matches_one_process(tmp_path):
    # 128 samples, 2 ranks x 16 = 4 batches per epoch: windows of 3 then a cut window of 1
    torch.manual_seed(0)
    model = Regression(batch_size=16)
    reference = copy.deepcopy(model)
    reference.batch_size = 32
    one_process_trainer(tmp_path / 'one', accumulate_grad_batches=3).fit(reference)
    trainer = ddp_trainer(tmp_path / 'ddp', accumulate_grad_batches=3)
    trainer.fit(model)
    assert_same_weights(model, reference)
    assert trainer.global_step == reference.trainer.global_step


class FailsInValidation(Regression):
    """Rank 1 raises in its second validation batch."""

    def validation_step(self, batch, batch_nb):
        if self.trainer.global_rank == 1 and batch_nb == 1:
            raise Boom('rank 1 failed on purpose in validation')
        return super().validation_step(batch, batch_nb)


def test_an_exception_in_validation_on_one_rank_stops_every_rank_naming_it(tmp_path):
    model = FailsInValidation()
    with pytest.raises(Boom) as info:
        ddp_trainer(tmp_path, max_nb_epochs=3).fit(model)
    text = str(info.value) + ''.join(getattr(info.value, '__notes__', []))
    assert 'rank 1' in text.lower() and 'in validation' in text
    assert info.value.rank == 1
    assert workers_alive() == []
